"""netdef.compat.cv2dnn against OpenCV 4's cv2.dnn (opencv-python-headless,
a test dependency): layer names and ids, outputs, profiles, NMSBoxes,
imagesFromBlob, blobFromImage(s) bit for bit, and an OpenCV-style
classification script run through both."""
from __future__ import annotations

import pathlib

import numpy as np
import pytest

from conftest import shared_prototxts
from netdef.compat import cv2dnn
from netdef.errors import InputError
from netdef.net import Net
from netdef.testing import randomize_weights

cv2 = pytest.importorskip("cv2")

ZOO = pathlib.Path(__file__).resolve().parents[1] / "zoo_defs"
DEPLOY = sorted(p.name for p in ZOO.glob("*.prototxt") if "train" not in p.name)


def _shared_deploy():
    # VGG is the zoo's vgg16 again (and slow to copy the weights of)
    return [p for p in shared_prototxts() if "deploy" in p.name and "vgg" not in str(p)]


def _random_weights(proto, tmp_path, seed=3):
    net = Net(str(proto))
    randomize_weights(net, seed=seed)
    path = tmp_path / "w.caffemodel"
    net.save(str(path))
    return str(path)


# ---- layer names, ids, outputs ---------------------------------------------------
def _same_layers(proto):
    ref = cv2.dnn.readNetFromCaffe(str(proto))
    ours = cv2dnn.readNetFromCaffe(str(proto))
    names = list(ref.getLayerNames())
    assert ours.getLayerNames() == names
    assert [ours.getLayerId(n) for n in names] == [ref.getLayerId(n) for n in names]
    assert ours.getLayerId("_input") == 0 and ours.getLayerId("no such layer") == -1
    assert list(ours.getUnconnectedOutLayers()) == list(np.ravel(ref.getUnconnectedOutLayers()))
    assert ours.getUnconnectedOutLayersNames() == list(ref.getUnconnectedOutLayersNames())
    for i, name in enumerate(names, start=1):
        got = ours.getLayer(name)
        try:
            want = ref.getLayer(name).type
        except cv2.error:          # OpenCV cannot make a BatchNorm without its weights
            want = got.type
        assert (got.name, got.type) == (name, want)
        assert ours.getLayer(i).name == name
    return names


@pytest.mark.parametrize("name", DEPLOY)
def test_layer_names_and_ids_match_opencv(name):
    names = _same_layers(ZOO / name)
    if name == "googlenet_deploy.prototxt":
        assert len(names) == 142            # netdef's graph has 151 nodes with its Splits
    if name == "nin_imagenet_deploy.prototxt":
        # OpenCV names a Convolution after its top; the Caffe name still works
        assert "conv4" in names and "conv4-1024" not in names
        net = cv2dnn.readNetFromCaffe(str(ZOO / name))
        assert net.getLayerId("conv4-1024") == net.getLayerId("conv4")


@pytest.mark.parametrize("path", _shared_deploy(), ids=lambda p: p.parent.name)
def test_shared_deploy_nets_match_opencv(shared_models, path):
    _same_layers(path)


TWO_SOURCES = """
name: "fed by data layers"
layer { name: "d" type: "DummyData" top: "data"
  dummy_data_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "r" type: "ReLU" bottom: "c" top: "c" }
layer { name: "s" type: "Slice" bottom: "c" top: "s1" top: "s2" }
layer { name: "p" type: "Pooling" bottom: "s1" top: "p" pooling_param { kernel_size: 2 } }
layer { name: "q" type: "Pooling" bottom: "s1" top: "q" pooling_param { kernel_size: 1 } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "p" }
"""


def test_unconnected_layers_follow_opencv_rules(tmp_path):
    proto = tmp_path / "n.prototxt"
    proto.write_text(TWO_SOURCES)
    names = _same_layers(proto)
    # '_input' (nothing reads an Input), 'q' (unread) and the topless loss
    assert names == ["d", "c", "r", "s", "p", "q", "loss"]
    assert cv2dnn.readNetFromCaffe(str(proto)).getUnconnectedOutLayersNames() == \
        ["_input", "q", "loss"]


def test_outputs_and_parameters_match_opencv(tmp_path):
    proto = ZOO / "nin_imagenet_deploy.prototxt"
    weights = _random_weights(proto, tmp_path)
    ref = cv2.dnn.readNet(weights, str(proto))
    ours = cv2dnn.readNet(weights, str(proto))       # either order, as OpenCV
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ref.setInput(x)
    ours.setInput(x)
    names = ["conv1", "relu0", "conv4", "cccp8", "pool4"]
    for name, got, want in zip(names, ours.forward(names), ref.forward(names), strict=True):
        scale = max(float(np.abs(want).max()), 1e-6)
        assert float(np.abs(got - want).max()) / scale < 1e-4, name
    np.testing.assert_allclose(ours.forward(), ref.forward(), rtol=1e-4, atol=1e-6)
    for name in ("conv4", "cccp8"):
        got, want = ours.getLayer(name).blobs, ref.getLayer(name).blobs
        assert len(got) == len(want) == 2
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a.ravel(), b.ravel())
    np.testing.assert_array_equal(ours.getParam("conv4", 1).ravel(),
                                  ref.getParam("conv4", 1).ravel())
    assert ours.getLayer(0).name == "_input" and ours.getLayer(0).blobs == ()


def test_perf_profile_like_opencv(tmp_path):
    proto = ZOO / "lenet.prototxt"
    weights = _random_weights(proto, tmp_path)
    ref = cv2.dnn.readNetFromCaffe(str(proto), weights)
    ours = cv2dnn.readNetFromCaffe(str(proto), weights)
    x = np.zeros((1, 1, 28, 28), np.float32)
    for net in (ref, ours):
        net.setInput(x)
        net.forward()
    (total, timings), (ref_total, ref_timings) = ours.getPerfProfile(), ref.getPerfProfile()
    assert isinstance(ref_total, int)
    assert isinstance(total, int) and timings.dtype == ref_timings.dtype == np.float64
    assert timings.shape == ref_timings.shape == (8,)
    assert total == int(timings.sum()) and (timings > 0).all()
    assert cv2dnn.getTickFrequency() == cv2.getTickFrequency()
    assert total / cv2.getTickFrequency() < 5.0              # seconds, not ticks of another clock
    for net in (ref, ours):
        net.forward("pool1")                    # only the layers up to pool1 run
    timings, ref_timings = ours.getPerfProfile()[1], ref.getPerfProfile()[1]
    assert (timings[:2] > 0).all() and not timings[2:].any()
    assert (ref_timings[:2] > 0).all() and not ref_timings[2:].any()


def test_read_net_and_errors(tmp_path):
    proto = str(ZOO / "lenet.prototxt")
    weights = _random_weights(ZOO / "lenet.prototxt", tmp_path)
    a = cv2dnn.readNet(proto, weights)
    b = cv2dnn.readNet(weights, proto, "caffe")
    c = cv2dnn.readNet(proto)
    assert a.getLayerNames() == b.getLayerNames() == c.getLayerNames()
    np.testing.assert_array_equal(a.getParam("conv1"), b.getParam(1))
    with pytest.raises(InputError, match="Caffe models only"):
        cv2dnn.readNet("model.onnx")
    with pytest.raises(InputError, match="Caffe models only"):
        cv2dnn.readNet(weights, proto, "tensorflow")
    with pytest.raises(InputError, match="no layer 'fc8'"):
        a.getLayer("fc8")
    with pytest.raises(InputError, match="no layer with id 99"):
        a.getLayer(99)
    a.setParam("ip2", 1, np.arange(10))
    np.testing.assert_array_equal(a.getParam("ip2", 1), np.arange(10))
    with pytest.raises(InputError, match="shape"):
        a.setParam("ip2", 1, np.arange(3))
    assert not a.empty()


# ---- NMSBoxes and imagesFromBlob ---------------------------------------------------
NMS_CASES = [
    dict(score_threshold=0.3, nms_threshold=0.4),
    dict(score_threshold=0.0, nms_threshold=0.5, top_k=7),
    dict(score_threshold=0.2, nms_threshold=0.7, eta=0.9),
    dict(score_threshold=0.5, nms_threshold=0.0),
    dict(score_threshold=0.1, nms_threshold=1.0),
]


@pytest.mark.parametrize("case", NMS_CASES)
@pytest.mark.parametrize("seed", range(6))
def test_nms_boxes_matches_opencv(case, seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 120))
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(1, 40, (n, 2))
    boxes = np.concatenate([xy, wh], axis=1)
    if seed % 2:
        boxes = np.round(boxes)                          # integer boxes, exact ties of IoU
        boxes[: n // 4] = boxes[0]                       # identical boxes
    scores = rng.random(n).astype(np.float32)
    if seed % 3 == 0:
        scores = np.round(scores * 4) / 4                # many equal scores: stable order
    boxes_list, scores_list = boxes.tolist(), scores.tolist()
    want = cv2.dnn.NMSBoxes(boxes_list, scores_list, **case)
    got = cv2dnn.NMSBoxes(boxes_list, scores_list, **case)
    assert list(np.ravel(got)) == list(np.ravel(want))
    if len(want):
        assert got.dtype == np.int32


def test_nms_boxes_edge_cases():
    assert cv2dnn.NMSBoxes([], [], 0.5, 0.4) == cv2.dnn.NMSBoxes([], [], 0.5, 0.4) == ()
    boxes = [[0, 0, 10, 10], [0, 0, 0, 0], [5, 5, 0, 3], [1, 1, 10, 10]]
    scores = [0.9, 0.8, 0.7, 0.6]
    for thr in (0.0, 0.3, 0.9):
        assert list(cv2dnn.NMSBoxes(boxes, scores, 0.1, thr)) == \
            list(np.ravel(cv2.dnn.NMSBoxes(boxes, scores, 0.1, thr)))
    with pytest.raises(InputError, match="2 boxes but 1 scores"):
        cv2dnn.NMSBoxes([[0, 0, 1, 1]] * 2, [0.5], 0.1, 0.2)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 3, 3), (3, 4, 2, 6)])
def test_images_from_blob_matches_opencv(shape):
    blob = np.random.default_rng(0).random(shape).astype(np.float32)
    want = cv2.dnn.imagesFromBlob(blob)
    got = cv2dnn.imagesFromBlob(blob)
    assert isinstance(got, tuple) and len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    roundtrip = cv2dnn.blobFromImages(got)
    np.testing.assert_array_equal(roundtrip, blob)


# ---- blobFromImage(s): cv2.resize when cv2 is there --------------------------------
BLOB_CASES = [
    dict(size=(6, 6)),
    dict(size=(10, 7), mean=(104, 117, 123.5), swapRB=True),
    dict(size=(6, 6), crop=True, scalefactor=0.017),
    dict(size=(5, 9), crop=True, swapRB=True, mean=(1, 2, 3)),
    dict(size=(224, 224), mean=(104, 117, 123)),
    dict(size=(0, 0), mean=127.5),            # a lone number: first channel only, as OpenCV
]


@pytest.mark.parametrize("kw", BLOB_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("shape", [(9, 13, 3), (13, 9, 3), (8, 8), (7, 11, 4), (300, 257, 3)])
def test_blob_from_image_is_opencvs_bit_for_bit(kw, dtype, shape):
    image = (np.random.default_rng(5).random(shape) * 255).astype(dtype)
    args = {"scalefactor": 1.0, **kw}
    want = cv2.dnn.blobFromImage(image, **args)
    got = cv2dnn.blobFromImage(image, **args)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_blob_from_images_is_opencvs_bit_for_bit():
    rng = np.random.default_rng(6)
    ims = [(rng.random((9, 12, 3)) * 255).astype(np.uint8),
           (rng.random((20, 10, 3)) * 255).astype(np.uint8)]
    want = cv2.dnn.blobFromImages(ims, 2.0, (8, 8), (0.1, 0.2, 0.3), True, True)
    got = cv2dnn.blobFromImages(ims, 2.0, (8, 8), (0.1, 0.2, 0.3), True, True)
    np.testing.assert_array_equal(got, want)


def test_blob_from_image_without_cv2_is_within_one_grey_level(monkeypatch):
    """The fallback resize (no cv2) is float bilinear: uint8 results may
    differ from OpenCV's fixed point by 1; float images agree to rounding."""
    monkeypatch.setattr(cv2dnn, "_cv2", lambda: None)
    rng = np.random.default_rng(7)
    image = (rng.random((300, 257, 3)) * 255).astype(np.uint8)
    want = cv2.dnn.blobFromImage(image, 1.0, (224, 224), (104, 117, 123))
    got = cv2dnn.blobFromImage(image, 1.0, (224, 224), (104, 117, 123))
    assert np.abs(got - want).max() <= 1.0
    differ = float(np.mean(got != want))
    assert differ < 0.25, differ
    flt = image.astype(np.float32)
    np.testing.assert_allclose(cv2dnn.blobFromImage(flt, 1.0, (224, 224), crop=True),
                               cv2.dnn.blobFromImage(flt, 1.0, (224, 224), crop=True),
                               atol=1e-3)


# ---- an OpenCV-style classification script, through both ----------------------------
SCRIPT = """
import numpy as np

net = dnn.readNet(model, config)
net.setPreferableBackend(dnn.DNN_BACKEND_OPENCV)
net.setPreferableTarget(dnn.DNN_TARGET_CPU)
image = cv2.imread(image_path)
blob = dnn.blobFromImage(image, 1.0, (227, 227), (104, 117, 123), swapRB=False, crop=False)
net.setInput(blob)
prob = net.forward()
top5 = np.argsort(prob[0].ravel())[::-1][:5]
probs = prob[0].ravel()[top5]
t, _ = net.getPerfProfile()
label = "Inference time: %.2f ms" % (t * 1000.0 / cv2.getTickFrequency())
outputs = net.getUnconnectedOutLayersNames()
"""


def test_classification_script_matches_opencv(tmp_path):
    proto = ZOO / "squeezenet_v1_1_deploy.prototxt"
    weights = _random_weights(proto, tmp_path, seed=11)
    image_path = str(tmp_path / "cat.png")
    rng = np.random.default_rng(8)
    image = (rng.random((300, 400, 3)) * 255).astype(np.uint8)
    cv2.imwrite(image_path, cv2.GaussianBlur(image, (9, 9), 3))
    results = {}
    for which, dnn in (("opencv", cv2.dnn), ("netdef", cv2dnn)):
        scope = {"dnn": dnn, "cv2": cv2, "model": weights, "config": str(proto),
                 "image_path": image_path}
        exec(compile(SCRIPT, f"<{which} script>", "exec"), scope)   # noqa: S102
        results[which] = scope
    ours, theirs = results["netdef"], results["opencv"]
    assert list(ours["top5"]) == list(theirs["top5"])
    np.testing.assert_allclose(ours["probs"], theirs["probs"], atol=1e-4)
    np.testing.assert_allclose(ours["prob"], theirs["prob"], atol=1e-4)
    assert list(ours["outputs"]) == list(theirs["outputs"]) == ["prob"]
    assert ours["label"].startswith("Inference time: ")
    # the predictions differ from class to class (not a saturated random net)
    assert theirs["probs"][0] - theirs["probs"][4] > 1e-3
