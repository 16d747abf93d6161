"""netdef.compat: pycaffe scripts and cv2.dnn code running on netdef."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from netdef.compat import caffe, cv2dnn

TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3
    weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "constant" value: -0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

# A pycaffe classification script, as in Caffe's examples; only the import differs.
PYCAFFE_SCRIPT = """
from netdef.compat import caffe
import numpy as np

caffe.set_mode_cpu()
net = caffe.Net(model_def, model_weights, caffe.TEST)
mu = np.load(mean_file).mean(1).mean(1)
transformer = caffe.io.Transformer({'data': net.blobs['data'].data.shape})
transformer.set_transpose('data', (2, 0, 1))
transformer.set_mean('data', mu)
transformer.set_raw_scale('data', 255)
transformer.set_channel_swap('data', (2, 1, 0))
net.blobs['data'].reshape(1, 3, 8, 8)
image = caffe.io.load_image(image_file)
transformed_image = transformer.preprocess('data', image)
net.blobs['data'].data[...] = transformed_image
output = net.forward()
output_prob = output['prob'][0]
predicted = output_prob.argmax()
top_inds = output_prob.argsort()[::-1][:5]
conv_shape = net.params['conv1'][0].data.shape
feat = net.blobs['pool1'].data[0]
"""


@pytest.fixture
def model(tmp_path):
    from netdef.net import Net

    proto = tmp_path / "tiny.prototxt"
    proto.write_text(TINY)
    weights = tmp_path / "tiny.caffemodel"
    Net(str(proto), seed=5).save(str(weights))
    image = tmp_path / "im.png"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((11, 13, 3)) * 255).astype(np.uint8)).save(image)
    mean = tmp_path / "mean.npy"
    np.save(mean, rng.random((3, 8, 8)) * 255)
    return {"proto": str(proto), "weights": str(weights), "image": str(image),
            "mean": str(mean)}


# ------------------------------------------------------------- pycaffe ----

def test_pycaffe_classification_script_runs_unchanged(model):
    env = {"model_def": model["proto"], "model_weights": model["weights"],
           "image_file": model["image"], "mean_file": model["mean"]}
    exec(PYCAFFE_SCRIPT, env)  # the point: a user script, run as is
    assert env["output_prob"].shape == (6,)
    assert env["conv_shape"] == (4, 3, 3, 3) and env["feat"].shape == (4, 3, 3)
    # The same numbers through netdef's own API.
    from netdef.images import Preprocessor, load_image
    from netdef.net import Net

    mean = np.load(model["mean"]).mean(1).mean(1)
    x = Preprocessor((3, 8, 8), mean=mean)(load_image(model["image"]))
    expected = Net(model["proto"], weights=model["weights"]).forward(data=x[None])["prob"][0]
    np.testing.assert_allclose(env["output_prob"], expected, rtol=1e-5, atol=1e-7)
    assert env["predicted"] == expected.argmax()


def test_both_net_signatures_and_attributes(model):
    a = caffe.Net(model["proto"], model["weights"], caffe.TEST)
    b = caffe.Net(model["proto"], caffe.TEST, weights=model["weights"])
    c = caffe.Net(model["proto"], caffe.TEST)          # random weights
    np.testing.assert_array_equal(a.params["fc"][0].data, b.params["fc"][0].data)
    assert not np.array_equal(a.params["fc"][0].data, c.params["fc"][0].data)
    assert a.inputs == ["data"] and a.outputs == ["prob"]
    assert list(a.blobs) == ["data", "conv1", "pool1", "fc", "prob"]
    blob = a.blobs["data"]
    assert (blob.num, blob.channels, blob.height, blob.width) == (2, 3, 8, 8)
    assert a._layer_names[:2] == ["data", "conv1"]
    assert a.top_names["relu1"] == ["conv1"] and a.bottom_names["fc"] == ["pool1"]
    assert a.layer_dict["conv1"].type == "Convolution"
    assert caffe.proto.caffe_pb2.NetParameter().ByteSize() == 0
    assert "Convolution" in caffe.layer_type_list()


def test_forward_with_inputs_and_forward_all(model):
    net = caffe.Net(model["proto"], model["weights"], caffe.TEST)
    x = np.random.default_rng(1).random((5, 3, 8, 8)).astype(np.float32)
    one = net.forward(data=x[:2])["prob"].copy()
    all_ = net.forward_all(data=x, blobs=["pool1"])
    assert all_["prob"].shape == (5, 6) and all_["pool1"].shape == (5, 4, 3, 3)
    np.testing.assert_allclose(all_["prob"][:2], one, rtol=1e-5)
    with pytest.raises(ValueError, match="every net input"):
        net.forward(dta=x)


def test_reshape_then_forward_keeps_the_written_data(model):
    net = caffe.Net(model["proto"], model["weights"], caffe.TEST)
    x = np.random.default_rng(2).random((3, 3, 8, 8)).astype(np.float32)
    net.blobs["data"].reshape(3, 3, 8, 8)
    net.blobs["data"].data[...] = x
    out = net.forward()["prob"]
    assert out.shape == (3, 6)
    ref = caffe.Net(model["proto"], model["weights"], caffe.TEST).forward_all(data=x)["prob"]
    np.testing.assert_allclose(out, ref, rtol=1e-5)


def test_save_and_copy_from(model, tmp_path):
    net = caffe.Net(model["proto"], caffe.TEST)
    net.copy_from(model["weights"])
    ref = caffe.Net(model["proto"], model["weights"], caffe.TEST)
    np.testing.assert_array_equal(net.params["conv1"][1].data, ref.params["conv1"][1].data)
    net.save(tmp_path / "copy.caffemodel")
    again = caffe.Net(model["proto"], str(tmp_path / "copy.caffemodel"), caffe.TEST)
    np.testing.assert_array_equal(again.params["fc"][0].data, ref.params["fc"][0].data)


def test_set_mode_gpu_warns_and_cpu_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        caffe.set_mode_cpu()
        caffe.set_device(0)
    with pytest.warns(UserWarning, match="CPU only"):
        caffe.set_mode_gpu()


def test_transformer_preprocess_deprocess_roundtrip():
    t = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    im = np.random.default_rng(3).random((4, 5, 3)).astype(np.float32)
    x = t.preprocess("data", im)
    np.testing.assert_allclose(x[0], (im[:, :, 2] * 255 - 10) * 0.5, rtol=1e-5)
    np.testing.assert_allclose(t.deprocess("data", x), im, atol=1e-5)
    assert t.preprocess("data", np.zeros((8, 9, 3))).shape == (3, 4, 5)  # resized first


def test_transformer_errors_are_value_errors():
    t = caffe.io.Transformer({"data": (1, 3, 4, 5)})
    with pytest.raises(ValueError, match="incompatible|does not match"):
        t.set_mean("data", np.zeros((2, 8, 8)))    # other sizes are resized; channels must fit
    with pytest.raises(ValueError):
        t.set_mean("data", np.zeros(2))
    with pytest.raises(ValueError):
        t.set_channel_swap("data", (1, 0))
    with pytest.raises(ValueError, match="not one of the net inputs"):
        t.set_raw_scale("image", 255)
    t.set_mean("data", np.zeros((3, 4, 5)))      # an exactly fitting mean image is fine


def test_oversample_corners_center_and_mirrors():
    im = np.arange(6 * 7 * 1, dtype=np.float32).reshape(6, 7, 1)
    crops = caffe.io.oversample([im, im + 100], (4, 4))
    assert crops.shape == (20, 4, 4, 1)
    np.testing.assert_array_equal(crops[0], im[:4, :4])
    np.testing.assert_array_equal(crops[3], im[2:, 3:])
    np.testing.assert_array_equal(crops[4], im[1:5, 1:5])
    np.testing.assert_array_equal(crops[9], im[1:5, 1:5][:, ::-1])
    np.testing.assert_array_equal(crops[10], im[:4, :4] + 100)


def test_blobproto_and_datum_roundtrips():
    arr = np.random.default_rng(4).random((2, 3, 4)).astype(np.float32)
    blob = caffe.io.array_to_blobproto(arr, diff=arr * 2)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob), arr)
    np.testing.assert_array_equal(caffe.io.blobproto_to_array(blob, return_diff=True), arr * 2)
    legacy = caffe.proto.caffe_pb2.BlobProto(num=1, channels=1, height=1, width=2)
    legacy.data.extend([1.0, 2.0])
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 1, 1, 2)
    text = caffe.io.arraylist_to_blobprotovector_str([arr, arr[0]])
    back = caffe.io.blobprotovector_str_to_arraylist(text)
    np.testing.assert_array_equal(back[1], arr[0])
    u8 = (arr * 255).astype(np.uint8)
    datum = caffe.io.array_to_datum(u8, label=3)
    assert datum.label == 3
    np.testing.assert_array_equal(caffe.io.datum_to_array(datum), u8)
    np.testing.assert_array_equal(caffe.io.datum_to_array(caffe.io.array_to_datum(arr)), arr)


def test_classifier_predicts_with_and_without_oversampling(model):
    clf = caffe.Classifier(model["proto"], model["weights"], image_dims=(10, 10),
                           mean=np.array([100.0, 110, 120]), raw_scale=255,
                           channel_swap=(2, 1, 0))
    ims = [caffe.io.load_image(model["image"])] * 3
    over = clf.predict(ims)
    center = clf.predict(ims, oversample=False)
    assert over.shape == center.shape == (3, 6)
    np.testing.assert_allclose(center.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(over[0], over[2], rtol=1e-6)


# -------------------------------------------------------------- cv2.dnn ----

BLOB_CASES = [
    dict(size=(6, 6)),
    dict(size=(10, 7), mean=(104, 117, 123.5), swapRB=True),
    dict(size=(6, 6), crop=True, scalefactor=0.017),
    dict(size=(5, 9), crop=True, swapRB=True, mean=(1, 2, 3)),
    dict(size=None, mean=127.5),            # a lone number: first channel only, as OpenCV
]


@pytest.mark.parametrize("kw", BLOB_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.uint8])
@pytest.mark.parametrize("shape", [(9, 13, 3), (13, 9, 3), (8, 8), (7, 11, 4)])
def test_blob_from_image_matches_opencv(kw, dtype, shape):
    cv2 = pytest.importorskip("cv2")
    image = (np.random.default_rng(5).random(shape) * 255).astype(dtype)
    args = {"scalefactor": 1.0, **kw}
    if args["size"] is None:
        args["size"] = (0, 0)
    expected = cv2.dnn.blobFromImage(image, **args)
    got = cv2dnn.blobFromImage(image, **args)
    assert got.shape == expected.shape and got.dtype == np.float32
    resized = tuple(args["size"]) not in ((0, 0), shape[1::-1])
    # uint8 images are resized by OpenCV in fixed point: allow 1 grey level.
    atol = args["scalefactor"] * (1.0001 if dtype == np.uint8 and resized else 1e-4)
    np.testing.assert_allclose(got, expected, atol=atol)


def test_blob_from_images_stacks():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(6)
    ims = [rng.random((9, 12, 3)).astype(np.float32), rng.random((20, 10, 3)).astype(np.float32)]
    expected = cv2.dnn.blobFromImages(ims, 2.0, (8, 8), (0.1, 0.2, 0.3), True, True)
    got = cv2dnn.blobFromImages(ims, 2.0, (8, 8), (0.1, 0.2, 0.3), True, True)
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_read_net_from_caffe_matches_opencv(model):
    cv2 = pytest.importorskip("cv2")
    ref = cv2.dnn.readNetFromCaffe(model["proto"], model["weights"])
    net = cv2dnn.readNetFromCaffe(model["proto"], model["weights"])
    net.setPreferableBackend(cv2dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2dnn.DNN_TARGET_CPU)
    assert net.getLayerNames() == list(ref.getLayerNames())
    assert net.getUnconnectedOutLayersNames() == list(ref.getUnconnectedOutLayersNames())
    assert list(net.getUnconnectedOutLayers()) == list(np.ravel(ref.getUnconnectedOutLayers()))
    x = np.random.default_rng(7).random((3, 3, 8, 8)).astype(np.float32)
    ref.setInput(x)
    net.setInput(x)
    np.testing.assert_allclose(net.forward(), ref.forward(), rtol=1e-4, atol=1e-6)
    names = ["pool1", "conv1", "prob", "relu1"]      # conv1 is its own (pre-ReLU) output
    for got, want in zip(net.forward(names), ref.forward(names), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.forward("fc"), ref.forward("fc"), rtol=1e-4, atol=1e-5)
    ref.setInput(x, "", 0.5, (0.1, 0.2, 0.3))
    net.setInput(x, "", 0.5, (0.1, 0.2, 0.3))
    np.testing.assert_allclose(net.forward("fc"), ref.forward("fc"), rtol=1e-4, atol=1e-5)


def test_cv2dnn_errors(model):
    from netdef.errors import InputError

    net = cv2dnn.readNetFromCaffe(model["proto"])
    with pytest.raises(InputError, match="no input 'img'"):
        net.setInput(np.zeros((1, 3, 8, 8)), "img")
    with pytest.raises(InputError, match="no layer 'fc8'"):
        net.forward("fc8")
    with pytest.raises(InputError, match="1, 3 or 4 channels"):
        cv2dnn.blobFromImage(np.zeros((4, 4, 2)))
