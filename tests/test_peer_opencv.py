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


@pytest.mark.parametrize("optimize", [False, True], ids=["plain", "optimized"])
@pytest.mark.parametrize("filename,batch", NETS, ids=[n for n, _ in NETS])
def test_outputs_match_opencv(tmp_path, filename, batch, optimize):
    if optimize and filename not in ("googlenet_deploy.prototxt", "resnet50_deploy.prototxt"):
        pytest.skip("optimized plans are compared on the two nets with fusion and reuse")
    proto = str(ZOO / filename)
    net = Net(proto, optimize=optimize)
    randomize_weights(net, seed=3)
    weights = tmp_path / "w.caffemodel"
    net.save(str(weights))

    shape = (batch,) + tuple(net.input_shape()[1:])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ours = net.forward(**{net.inputs[0]: x})

    peer = cv2.dnn.readNetFromCaffe(proto, str(weights))
    peer.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    peer.setInput(x)
    names = list(net.outputs)
    theirs = peer.forward(names)
    assert len(theirs) == len(names)
    for name, expected in zip(names, theirs):
        got = ours[name]
        assert got.shape == tuple(expected.shape), name
        assert relative_error(got, expected) <= 1e-4, (name, relative_error(got, expected))
