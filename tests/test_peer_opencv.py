"""Whole nets against an independent implementation: OpenCV 4's DNN module.

Each zoo net gets seeded random weights, is saved as a .caffemodel by
netdef, and is loaded from the same two files by cv2.dnn.readNetFromCaffe
(an independent Caffe importer; OpenCV 5 removed it, hence opencv<5 as a
test dependency). Every net output must agree to 1e-4 relative.
"""
import pathlib

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from netdef.net import Net  # noqa: E402
from netdef.testing import randomize_weights  # noqa: E402

ZOO = pathlib.Path(__file__).resolve().parents[1] / "zoo_defs"

NETS = [
    ("alexnet_deploy.prototxt", 2),
    ("googlenet_deploy.prototxt", 1),
    ("resnet50_deploy.prototxt", 1),
    ("squeezenet_v1_1_deploy.prototxt", 1),
    ("nin_imagenet_deploy.prototxt", 1),
    ("caffenet_deploy.prototxt", 1),
    ("lenet.prototxt", 3),
    ("traffic_signs_lenet.prototxt", 2),
    ("happy_face.prototxt", 2),
    ("mnist_alexnet_small.prototxt", 2),
    ("mobilenet_v1_deploy.prototxt", 1),
    ("mobilenet_v2_deploy.prototxt", 1),
]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


CASES = [(name, batch, False) for name, batch in NETS] + [
    # fused BatchNorm/Scale/ReLU and activation-memory reuse
    ("resnet50_deploy.prototxt", 1, True),
    ("googlenet_deploy.prototxt", 1, True),
    ("alexnet_deploy.prototxt", 2, True),
    ("mobilenet_v1_deploy.prototxt", 2, True),      # BatchNorm/Scale folded into depthwise
    ("mobilenet_v2_deploy.prototxt", 1, True),
]


@pytest.mark.parametrize("filename,batch,optimize", CASES,
                         ids=[f"{n}-{'optimized' if o else 'plain'}" for n, _, o in CASES])
def test_outputs_match_opencv(tmp_path, filename, batch, optimize):
    proto = str(ZOO / filename)
    # The logits too: random nets often saturate their softmax, and equal
    # one-hot probabilities would hide differences.
    logits = [s.bottoms[0] for s in Net(proto).graph.nodes if s.type in ("Softmax", "Sigmoid")]
    net = Net(proto, optimize=optimize, keep=logits)
    randomize_weights(net, seed=3)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))

    shape = (batch,) + tuple(net.input_shape()[1:])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ours = net.forward(blobs=logits, **{net.inputs[0]: x})

    peer = cv2.dnn.readNetFromCaffe(proto, str(weights))
    peer.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    peer.setInput(x)
    names = list(net.outputs) + logits   # OpenCV names outputs by the producing layer
    theirs = peer.forward(names)
    assert len(theirs) == len(names)
    for name, expected in zip(names, theirs):
        got = ours[name]
        assert got.shape == tuple(expected.shape), name
        assert relative_error(got, expected) <= 1e-4, (name, relative_error(got, expected))


# ------------------------------------------------------- SSD detectors ----
# Random detectors saturate their softmax, and equal scores make the order of
# detections arbitrary; so the loc/conf heads get smaller weights, which keeps
# the scores distinct. The heads' blobs are compared too.

DETECTORS = [("face_detector_ssd_res10_300x300.prototxt", False),
             ("mobilenet_ssd_deploy.prototxt", False),
             ("face_detector_ssd_res10_300x300.prototxt", True)]
HEADS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]


@pytest.mark.parametrize("filename,optimize", DETECTORS,
                         ids=[f"{n}-{'optimized' if o else 'plain'}" for n, o in DETECTORS])
def test_detections_match_opencv(tmp_path, filename, optimize):
    proto = str(ZOO / filename)
    net = Net(proto, optimize=optimize, keep=HEADS)
    randomize_weights(net, seed=3)
    for name, blobs in net.params.items():
        if "_mbox_" in name:
            for blob in blobs:
                blob.data = blob.data * 0.1
    net.params_changed()
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))
    x = (np.random.default_rng(1).standard_normal((1, 3, 300, 300)) * 30).astype(np.float32)
    ours = net.forward(blobs=HEADS, data=x)

    peer = cv2.dnn.readNetFromCaffe(proto, str(weights))
    peer.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    peer.setInput(x)
    theirs = dict(zip(["detection_out"] + HEADS, peer.forward(["detection_out"] + HEADS)))
    for name in HEADS:
        assert relative_error(ours[name], theirs[name]) <= 1e-4, name
    rows = ours["detection_out"][0, 0]
    assert len(rows) > 3 and len(np.unique(rows[:, 2])) == len(rows)
    # OpenCV pads with zero rows and sorts an image's rows by score; the
    # fork (and netdef) groups them by label, each label by score.
    valid, padding = theirs["detection_out"][0, 0, :len(rows)], \
        theirs["detection_out"][0, 0, len(rows):]
    assert not padding.any()
    valid = valid[np.lexsort((valid[:, 1], valid[:, 0]))]
    np.testing.assert_array_equal(rows[:, :2], valid[:, :2])
    assert relative_error(rows[:, 2:], valid[:, 2:]) <= 1e-4
