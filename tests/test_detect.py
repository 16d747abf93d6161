"""``netdef detect`` through cli.main: text, JSON, drawing, presets, errors.

The detector is the zoo's face detector with seeded random weights (its
loc/conf heads tempered so the scores stay distinct), saved as a
.caffemodel once per module; the expected boxes come from netdef.Net run
on the same preprocessed input, scaled to the image's pixels.
"""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from netdef.cli import main

ZOO = pathlib.Path(__file__).resolve().parents[1] / "zoo_defs"
FACE = str(ZOO / "face_detector_ssd_res10_300x300.prototxt")


@pytest.fixture(scope="module")
def face_weights(tmp_path_factory) -> str:
    from netdef.net import Net
    from netdef.testing import randomize_weights

    net = Net(FACE)
    randomize_weights(net, seed=3)
    for name, blobs in net.params.items():
        if "_mbox_" in name:
            for blob in blobs:
                blob.data = blob.data * 0.1
    net.params_changed()
    path = tmp_path_factory.mktemp("weights") / "face_random.caffemodel"
    net.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("img") / "noise.png"
    Image.fromarray((rng.random((120, 160, 3)) * 255).astype(np.uint8)).save(path)
    return str(path)


def run(capsys, *argv):
    code = main(["detect", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_json_boxes_are_the_net_output_in_pixels(capsys, face_weights, image):
    code, out, err = run(capsys, FACE, image, "--weights", face_weights, "--json",
                         "--threshold", "0.6")
    assert code == 0, err
    (result,) = json.loads(out)
    assert (result["width"], result["height"]) == (160, 120)
    dets = result["detections"]
    assert dets and all(d["label"] == "face" and d["class"] == 1 for d in dets)
    assert all(d["score"] > 0.6 for d in dets)
    # the same detections straight from the net, preprocessed as the face detector
    from netdef.images import Preprocessor, load_image, parse_mean
    from netdef.net import Net

    net = Net(FACE, weights=face_weights)
    mean, _ = parse_mean("104,177,123", 3)
    x = Preprocessor((3, 300, 300), mean=mean)(load_image(image))
    rows = net.forward(data=x[None])["detection_out"][0, 0]
    rows = rows[rows[:, 2] > 0.6]
    assert len(rows) == len(dets)
    scale = np.array([160, 120, 160, 120])
    expected = np.clip(rows[:, 3:] * scale, 0, scale)
    np.testing.assert_allclose([d["box"] for d in dets], expected, atol=0.06)
    np.testing.assert_allclose([d["score"] for d in dets], rows[:, 2], rtol=1e-6)
    assert "minus per-channel values (104, 177, 123)" in err


def test_text_lines_and_drawing(capsys, face_weights, image, tmp_path):
    drawn = tmp_path / "boxes.png"
    code, out, err = run(capsys, FACE, image, "--weights", face_weights, "--threshold", "0.62",
                         "--draw", str(drawn))
    assert code == 0, err
    lines = out.splitlines()
    assert lines and all(line.split()[:2] == [image, "face"] for line in lines)
    first = lines[0].split()
    assert float(first[2]) > 0.62 and len(first) == 7
    x0, y0, x1, y1 = map(float, first[3:])
    assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
    with Image.open(drawn) as img, Image.open(image) as orig:
        assert img.size == orig.size
        assert np.any(np.asarray(img) != np.asarray(orig))
    assert f"wrote {drawn}" in err


def test_several_images_draw_numbered_files(capsys, face_weights, image, tmp_path):
    code, out, err = run(capsys, FACE, image, image, "--weights", face_weights,
                         "--draw", str(tmp_path / "d.png"), "--threshold", "0.99")
    assert code == 0
    assert (tmp_path / "d_1.png").exists() and (tmp_path / "d_2.png").exists()
    assert out == ""                      # nothing scores above 0.99
    assert err.count("0 detection(s) above 0.99") == 2


def test_without_weights_warns(capsys, image):
    code, out, err = run(capsys, FACE, image)
    assert code == 0
    assert "WARNING: no --weights given" in err and "MEANS NOTHING" in err


def test_mobilenet_ssd_preset_and_labels(capsys, image):
    proto = str(ZOO / "mobilenet_ssd_deploy.prototxt")
    code, out, err = run(capsys, proto, image, "--json")
    assert code == 0
    assert "minus per-channel values (127.5, 127.5, 127.5) -> x0.007843" in err
    # zero weights: every score is 1/21, under the net's confidence_threshold 0.3
    assert json.loads(out)[0]["detections"] == []
    from netdef import detect

    assert detect.PRESETS_BY_NAME["MobileNet-SSD"].labels[15] == "person"
    assert len(detect.VOC_LABELS) == 21 and detect.VOC_LABELS[0] == "background"


def test_preset_override(capsys, image):
    code, _, err = run(capsys, FACE, image, "--mean", "1,2,3", "--input-scale", "0.5")
    assert code == 0 and "minus per-channel values (1, 2, 3) -> x0.5" in err


def test_labels_file_must_fit(capsys, face_weights, image, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("bg\nhead\n")
    code, out, _ = run(capsys, FACE, image, "--weights", face_weights, "--labels", str(labels),
                       "--threshold", "0.62")
    assert code == 0 and out.split()[1] == "head"
    labels.write_text("only one\n")
    code, _, err = run(capsys, FACE, image, "--labels", str(labels))
    assert code == 2 and "1 lines but the detector has 2 classes" in err


def test_a_classifier_is_refused(capsys, image):
    code, _, err = run(capsys, str(ZOO / "lenet.prototxt"), image)
    assert code == 2 and "not an SSD detector" in err and "Softmax" in err


def test_missing_image(capsys):
    code, _, err = run(capsys, FACE, "no/such.png")
    assert code == 2 and "no/such.png" in err
