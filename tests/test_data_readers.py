"""The reading data layers on small generated sources: Data (LMDB: raw,
float and encoded Datum records), ImageData, HDF5Data and MemoryData;
seeding, seeking, and every error a bad source gives."""
from __future__ import annotations

import numpy as np
import pytest
from data_helpers import (encoded_lmdb, forward_batches, image_folder, layer_text, random_items,
                          raw_lmdb, save_image, write_lmdb)
from layer_harness import infer_shapes, make_layer, wired

import netdef
from netdef.data.records import datum_from_array
from netdef.errors import DataError, GraphError, InputError
from netdef.layers.base import UnknownShape


@pytest.fixture(autouse=True)
def _no_prefetch(monkeypatch):
    # Synchronous reading here (test_data_prefetch covers the thread); errors
    # then come straight from forward.
    monkeypatch.setenv("NETDEF_NO_PREFETCH", "1")


def data_layer(params, phase="TEST", tops=("data", "label"), type_="Data", name="data"):
    lay = make_layer(layer_text(type_, params, tops, name), phase)
    return lay


# ---- Data (LMDB) ------------------------------------------------------------------
def test_lmdb_raw_records_in_key_order_and_cycling(tmp_path):
    items = random_items(5, (2, 4, 3))
    # written out of order: LMDB keeps keys sorted, the layer reads in key order
    write_lmdb(tmp_path / "db", [(f"{i:03d}", datum_from_array(items[i], 10 + i)
                                  .SerializeToString()) for i in (3, 0, 4, 1, 2)])
    lay = data_layer(f"data_param {{ source: '{tmp_path / 'db'}' batch_size: 2 backend: LMDB }}")
    assert infer_shapes(lay, []) == [(2, 2, 4, 3), (2,)]
    assert lay.note is None
    batches = forward_batches(lay, 4)            # 8 records from 5: wraps around
    order = [0, 1, 2, 3, 4, 0, 1, 2]
    for b, (data, label) in enumerate(batches):
        idx = order[2 * b: 2 * b + 2]
        np.testing.assert_array_equal(data, np.stack([items[i] for i in idx]))
        np.testing.assert_array_equal(label, [10 + i for i in idx])
    assert lay.position == 4


def test_lmdb_float_data_with_transform(tmp_path):
    items = random_items(3, (1, 6, 6), dtype=np.float32)
    raw_lmdb(tmp_path / "db", items)
    lay = data_layer(f"data_param {{ source: '{tmp_path / 'db'}' batch_size: 3 }} "
                     "transform_param { crop_size: 4 scale: 2 mean_value: 0.5 }")
    assert infer_shapes(lay, []) == [(3, 1, 4, 4), (3,)]
    assert "backend is LEVELDB" in lay.note      # the default backend, read as LMDB
    (data, _), = forward_batches(lay, 1)
    np.testing.assert_allclose(data, [(x[:, 1:5, 1:5] - 0.5) * 2 for x in items], rtol=1e-6)


@pytest.mark.parametrize("fmt", ["png", "jpg"])
@pytest.mark.parametrize("force,channels", [("", 3), ("force_gray: true", 1),
                                            ("force_color: true", 3)])
def test_lmdb_encoded_records(tmp_path, fmt, force, channels):
    from netdef.data.records import decode_image, encode_image

    items = random_items(2, (3, 8, 6))
    encoded_lmdb(tmp_path / "db", items, fmt)
    lay = data_layer(f"data_param {{ source: '{tmp_path / 'db'}' batch_size: 2 backend: LMDB }}"
                     f" transform_param {{ {force} }}")
    assert infer_shapes(lay, []) == [(2, channels, 8, 6), (2,)]
    (data, label), = forward_batches(lay, 1)
    color = {"": None, "force_gray: true": False, "force_color: true": True}[force]
    expected = [decode_image(encode_image(x, fmt), color) for x in items]
    np.testing.assert_array_equal(data, np.stack(expected))
    if fmt == "png" and channels == 3:
        np.testing.assert_array_equal(data, np.stack(items))     # lossless, BGR kept
    np.testing.assert_array_equal(label, [0, 1])


def test_lmdb_gray_encoded_stays_gray_unless_forced(tmp_path):
    items = random_items(2, (1, 5, 5))
    encoded_lmdb(tmp_path / "db", items, "png")
    lay = data_layer(f"data_param {{ source: '{tmp_path / 'db'}' batch_size: 2 backend: LMDB }}")
    assert infer_shapes(lay, [])[0] == (2, 1, 5, 5)
    color = data_layer(f"data_param {{ source: '{tmp_path / 'db'}' batch_size: 2 backend: LMDB "
                       "} transform_param { force_color: true }")
    assert infer_shapes(color, [])[0] == (2, 3, 5, 5)
    (data, _), = forward_batches(color, 1)
    np.testing.assert_array_equal(data, np.stack([np.repeat(x, 3, axis=0) for x in items]))


def test_lmdb_through_a_net_with_mean_file_beside_the_prototxt(tmp_path, monkeypatch):
    from netdef.io.binaryproto import write_binaryproto

    items = random_items(4, (3, 6, 6))
    (tmp_path / "model").mkdir()
    raw_lmdb(tmp_path / "model" / "train_lmdb", items)
    mean = np.full((3, 6, 6), 100.0, np.float32)
    write_binaryproto(tmp_path / "model" / "mean.binaryproto", mean)
    (tmp_path / "model" / "net.prototxt").write_text(
        'layer { name: "d" type: "Data" top: "data" top: "label" '
        'data_param { source: "train_lmdb" batch_size: 2 backend: LMDB } '
        'transform_param { crop_size: 4 mean_file: "mean.binaryproto" } }\n'
        'layer { name: "f" type: "Flatten" bottom: "data" top: "flat" }\n')
    monkeypatch.chdir(tmp_path)                     # paths resolve beside the prototxt
    net = netdef.Net(str(tmp_path / "model" / "net.prototxt"))
    assert net.blobs["data"].shape == (2, 3, 4, 4)
    out = net.forward()
    np.testing.assert_array_equal(out["flat"].reshape(2, 3, 4, 4),
                                  [x[:, 1:5, 1:5] - 100.0 for x in items[:2]])
    np.testing.assert_array_equal(net.forward()["label"], [2, 3])


def test_lmdb_reseed_and_seek_are_deterministic(tmp_path):
    raw_lmdb(tmp_path / "db", random_items(7, (1, 8, 8)))
    params = (f"data_param {{ source: '{tmp_path / 'db'}' batch_size: 3 backend: LMDB }} "
              "transform_param { crop_size: 5 mirror: true }")

    def stream(seed=None, seek=None, n=6):
        lay = data_layer(params, "TRAIN")
        infer_shapes(lay, [])
        if seed is not None:
            lay.reseed(seed)
        if seek is not None:
            lay.seek(seek)
        return [b[0] for b in forward_batches(lay, n)]

    a, b, c = stream(), stream(seed=0), stream(seed=1)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))
    for x, y in zip(a[4:], stream(seek=4, n=2)):      # resuming at batch 4 continues exactly
        np.testing.assert_array_equal(x, y)
    lay = data_layer(params, "TRAIN")
    infer_shapes(lay, [])
    first = forward_batches(lay, 2)
    lay.reseed(0)                                     # reseed restarts the stream
    np.testing.assert_array_equal(forward_batches(lay, 1)[0][0], first[0][0])


def test_missing_lmdb_keeps_shape_tools_working_and_forward_says_why(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lay = data_layer("data_param { source: 'examples/mnist/mnist_train_lmdb' batch_size: 4 "
                     "backend: LMDB }", name="mnist")
    assert infer_shapes(lay, []) == [(4, 1, 28, 28), (4,)]
    assert "LMDB not found" in lay.note
    bottoms, tops = wired(lay)
    with pytest.raises(DataError) as err:
        lay.forward(bottoms, tops)
    text = str(err.value)
    assert text.startswith("layer 'mnist' (Data): LMDB 'examples/mnist/mnist_train_lmdb': "
                           f"does not exist (looked in {tmp_path})")
    assert "expected an LMDB directory of Datum records" in text
    assert "netdef convert-imageset" in text
    unknown = data_layer("data_param { source: 'my_db' batch_size: 4 backend: LMDB }")
    with pytest.raises(UnknownShape, match=r"cannot read LMDB 'my_db' to learn the data shape "
                                           r"\(LMDB not found\)"):
        infer_shapes(unknown, [])


def test_summary_and_check_of_a_net_whose_lmdb_is_missing(tmp_path):
    from netdef.check import check
    from netdef.summary import summarize

    text = ('name: "n" layer { name: "d" type: "Data" top: "data" top: "label" '
            'data_param { source: "/nowhere/cifar_lmdb" batch_size: 2 backend: LMDB } }')
    path = tmp_path / "n.prototxt"
    path.write_text(text)
    summarize(str(path))                             # does not raise
    assert not [f for f in check(str(path)) if f.severity == "error"]


def test_empty_lmdb_is_an_error_at_setup(tmp_path):
    write_lmdb(tmp_path / "db", [])
    lay = data_layer(f"data_param {{ source: '{tmp_path / 'db'}' batch_size: 2 backend: LMDB }}",
                     name="train")
    with pytest.raises(DataError, match=r"layer 'train' \(Data\): LMDB '.*db': is empty \(0 "
                                        r"records\); expected an LMDB directory of Datum records"):
        infer_shapes(lay, [])


def test_folder_without_data_mdb_and_leveldb(tmp_path):
    (tmp_path / "plain").mkdir()
    lay = data_layer(f"data_param {{ source: '{tmp_path / 'plain'}' batch_size: 2 }}")
    with pytest.raises(DataError, match="the folder has no data.mdb"):
        infer_shapes(lay, [])
    (tmp_path / "level").mkdir()
    (tmp_path / "level" / "CURRENT").write_text("MANIFEST-000001\n")
    lay = data_layer(f"data_param {{ source: '{tmp_path / 'level'}' batch_size: 2 }} "
                     "transform_param { crop_size: 8 }")
    assert infer_shapes(lay, [])[0] == (2, 3, 8, 8)     # shape tools still work
    assert "a LevelDB, which netdef cannot read" in lay.note
    bottoms, tops = wired(lay)
    with pytest.raises(DataError, match="is a LevelDB, which netdef cannot read"):
        lay.forward(bottoms, tops)


def test_record_of_another_shape_names_key_and_both_shapes(tmp_path):
    a, b = random_items(2, (1, 4, 4))
    odd = np.zeros((3, 4, 4), np.uint8)
    write_lmdb(tmp_path / "db", [(k, datum_from_array(x).SerializeToString())
                                 for k, x in (("a", a), ("b", b), ("c_odd", odd))])
    lay = data_layer(f"data_param {{ source: '{tmp_path / 'db'}' batch_size: 3 backend: LMDB }}",
                     name="d1")
    infer_shapes(lay, [])
    bottoms, tops = wired(lay)
    with pytest.raises(DataError) as err:
        lay.forward(bottoms, tops)
    assert str(err.value) == (f"layer 'd1' (Data): LMDB '{tmp_path / 'db'}': record 'c_odd' has "
                              "shape (3, 4, 4); the first record has (1, 4, 4)")
    assert err.value.key == "c_odd"


def test_corrupt_records_name_their_key(tmp_path):
    good = datum_from_array(np.zeros((1, 2, 2), np.uint8)).SerializeToString()
    bad_size = datum_from_array(np.zeros((1, 2, 2), np.uint8))
    bad_size.data = b"\x00"
    write_lmdb(tmp_path / "db", [("k0", good), ("k1", b"\xff\xff\xff garbage"),
                                 ("k2", bad_size.SerializeToString())])
    lay = data_layer(f"data_param {{ source: '{tmp_path / 'db'}' batch_size: 1 backend: LMDB }}")
    infer_shapes(lay, [])
    bottoms, tops = wired(lay)
    lay.forward(bottoms, tops)
    with pytest.raises(DataError, match=r"record 'k1' is corrupt: not a Datum message") as err:
        lay.forward(bottoms, tops)
    assert err.value.key == "k1"
    lay.seek(2)
    with pytest.raises(DataError, match=r"record 'k2' is corrupt: the Datum holds 1 bytes for "
                                        r"shape \(1, 2, 2\), which needs 4"):
        lay.forward(bottoms, tops)
    first_bad = tmp_path / "db2"
    write_lmdb(first_bad, [("only", b"\x08")])
    with pytest.raises(DataError, match="record 'only' is corrupt"):
        infer_shapes(data_layer(f"data_param {{ source: '{first_bad}' batch_size: 1 }}"), [])


def test_records_not_matching_the_net_input_shape(tmp_path):
    raw_lmdb(tmp_path / "db", random_items(2, (1, 4, 4)))
    path = tmp_path / "n.prototxt"
    path.write_text(f'layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ '
                    f'source: "{tmp_path / "db"}" batch_size: 2 backend: LMDB }} }}')
    net = netdef.Net(str(path), input_shapes={"data": (2, 1, 5, 5)})
    with pytest.raises(DataError, match=r"layer 'd' \(Data\): the batches of LMDB '.*' have "
                                        r"shape \(2, 1, 4, 4\) but top 'data' is \(2, 1, 5, 5\) "
                                        r"\(the records do not match the net's input shape\)"):
        net.forward()


def test_fed_data_layer_is_left_alone(tmp_path):
    raw_lmdb(tmp_path / "db", random_items(2, (1, 2, 2)))
    lay = data_layer(f"data_param {{ source: '{tmp_path / 'db'}' batch_size: 2 }}")
    infer_shapes(lay, [])
    bottoms, tops = wired(lay)
    tops[0].data[...] = 7
    lay.fed = True
    lay.forward(bottoms, tops)
    assert (tops[0].data == 7).all()


# ---- ImageData ----------------------------------------------------------------------
def test_image_data_list_root_folder_resize_and_gray(tmp_path, monkeypatch):
    images = image_folder(tmp_path / "imgs", per_class=2, size=(6, 5))
    names = sorted(images)
    (tmp_path / "list.txt").write_text("".join(f"{n} {images[n][1]}\n" for n in names))
    monkeypatch.chdir(tmp_path)
    lay = data_layer("image_data_param { source: 'list.txt' root_folder: 'imgs/' batch_size: 3 }",
                     type_="ImageData")
    assert infer_shapes(lay, []) == [(3, 3, 6, 5), (3,)]
    (d0, l0), (d1, l1) = forward_batches(lay, 2)
    order = [0, 1, 2, 3, 0, 1]
    np.testing.assert_array_equal(np.concatenate([d0, d1]),
                                  np.stack([images[names[i]][0] for i in order]))
    np.testing.assert_array_equal(np.concatenate([l0, l1]), [images[names[i]][1] for i in order])
    from netdef.data.records import read_image

    small = data_layer("image_data_param { source: 'list.txt' root_folder: 'imgs' batch_size: 2 "
                       "new_height: 3 new_width: 4 is_color: false }", type_="ImageData")
    assert infer_shapes(small, []) == [(2, 1, 3, 4), (2,)]
    (data, _), = forward_batches(small, 1)
    np.testing.assert_array_equal(data[1], read_image(tmp_path / "imgs" / names[1], False, (3, 4)))


def test_image_data_shuffle_is_seeded_and_new_every_epoch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "i").mkdir()
    for i in range(8):
        save_image(tmp_path / "i" / f"{i}.png", np.full((1, 2, 2), i, np.uint8))
    (tmp_path / "list.txt").write_text("".join(f"i/{i}.png {i}\n" for i in range(8)))
    params = "image_data_param { source: 'list.txt' batch_size: 4 shuffle: true is_color: false }"

    def labels(seed):
        lay = data_layer(params, "TRAIN", type_="ImageData")
        infer_shapes(lay, [])
        lay.reseed(seed)
        return [tuple(b[1].astype(int)) for b in forward_batches(lay, 6)]

    a = labels(3)
    assert a == labels(3) and a != labels(4)
    epochs = [a[0] + a[1], a[2] + a[3], a[4] + a[5]]
    assert all(sorted(e) == list(range(8)) for e in epochs)
    assert len(set(epochs)) > 1 and epochs[0] != tuple(range(8))


def test_image_data_crop_of_different_sized_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_image(tmp_path / "a.png", np.zeros((3, 6, 6), np.uint8))
    save_image(tmp_path / "b.png", np.ones((3, 9, 7), np.uint8))
    save_image(tmp_path / "c.png", np.ones((3, 3, 3), np.uint8))
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 1\nc.png 2\n")
    lay = data_layer("image_data_param { source: 'list.txt' batch_size: 2 } "
                     "transform_param { crop_size: 4 }", type_="ImageData", name="img")
    assert infer_shapes(lay, [])[0] == (2, 3, 4, 4)
    (data, _), = forward_batches(lay, 1)
    assert (data[0] == 0).all() and (data[1] == 1).all()
    bottoms, tops = wired(lay)
    with pytest.raises(DataError, match=r"record 'c.png' has shape \(3, 3, 3\), smaller than "
                                        r"crop_size 4"):
        lay.forward(bottoms, tops)
    gray = tmp_path / "g.png"
    save_image(gray, np.zeros((1, 6, 6), np.uint8))
    (tmp_path / "list2.txt").write_text("a.png 0\ng.png 1\n")
    lay = data_layer("image_data_param { source: 'list2.txt' batch_size: 2 } "
                     "transform_param { crop_size: 4 }", type_="ImageData", name="img")
    infer_shapes(lay, [])
    forward_batches(lay, 1)                  # is_color reads the gray file as 3 channels


def test_image_data_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_image(tmp_path / "a.png", np.zeros((3, 4, 4), np.uint8))
    (tmp_path / "list.txt").write_text("a.png 0\nmissing.png 1\n")
    lay = data_layer("image_data_param { source: 'list.txt' batch_size: 2 }", type_="ImageData",
                     name="img")
    infer_shapes(lay, [])
    bottoms, tops = wired(lay)
    with pytest.raises(DataError, match=r"layer 'img' \(ImageData\): image list 'list.txt': line "
                                        r"2: image 'missing.png': image file not found") as err:
        lay.forward(bottoms, tops)
    assert err.value.key == "missing.png"
    (tmp_path / "bad.txt").write_text("a.png 0\nno_label_here\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected 'path label'"):
        infer_shapes(data_layer("image_data_param { source: 'bad.txt' batch_size: 1 }",
                                type_="ImageData"), [])
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="is empty; expected 'path label' lines"):
        infer_shapes(data_layer("image_data_param { source: 'empty.txt' batch_size: 1 }",
                                type_="ImageData"), [])
    gone = data_layer("image_data_param { source: 'gone.txt' batch_size: 1 new_height: 2 "
                      "new_width: 2 }", type_="ImageData")
    assert infer_shapes(gone, [])[0] == (1, 3, 2, 2)
    with pytest.raises(DataError, match="image list 'gone.txt': does not exist"):
        forward_batches(gone, 1)


# ---- HDF5Data -------------------------------------------------------------------------
def write_h5(path, **datasets):
    import h5py

    with h5py.File(path, "w") as f:
        for name, arr in datasets.items():
            f.create_dataset(name, data=arr)


def test_hdf5_data_files_in_order_any_top_names(tmp_path):
    x1 = np.arange(3 * 2 * 2, dtype=np.float64).reshape(3, 2, 2)
    x2 = -np.arange(2 * 2 * 2, dtype=np.float32).reshape(2, 2, 2)
    write_h5(tmp_path / "a.h5", feat=x1, target=np.arange(3.0)[:, None])
    write_h5(tmp_path / "b.h5", feat=x2, target=np.arange(10.0, 12.0)[:, None])
    (tmp_path / "list.txt").write_text("a.h5\nb.h5\n")        # relative to the list file
    lay = data_layer(f"hdf5_data_param {{ source: '{tmp_path / 'list.txt'}' batch_size: 4 }}",
                     type_="HDF5Data", tops=("feat", "target"))
    assert infer_shapes(lay, []) == [(4, 2, 2), (4, 1)]
    (f0, t0), (f1, t1) = forward_batches(lay, 2)
    rows = np.concatenate([x1, x2, x1])
    np.testing.assert_array_equal(np.concatenate([f0, f1]), rows[:8])
    np.testing.assert_array_equal(np.concatenate([t0, t1]).ravel(), [0, 1, 2, 10, 11, 0, 1, 2])
    assert f0.dtype == np.float32


def test_hdf5_data_shuffle_seeded(tmp_path):
    write_h5(tmp_path / "a.h5", data=np.arange(5.0)[:, None], label=np.arange(5.0))
    write_h5(tmp_path / "b.h5", data=np.arange(5.0, 9.0)[:, None], label=np.arange(5.0, 9.0))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.h5'}\n{tmp_path / 'b.h5'}\n")
    params = f"hdf5_data_param {{ source: '{tmp_path / 'list.txt'}' batch_size: 3 shuffle: true }}"

    def rows(seed, seek=0, n=6):
        lay = data_layer(params, "TRAIN", type_="HDF5Data")
        infer_shapes(lay, [])
        lay.reseed(seed)
        lay.seek(seek)
        return [int(v) for b in forward_batches(lay, n) for v in b[1]]

    a = rows(1)
    assert a == rows(1) and a != rows(2)
    assert sorted(a[:9]) == list(range(9)) and sorted(a[9:18]) == list(range(9))
    assert a[:9] != list(range(9))
    assert rows(1, seek=4, n=2) == a[12:18]


def test_hdf5_data_errors(tmp_path):
    write_h5(tmp_path / "a.h5", data=np.zeros((2, 3)), lable=np.zeros(2))
    (tmp_path / "list.txt").write_text("a.h5\n")
    lay = data_layer(f"hdf5_data_param {{ source: '{tmp_path / 'list.txt'}' batch_size: 2 }}",
                     type_="HDF5Data", name="h5")
    with pytest.raises(DataError, match=r"layer 'h5' \(HDF5Data\): HDF5 list '.*': file '.*a.h5' "
                                        r"has no dataset 'label' .*did you mean 'lable'"):
        infer_shapes(lay, [])
    write_h5(tmp_path / "b.h5", data=np.zeros((2, 3)), label=np.zeros(3))
    (tmp_path / "list2.txt").write_text("b.h5\n")
    with pytest.raises(DataError, match=r"different row counts: 'data' \(2, 3\), 'label' \(3\)"):
        infer_shapes(data_layer(f"hdf5_data_param {{ source: '{tmp_path / 'list2.txt'}' "
                                "batch_size: 2 }", type_="HDF5Data"), [])
    write_h5(tmp_path / "c.h5", data=np.zeros((2, 3)), label=np.zeros(2))
    write_h5(tmp_path / "d.h5", data=np.zeros((2, 4)), label=np.zeros(2))
    (tmp_path / "list3.txt").write_text("c.h5\nd.h5\n")
    with pytest.raises(DataError, match=r"dataset 'data' of '.*d.h5' has rows of shape \(4\); "
                                        r"the first file's have \(3\)"):
        infer_shapes(data_layer(f"hdf5_data_param {{ source: '{tmp_path / 'list3.txt'}' "
                                "batch_size: 2 }", type_="HDF5Data"), [])
    with pytest.raises(GraphError, match="HDF5Data does not transform data"):
        infer_shapes(data_layer("hdf5_data_param { source: 'x' batch_size: 2 } "
                                "transform_param { scale: 2 }", type_="HDF5Data"), [])
    (tmp_path / "list4.txt").write_text("nowhere.h5\n")
    with pytest.raises(UnknownShape, match=r"\('nowhere.h5' not found\)"):
        infer_shapes(data_layer(f"hdf5_data_param {{ source: '{tmp_path / 'list4.txt'}' "
                                "batch_size: 2 }", type_="HDF5Data"), [])


# ---- MemoryData ------------------------------------------------------------------------
def test_memory_data_set_input_arrays_cycles():
    lay = data_layer("memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }",
                     type_="MemoryData", name="mem")
    infer_shapes(lay, [])
    bottoms, tops = wired(lay)
    with pytest.raises(DataError, match=r"layer 'mem' \(MemoryData\): no data: call "
                                        r"set_input_arrays\(data, labels\) first"):
        lay.forward(bottoms, tops)
    data = np.arange(4 * 6, dtype=np.float64).reshape(4, 1, 2, 3)
    lay.set_input_arrays(data, np.arange(4))
    got = forward_batches(lay, 3)
    np.testing.assert_array_equal(got[0][0], data[:2])
    np.testing.assert_array_equal(got[1][0], data[2:])
    np.testing.assert_array_equal(got[2][0], data[:2])
    np.testing.assert_array_equal(got[1][1].ravel(), [2, 3])
    assert got[1][1].shape == (2,)            # Caffe: one label per item


@pytest.mark.parametrize("data,labels,message", [
    (np.zeros((4, 2, 2, 3)), np.zeros(4), r"data array has shape \(4, 2, 2, 3\); expected "
                                          r"\(M, 1, 2, 3\)"),
    (np.zeros((3, 1, 2, 3)), np.zeros(3), "3 items, which is not a positive multiple of "
                                          "batch_size 2"),
    (np.zeros((4, 1, 2, 3)), np.zeros(5), r"labels array has shape \(5\); expected \(4,\)"),
])
def test_memory_data_errors(data, labels, message):
    lay = data_layer("memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 }",
                     type_="MemoryData")
    infer_shapes(lay, [])
    with pytest.raises(InputError, match=message):
        lay.set_input_arrays(data, labels)


def test_two_layers_read_one_lmdb_at_once(tmp_path, monkeypatch):
    # LMDB refuses a second open of one database in a process; the readers share it.
    monkeypatch.delenv("NETDEF_NO_PREFETCH")
    items = random_items(4, (1, 3, 3))
    raw_lmdb(tmp_path / "db", items)
    params = f"data_param {{ source: '{tmp_path / 'db'}' batch_size: 2 backend: LMDB }}"
    train, test = data_layer(params, "TRAIN", name="a"), data_layer(params, "TEST", name="b")
    infer_shapes(train, [])
    infer_shapes(test, [])
    for _ in range(3):
        (a, _), = forward_batches(train, 1)
        (b, _), = forward_batches(test, 1)
        np.testing.assert_array_equal(a, b)
    train.close()
    (b, _), = forward_batches(test, 1)            # the other reader is unaffected
    np.testing.assert_array_equal(b, np.stack(items[2:]))
    test.close()
    from netdef.data.readers import _ENVS

    assert str((tmp_path / "db").resolve()) not in _ENVS      # closed with its last user


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_decoding_matches_opencv_imread(tmp_path, fmt):
    # Caffe reads images with OpenCV: BGR uint8, or gray with IMREAD_GRAYSCALE.
    cv2 = pytest.importorskip("cv2")
    from netdef.data.records import read_image

    rng = np.random.default_rng(3)
    smooth = np.cumsum(rng.integers(0, 9, (3, 16, 12)), axis=2).astype(np.uint8)
    path = str(tmp_path / f"im.{fmt}")
    save_image(path, smooth)
    tol = 0 if fmt == "png" else 2                 # JPEG decoders may round differently
    color = cv2.imread(path, cv2.IMREAD_COLOR).transpose(2, 0, 1)
    gray = cv2.imread(path, cv2.IMREAD_GRAYSCALE)[None]
    assert np.abs(read_image(path, True).astype(int) - color).max() <= tol
    assert np.abs(read_image(path, False).astype(int) - gray).max() <= max(tol, 1)
