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
]


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


CASES = [(name, batch, False) for name, batch in NETS] + [
    # fused BatchNorm/Scale/ReLU and activation-memory reuse
    ("resnet50_deploy.prototxt", 1, True),
    ("googlenet_deploy.prototxt", 1, True),
    ("alexnet_deploy.prototxt", 2, True),
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
