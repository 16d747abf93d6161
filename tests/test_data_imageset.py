"""convert_imageset and compute_image_mean (Python API and CLI)."""
from __future__ import annotations

import os
import subprocess
import sys

import lmdb
import numpy as np
import pytest
from data_helpers import image_folder, save_image

from netdef.cli import main
from netdef.data.imageset import compute_image_mean, convert_imageset
from netdef.data.records import datum_to_array, parse_datum, read_image
from netdef.errors import DataError, InputError
from netdef.io.binaryproto import read_mean


def read_db(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        out = [(k.decode(), parse_datum(v)) for k, v in txn.cursor()]
    env.close()
    return out


def test_from_a_folder_of_classes(tmp_path):
    images = image_folder(tmp_path / "imgs", classes=("b_dog", "a_cat"), per_class=2)
    report = convert_imageset(tmp_path / "imgs", out_lmdb=tmp_path / "db", progress=False)
    assert report.written == 4 and report.classes == ["a_cat", "b_dog"] and not report.skipped
    records = read_db(tmp_path / "db")
    assert [k for k, _ in records] == ["00000000_a_cat/0.png", "00000001_a_cat/1.png",
                                       "00000002_b_dog/0.png", "00000003_b_dog/1.png"]
    for key, datum in records:
        arr, _ = images[key.split("_", 1)[1]]
        assert not datum.encoded and (datum.channels, datum.height, datum.width) == arr.shape
        np.testing.assert_array_equal(datum_to_array(datum), arr)    # BGR, as stored by Caffe
        assert datum.label == (0 if "a_cat" in key else 1)
    assert sorted(os.listdir(tmp_path)) == ["db", "imgs"]           # no temp folder left


def test_from_a_list_with_root_resize_gray_and_shuffle(tmp_path):
    images = image_folder(tmp_path / "imgs", per_class=3, size=(8, 6))
    names = sorted(images)
    (tmp_path / "list.txt").write_text("".join(f"{n} {7 + i}\n" for i, n in enumerate(names)))
    report = convert_imageset(tmp_path / "list.txt", str(tmp_path / "imgs") + "/", tmp_path / "db",
                              resize_height=4, resize_width=3, gray=True, shuffle=True, seed=5,
                              progress=False)
    assert report.written == 6 and report.shape == (1, 4, 3)
    records = read_db(tmp_path / "db")
    listed = [k.split("_", 1)[1] for k, _ in records]
    assert sorted(listed) == names and listed != names                # a seeded shuffle
    again = tmp_path / "db2"
    convert_imageset(tmp_path / "list.txt", str(tmp_path / "imgs"), again, resize_height=4,
                     resize_width=3, gray=True, shuffle=True, seed=5, progress=False)
    assert [k for k, _ in read_db(again)] == [k for k, _ in records]
    for key, datum in records:
        name = key.split("_", 1)[1]
        np.testing.assert_array_equal(datum_to_array(datum),
                                      read_image(tmp_path / "imgs" / name, False, (4, 3)))
        assert datum.label == 7 + names.index(name)


def test_encoded_keeps_the_files_or_reencodes(tmp_path):
    image_folder(tmp_path / "imgs", per_class=1, size=(5, 5))
    convert_imageset(tmp_path / "imgs", out_lmdb=tmp_path / "same", encoded=True, progress=False)
    for key, datum in read_db(tmp_path / "same"):
        path = tmp_path / "imgs" / key.split("_", 1)[1]
        assert datum.encoded and datum.data == path.read_bytes()
    convert_imageset(tmp_path / "imgs", out_lmdb=tmp_path / "jpg", encoded=True,
                     encode_type="jpg", progress=False)
    for _key, datum in read_db(tmp_path / "jpg"):
        assert datum.data[:2] == b"\xff\xd8"                           # a JPEG now
        assert datum_to_array(datum).shape == (3, 5, 5)


def test_unreadable_images_are_skipped_and_errors(tmp_path):
    save_image(tmp_path / "ok.png", np.zeros((3, 2, 2), np.uint8))
    (tmp_path / "bad.png").write_text("not an image")
    (tmp_path / "list.txt").write_text("ok.png 0\nbad.png 1\nmissing.png 2\n")
    report = convert_imageset(tmp_path / "list.txt", str(tmp_path) + "/", tmp_path / "db",
                              progress=False)
    assert report.written == 1 and [os.path.basename(p) for p, _ in report.skipped] == \
        ["bad.png", "missing.png"]
    assert "2 unreadable images skipped" in str(report)
    with pytest.raises(InputError, match="already exists"):
        convert_imageset(tmp_path / "list.txt", str(tmp_path) + "/", tmp_path / "db")
    with pytest.raises(InputError, match="does not exist"):
        convert_imageset(tmp_path / "nolist.txt", "", tmp_path / "x")
    with pytest.raises(InputError, match="resize needs both"):
        convert_imageset(tmp_path / "list.txt", "", tmp_path / "x", resize_height=3)
    (tmp_path / "all_bad.txt").write_text("bad.png 1\n")
    with pytest.raises(InputError, match="none of the 1 images could be read"):
        convert_imageset(tmp_path / "all_bad.txt", str(tmp_path) + "/", tmp_path / "y",
                         progress=False)
    assert not (tmp_path / "y").exists()
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]   # temp removed


def test_check_size_and_interrupted_write_leave_nothing(tmp_path, monkeypatch):
    save_image(tmp_path / "a.png", np.zeros((3, 2, 2), np.uint8))
    save_image(tmp_path / "b.png", np.zeros((3, 3, 2), np.uint8))
    (tmp_path / "list.txt").write_text("a.png 0\nb.png 1\n")
    with pytest.raises(InputError, match=r"image '.*b.png' has shape \(3, 3, 2\)"):
        convert_imageset(tmp_path / "list.txt", str(tmp_path) + "/", tmp_path / "db",
                         check_size=True, progress=False)
    assert not (tmp_path / "db").exists()
    import netdef.data.imageset as imageset

    def boom(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(imageset, "_commit", boom)
    with pytest.raises(KeyboardInterrupt):
        convert_imageset(tmp_path / "list.txt", str(tmp_path) + "/", tmp_path / "db",
                         progress=False)
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png", "list.txt"]


def test_compute_image_mean(tmp_path):
    images = image_folder(tmp_path / "imgs", per_class=3, size=(4, 5))
    convert_imageset(tmp_path / "imgs", out_lmdb=tmp_path / "db", encoded=True, progress=False)
    mean = compute_image_mean(tmp_path / "db", tmp_path / "mean.binaryproto", progress=False)
    expected = np.mean([a.astype(np.float64) for a, _ in images.values()], axis=0)
    np.testing.assert_allclose(mean, expected, rtol=1e-6)
    np.testing.assert_allclose(read_mean(tmp_path / "mean.binaryproto"), mean)
    with pytest.raises(DataError, match="LMDB 'nowhere': does not exist"):
        compute_image_mean("nowhere")


def test_compute_image_mean_shape_mismatch(tmp_path):
    from data_helpers import raw_lmdb

    raw_lmdb(tmp_path / "db", [np.zeros((1, 2, 2), np.uint8), np.zeros((1, 3, 2), np.uint8)])
    with pytest.raises(DataError, match=r"record '00000001' has shape \(1, 3, 2\); the first "
                                        r"record '00000000' has \(1, 2, 2\)"):
        compute_image_mean(tmp_path / "db", progress=False)


def test_cli_commands(tmp_path, capsys):
    image_folder(tmp_path / "imgs", per_class=2, size=(3, 3))
    assert main(["convert-imageset", str(tmp_path / "imgs"), str(tmp_path / "db"),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "label 0: cat" in err and "wrote 4 records" in err
    assert main(["compute-image-mean", str(tmp_path / "db"), str(tmp_path / "m.binaryproto"),
                 "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("mean_value per channel: ") and "wrote" in err
    assert read_mean(tmp_path / "m.binaryproto").shape == (3, 3, 3)
    # Caffe's argument order: ROOT LISTFILE DB
    (tmp_path / "list.txt").write_text("cat/0.png 0\ndog/1.png 1\n")
    assert main(["convert-imageset", str(tmp_path / "imgs") + "/", str(tmp_path / "list.txt"),
                 str(tmp_path / "db2"), "--quiet", "--resize-height", "2", "--resize-width",
                 "2", "--gray"]) == 0
    capsys.readouterr()
    assert main(["convert-imageset", str(tmp_path / "imgs"), str(tmp_path / "db")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netdef: error: ") and "already exists" in err
    assert main(["compute-image-mean", str(tmp_path / "missing")]) == 2
    assert main(["convert-imageset", "only-one"]) == 2


def test_cli_help_in_a_subprocess():
    for command in ("convert-imageset", "compute-image-mean"):
        run = subprocess.run([sys.executable, "-m", "netdef", command, "--help"],
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and "usage: netdef " + command in run.stdout
