"""Data layers (shape inference without the data, guesses, UnknownShape,
DummyData's fillers). The Python layer is tested in test_layers_python.py."""
from __future__ import annotations

import numpy as np
import pytest
from layer_harness import infer_shapes, make_layer, run_layer, wired

from netdef.blob import Blob
from netdef.errors import DataError, GraphError
from netdef.layers.base import UnknownShape


def source(type_, params="", tops=("data", "label"), name="data", phase="TEST"):
    text = " ".join(f'top: "{t}"' for t in tops)
    return make_layer(f'layer {{ name: "{name}" type: "{type_}" {text} {params} }}', phase)


# ---- Input -------------------------------------------------------------------
def test_input_shapes():
    one = source("Input", "input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } }", tops=("a", "b"))
    assert infer_shapes(one, []) == [(1, 3, 8, 8)] * 2
    assert one.kind == "data"
    each = source("Input", "input_param { shape { dim: 2 } shape { dim: 2 dim: 5 } }",
                  tops=("a", "b"))
    assert infer_shapes(each, []) == [(2,), (2, 5)]


def test_input_forward_keeps_user_data_and_reshape_keeps_user_shape():
    lay = source("Input", "input_param { shape { dim: 2 dim: 3 } }", tops=("x",))
    infer_shapes(lay, [])
    _, (top,) = wired(lay)
    top.reshape((4, 3))                       # the user feeds another batch size
    top.data[...] = 7.0
    lay.reshape([], [top])
    lay.forward([], [top])
    assert top.shape == (4, 3) and (top.data == 7).all()


def test_input_without_shape_is_unknown():
    lay = source("Input", tops=("img",))
    with pytest.raises(UnknownShape, match=r"no shape given .* --input-shape img=N,C,H,W"):
        infer_shapes(lay, [])


def test_input_shape_count_mismatch():
    lay = source("Input", "input_param { shape { dim: 1 } shape { dim: 2 } }",
                 tops=("a", "b", "c"), name="in")
    with pytest.raises(GraphError, match=r"layer 'in' \(Input\): 2 input_param shapes for 3 tops"):
        infer_shapes(lay, [])


# ---- DummyData -----------------------------------------------------------------
def test_dummy_data_shapes_and_constant_fill():
    lay = source("DummyData", "dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 } "
                              "data_filler { type: 'constant' value: 1.5 } }", tops=("a", "b"))
    assert infer_shapes(lay, []) == [(2, 3), (4,)]
    a, b = run_layer(lay, [])
    assert (a == 1.5).all() and (b == 1.5).all()
    _, tops = wired(lay)
    tops[0].data[...] = 9.0                 # constant fillers fill once, as in Caffe
    lay.forward([], tops)
    assert (tops[0].data == 9.0).all()
    tops[0].data = np.zeros((2, 3), np.float32)   # ... unless the memory moved
    lay.forward([], tops)
    assert (tops[0].data == 1.5).all()


def test_dummy_data_default_is_zero_and_legacy_dims():
    lay = source("DummyData", "dummy_data_param { num: 2 num: 5 channels: 3 height: 4 width: 1 }",
                 tops=("a", "b"))
    assert infer_shapes(lay, []) == [(2, 3, 4, 1), (5, 3, 4, 1)]
    a, b = run_layer(lay, [])
    assert not a.any() and not b.any()


def test_dummy_data_random_fillers_refill_every_forward():
    lay = source("DummyData", "dummy_data_param { shape { dim: 200 dim: 50 } shape { dim: 3 } "
                              "data_filler { type: 'gaussian' std: 2 } "
                              "data_filler { type: 'constant' value: -1 } }", tops=("a", "b"))
    first, const = run_layer(lay, [])
    second, _ = run_layer(lay, [])
    assert not np.array_equal(first, second)
    assert abs(first.std() - 2.0) < 0.1 and abs(first.mean()) < 0.1
    assert (const == -1).all()
    lay.reseed(4)
    again = run_layer(lay, [])[0]
    lay.reseed(4)
    np.testing.assert_array_equal(again, run_layer(lay, [])[0])


def test_dummy_data_uniform_shared_filler():
    lay = source("DummyData", "dummy_data_param { shape { dim: 1000 } "
                              "data_filler { type: 'uniform' min: 2 max: 3 } }", tops=("a", "b"))
    a, b = run_layer(lay, [])
    assert a.min() >= 2 and a.max() <= 3 and not np.array_equal(a, b)


@pytest.mark.parametrize("params,message", [
    ("shape { dim: 1 } num: 1 channels: 1 height: 1 width: 1", "either shape or num"),
    ("shape { dim: 1 } data_filler { } data_filler { } data_filler { }", "3 data_filler for 2"),
    ("num: 1 num: 2 num: 3 channels: 1 height: 1 width: 1", "num given 3 times for 2 tops"),
    ("num: 1 channels: 1 height: 1", "width given 0 times"),
    ("shape { dim: 1 } shape { dim: 1 } shape { dim: 1 }", "shape given 3 times for 2 tops"),
    ("", "shape given 0 times"),
])
def test_dummy_data_errors(params, message):
    lay = source("DummyData", f"dummy_data_param {{ {params} }}", tops=("a", "b"), name="dd")
    with pytest.raises(GraphError, match=message) as err:
        infer_shapes(lay, [])
    assert "layer 'dd' (DummyData)" in str(err.value)


# ---- MemoryData / Data / ImageData / HDF5Data / WindowData ---------------------------
def test_memory_data():
    lay = source("MemoryData", "memory_data_param { batch_size: 4 channels: 3 height: 5 width: 6 }")
    assert infer_shapes(lay, []) == [(4, 3, 5, 6), (4,)]
    with pytest.raises(GraphError, match="positive batch_size, channels, height and width"):
        infer_shapes(source("MemoryData", "memory_data_param { batch_size: 4 }"), [])


@pytest.mark.parametrize("params,data_shape,note", [
    ("data_param { source: 'examples/mnist/mnist_train_lmdb' batch_size: 64 backend: LMDB }",
     (64, 1, 28, 28), "shape guessed from source name 'examples/mnist/mnist_train_lmdb' "
                      "(LMDB not found); pass --input-shape data=N,C,H,W to set it"),
    ("data_param { source: 'examples/cifar10/cifar10_test_lmdb' batch_size: 100 }",
     (100, 3, 32, 32), "shape guessed from source name"),
    ("data_param { source: 'examples/imagenet/ilsvrc12_train_lmdb' batch_size: 8 }",
     (8, 3, 256, 256), "shape guessed from source name"),
    ("data_param { source: '/data/IMAGENET-LMDB/imagenet-val-lmdb' batch_size: 8 } "
     "transform_param { crop_size: 227 mirror: true }", (8, 3, 227, 227), "guessed"),
    ("data_param { source: 'examples/siamese/mnist_siamese_train_leveldb' batch_size: 64 }",
     (64, 2, 28, 28), "guessed"),
    ("data_param { source: 'cifar-train-leveldb' batch_size: 2 } "
     "transform_param { force_gray: true }", (2, 1, 32, 32), "guessed"),
    ("data_param { source: 'my_db' batch_size: 10 } transform_param { crop_size: 99 }",
     (10, 3, 99, 99), "channel count assumed 3 for source 'my_db'"),
    ("data_param { source: 'my_db' batch_size: 10 } "
     "transform_param { crop_size: 99 force_gray: true }", (10, 1, 99, 99), None),
    ("data_param { source: 'my_db' batch_size: 10 crop_size: 50 }", (10, 3, 50, 50), "assumed"),
])
def test_data_layer_shapes(params, data_shape, note):
    lay = source("Data", params)
    assert infer_shapes(lay, []) == [data_shape, (data_shape[0],)]
    if note is None:
        assert lay.note is None
    else:
        assert note in lay.note


def test_data_layer_without_label_and_unknown_source():
    lay = source("Data", "data_param { source: 'x' batch_size: 4 } transform_param { crop_size: 8 }",
                 tops=("data",))
    assert infer_shapes(lay, []) == [(4, 3, 8, 8)]
    unknown = source("Data", "data_param { source: 'my/train_db' batch_size: 4 backend: LMDB }",
                     tops=("img", "label"))
    tops = [Blob(name="img"), Blob(name="label")]
    with pytest.raises(UnknownShape) as err:
        unknown.layer_setup([], tops)
    assert str(err.value) == ("cannot read LMDB 'my/train_db' to learn the data shape "
                              "(LMDB not found); pass --input-shape img=N,C,H,W")
    assert tops[1].shape == (4,)             # the label shape is known all the same
    leveldb = source("Data", "data_param { source: 'db' batch_size: 4 }")
    with pytest.raises(UnknownShape, match="cannot read LEVELDB 'db'"):
        infer_shapes(leveldb, [])


def test_data_layer_errors_and_forward():
    with pytest.raises(GraphError, match="data_param.batch_size must be given and positive"):
        infer_shapes(source("Data", "data_param { source: 'mnist' }"), [])
    lay = source("Data", "data_param { source: 'mnist_lmdb' batch_size: 2 }", name="mnist")
    infer_shapes(lay, [])
    bottoms, tops = wired(lay)
    with pytest.raises(DataError, match=r"layer 'mnist' \(Data\): LMDB 'mnist_lmdb': does not "
                                        r"exist \(looked in .*\); expected an LMDB directory"):
        lay.forward(bottoms, tops)
    tops[0].data[...] = 3.0                  # fed by the user like an Input
    lay.fed = True
    lay.forward(bottoms, tops)
    assert (tops[0].data == 3.0).all()


def write_png(path, width, height, mode="RGB"):
    from PIL import Image

    Image.new(mode, (width, height)).save(path)


def test_image_data_shapes_from_parameters():
    base = "image_data_param { source: 'list.txt' batch_size: 50 new_height: 256 new_width: 200 }"
    assert infer_shapes(source("ImageData", base), []) == [(50, 3, 256, 200), (50,)]
    gray = base.replace("batch_size", "is_color: false batch_size")
    assert infer_shapes(source("ImageData", gray), [])[0] == (50, 1, 256, 200)
    crop = base + " transform_param { crop_size: 181 }"
    assert infer_shapes(source("ImageData", crop), [])[0] == (50, 3, 181, 181)
    too_big = source("ImageData", base + " transform_param { crop_size: 227 }")
    assert infer_shapes(too_big, [])[0] == (50, 3, 227, 227)      # Caffe would stop here
    assert too_big.note == "crop_size 227 is larger than the data item 256x200; forward will fail"
    with pytest.raises(GraphError, match="new_height and new_width must be set together"):
        infer_shapes(source("ImageData", "image_data_param { source: 'l' new_height: 3 }"), [])


def test_image_data_reads_the_first_image(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    write_png(tmp_path / "imgs" / "a b.png", 40, 30)
    write_png(tmp_path / "imgs" / "c.png", 10, 10)
    (tmp_path / "list.txt").write_text("\na b.png 3\nc.png 1\n")
    params = ("image_data_param { source: 'list.txt' root_folder: 'imgs/' batch_size: 2 "
              "is_color: false }")
    monkeypatch.chdir(tmp_path)                      # relative to the current directory
    lay = source("ImageData", params)
    assert infer_shapes(lay, []) == [(2, 1, 30, 40), (2,)]
    assert "first image of 'list.txt'" in lay.note
    monkeypatch.chdir(tmp_path.parent)               # ... or to the search path
    lay = source("ImageData", params)
    lay.search_path = str(tmp_path)
    assert infer_shapes(lay, [])[0] == (2, 1, 30, 40)


def test_image_data_unknown_when_files_are_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = "image_data_param { source: 'list.txt' batch_size: 2 }"
    with pytest.raises(UnknownShape, match=r"cannot read the first image of 'list.txt' to learn "
                                           r"the image size \(image list not found\)"):
        infer_shapes(source("ImageData", params), [])
    (tmp_path / "list.txt").write_text("missing.jpg 0\n")
    with pytest.raises(UnknownShape, match="image 'missing.jpg': image file not found"):
        infer_shapes(source("ImageData", params), [])
    (tmp_path / "missing.jpg").write_text("not an image")
    with pytest.raises(DataError, match="image 'missing.jpg': not an image Pillow can decode"):
        infer_shapes(source("ImageData", params), [])


def test_hdf5_data_unknown_without_h5py_or_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lay = source("HDF5Data", "hdf5_data_param { source: 'train.txt' batch_size: 10 }")
    with pytest.raises(UnknownShape, match="cannot read the HDF5 files listed in 'train.txt' "
                                           r"to learn the data shapes \(HDF5 list not found\)"):
        infer_shapes(lay, [])


def test_hdf5_data_reads_dataset_shapes(shared_models, tmp_path):
    pytest.importorskip("h5py")
    h5 = shared_models / "caffe_test_data" / "sample_data.h5"   # data (10, 8, 6, 5), label (10, 1)
    (tmp_path / "list.txt").write_text(f"{h5}\n")
    lay = source("HDF5Data", f"hdf5_data_param {{ source: '{tmp_path / 'list.txt'}' "
                             "batch_size: 3 }")
    assert infer_shapes(lay, []) == [(3, 8, 6, 5), (3, 1)]


def test_window_data():
    lay = source("WindowData", "window_data_param { source: 'w.txt' batch_size: 128 "
                               "context_pad: 16 } transform_param { crop_size: 227 }")
    assert infer_shapes(lay, []) == [(128, 3, 227, 227), (128,)]
    with pytest.raises(GraphError, match="needs a crop size"):
        infer_shapes(source("WindowData", "window_data_param { source: 'w' batch_size: 1 }"), [])


def test_data_layer_arity():
    with pytest.raises(GraphError, match=r"takes exactly 2 top blobs, got 1"):
        infer_shapes(source("ImageData", "image_data_param { new_height: 2 new_width: 2 }",
                            tops=("data",)), [])
