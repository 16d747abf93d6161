"""Mobile-net layers: depthwise convolution (Convolution with group == channels
and the fork types DepthwiseConvolution / ConvolutionDepthwise), ReLU6 and
ShuffleChannel, against tests/reference.py, finite differences and OpenCV DNN."""
from __future__ import annotations

import numpy as np
import pytest
from layer_harness import check_gradients, fill_params, infer_shapes, make_layer, run_layer, wired
from reference import (
    conv2d_backward_reference,
    conv2d_reference,
    depthwise_conv2d_reference,
    relu6_backward_reference,
    relu6_reference,
    shuffle_channel_reference,
)

from netdef.errors import GraphError, ShapeError

RTOL, ATOL = 1e-4, 1e-5


def layer(type_name: str, body: str, name="L", bottoms=("data",)):
    wiring = " ".join(f'bottom: "{b}"' for b in bottoms)
    wiring += " " + " ".join(f'top: "out{i}"' for i in range(len(bottoms)))
    return make_layer(f'layer {{ name: "{name}" type: "{type_name}" {wiring} {body} }}')


def conv_layer(type_name: str, body: str, **kw):
    return layer(type_name, f"convolution_param {{ {body} }}", **kw)


def rand(*shape, seed=1, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def geometry(lay):
    win = lay.win
    return (win.sh, win.sw), (win.ph, win.pw), (win.dh, win.dw)


# ------------------------------------------------------ depthwise forward ----
TYPES = ["Convolution", "DepthwiseConvolution", "ConvolutionDepthwise"]

# (convolution_param body without num_output/group, bottom shape, multiplier)
DW_CASES = [
    ("kernel_size: 3 pad: 1", (2, 4, 7, 6), 1),
    ("kernel_size: 3 pad: 1 stride: 2", (1, 5, 9, 8), 1),             # MobileNet's /2 layers
    ("kernel_size: 3", (1, 3, 6, 7), 2),                               # channel multiplier 2
    ("kernel_size: 5 pad: 2 stride: 3", (2, 2, 11, 9), 1),             # stride > 1, bigger kernel
    ("kernel_size: 3 pad: 2 dilation: 2", (1, 3, 8, 9), 1),
    ("kernel_h: 3 kernel_w: 1 pad_h: 1 stride_h: 2 stride_w: 1", (1, 4, 7, 5), 1),
    ("kernel_size: [2, 3] stride: [1, 2] pad: [0, 1] dilation: [2, 1]", (2, 3, 7, 8), 3),
    ("kernel_size: 3 pad: 4", (1, 2, 3, 3), 1),                        # rows entirely padding
    ("kernel_size: 3 pad: 1 bias_term: false", (1, 3, 5, 5), 1),
    ("kernel_size: 3 pad: 1", (2, 32, 40, 40), 1),                     # parallel kernel path
    # 3x3 with strides: the plane split by row and column phase, read flat
    ("kernel_size: 3 pad: 1 stride: 2", (1, 6, 14, 14), 2),            # even sizes (14 -> 7)
    ("kernel_size: 3 pad: 1 stride_h: 2 stride_w: 1", (1, 3, 9, 8), 1),
    ("kernel_size: 3 pad: 2 stride: 3", (1, 3, 10, 11), 1),
    ("kernel_size: 3 stride: 2", (1, 2, 8, 9), 1),
    ("kernel_size: 3 pad: 1 stride: 2", (2, 32, 45, 46), 1),           # parallel, stride 2
]


def dw_layer(type_name, body, channels, mult):
    group = "" if type_name != "Convolution" else f"group: {channels}"
    num = f"num_output: {channels * mult}"
    if type_name == "ConvolutionDepthwise" and mult == 1:
        num = ""                 # the fork's default: one output per input channel
    return conv_layer(type_name, f"{num} {group} {body}")


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("body,shape,mult", DW_CASES)
def test_depthwise_matches_reference(type_name, body, shape, mult):
    lay = dw_layer(type_name, body, shape[1], mult)
    infer_shapes(lay, [shape])
    assert lay.blobs[0].shape[:2] == (shape[1] * mult, 1)
    assert lay.depthwise
    params = fill_params(lay, seed=2)
    x = rand(*shape)
    (y,) = run_layer(lay, [x])
    bias = params[1] if len(params) > 1 else None
    stride, pad, dil = geometry(lay)
    expected = depthwise_conv2d_reference(x, params[0], bias, stride, pad, dil)
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=ATOL)
    # the grouped-convolution reference agrees, and so does the MAC count
    np.testing.assert_allclose(y, conv2d_reference(x, params[0], bias, stride, pad, dil,
                                                   shape[1]), rtol=RTOL, atol=ATOL)
    kh, kw = lay.win.kh, lay.win.kw
    assert lay.macs(*wired(lay)) == y.size * kh * kw


# Stride-1 3x3 pad-1 planes from _DIRECT_MIN_WIDTH columns are read in place
# (one and two rows: the padding rows above and below are the same row of zeros);
# narrower ones go through the padded copy. Both apply the fused ReLU.
@pytest.mark.parametrize("shape,mult", [((1, 3, 1, 21), 1), ((1, 2, 2, 24), 1),
                                        ((2, 3, 5, 20), 2), ((1, 2, 30, 19), 1),
                                        ((1, 4, 23, 33), 1)])
@pytest.mark.parametrize("relu,slope", [(0, 0.0), (1, 0.0), (1, 0.25)])
def test_depthwise_kernel_in_place_and_padded_paths(shape, mult, relu, slope):
    from netdef.kernels.depthwise import depthwise_forward

    x = rand(*shape, seed=5)
    m = shape[1] * mult
    w = rand(m, 3, 3, seed=6)
    bias = rand(m, seed=7)
    y = np.full((shape[0], m) + shape[2:], np.nan, np.float32)
    depthwise_forward(x, w, bias, 3, 3, 1, 1, 1, 1, 1, 1, relu, slope, y)
    expected = depthwise_conv2d_reference(x, w.reshape(m, 1, 3, 3), bias, 1, 1)
    if relu:
        expected = np.maximum(expected, 0) + slope * np.minimum(expected, 0)
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=ATOL)


def test_fork_types_default_group_and_outputs_to_the_channels():
    lay = conv_layer("ConvolutionDepthwise", "kernel_size: 3 pad: 1")
    assert infer_shapes(lay, [(1, 6, 5, 5)]) == [(1, 6, 5, 5)]
    assert lay.group == 6 and lay.type == "ConvolutionDepthwise"
    assert [b.shape for b in lay.blobs] == [(6, 1, 3, 3), (6,)]
    lay = conv_layer("DepthwiseConvolution", "num_output: 12 group: 6 kernel_size: 3")
    assert infer_shapes(lay, [(2, 6, 5, 5)]) == [(2, 12, 3, 3)]
    assert lay.type == "DepthwiseConvolution"


def test_fork_type_with_a_smaller_group_is_a_grouped_convolution():
    lay = conv_layer("DepthwiseConvolution", "num_output: 4 group: 2 kernel_size: 3 pad: 1")
    infer_shapes(lay, [(1, 4, 5, 5)])
    assert not lay.depthwise and lay.blobs[0].shape == (4, 2, 3, 3)
    w, b = fill_params(lay)
    x = rand(1, 4, 5, 5)
    (y,) = run_layer(lay, [x])
    np.testing.assert_allclose(y, conv2d_reference(x, w, b, 1, 1, 1, 2), rtol=RTOL, atol=ATOL)


def test_several_bottoms_and_channel_axis():
    lay = conv_layer("DepthwiseConvolution", "kernel_size: 3 pad: 1", bottoms=("a", "b"))
    infer_shapes(lay, [(1, 3, 4, 4)] * 2)
    w, b = fill_params(lay)
    xa, xb = rand(1, 3, 4, 4, seed=3), rand(1, 3, 4, 4, seed=4)
    ya, yb = run_layer(lay, [xa, xb])
    np.testing.assert_allclose(ya, depthwise_conv2d_reference(xa, w, b, 1, 1), rtol=RTOL,
                               atol=ATOL)
    np.testing.assert_allclose(yb, depthwise_conv2d_reference(xb, w, b, 1, 1), rtol=RTOL,
                               atol=ATOL)
    lay = conv_layer("ConvolutionDepthwise", "kernel_size: 3 axis: 2")
    infer_shapes(lay, [(2, 2, 3, 5, 5)])
    w, b = fill_params(lay)
    x = rand(2, 2, 3, 5, 5)
    (y,) = run_layer(lay, [x])
    expected = depthwise_conv2d_reference(x.reshape(4, 3, 5, 5), w, b).reshape(2, 2, 3, 3, 3)
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------- depthwise backward ----
GRAD_CASES = [
    ("kernel_size: 3 pad: 1", (2, 3, 5, 4), 1),
    ("kernel_size: 3 pad: 1 stride: 2", (1, 2, 6, 7), 2),
    ("kernel_size: 2 dilation: 2 stride: 3 pad: 1", (1, 3, 7, 6), 1),
    ("kernel_h: 1 kernel_w: 3 pad_w: 1 bias_term: false", (2, 2, 3, 4), 1),
]


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("body,shape,mult", GRAD_CASES)
def test_depthwise_gradients(type_name, body, shape, mult):
    lay = dw_layer(type_name, body, shape[1], mult)
    infer_shapes(lay, [shape])
    fill_params(lay, seed=5)
    assert check_gradients(lay, [rand(*shape, seed=6)], check_params=True) > 0


@pytest.mark.parametrize("body,shape,mult", GRAD_CASES + [DW_CASES[-1]])
def test_depthwise_backward_matches_reference(body, shape, mult):
    lay = dw_layer("DepthwiseConvolution", body, shape[1], mult)
    infer_shapes(lay, [shape])
    params = fill_params(lay, seed=7)
    x = rand(*shape, seed=8)
    (y,) = run_layer(lay, [x])
    dy = rand(*y.shape, seed=9)
    bottoms, tops = wired(lay)
    tops[0].diff[...] = dy
    for blob in lay.blobs:
        blob.diff[...] = 1.0                   # parameter gradients accumulate
    lay.backward(tops, [True], bottoms)
    stride, pad, dil = geometry(lay)
    dx, dw, db = conv2d_backward_reference(x, params[0], dy, stride, pad, dil, shape[1])
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(lay.blobs[0].diff, dw + 1.0, rtol=RTOL, atol=1e-4)
    if lay.bias_term:
        np.testing.assert_allclose(lay.blobs[1].diff, db + 1.0, rtol=RTOL, atol=1e-4)


def test_depthwise_propagate_down_and_frozen_weights():
    lay = conv_layer("DepthwiseConvolution", "kernel_size: 3 pad: 1")
    infer_shapes(lay, [(1, 2, 4, 4)])
    fill_params(lay)
    run_layer(lay, [rand(1, 2, 4, 4)])
    bottoms, tops = wired(lay)
    tops[0].diff[...] = 1.0
    bottoms[0].diff[...] = 7.0
    lay.param_propagate_down = [False, True]
    lay.blobs[0].diff[...] = 0.0
    lay.blobs[1].diff[...] = 0.0
    lay.backward(tops, [False], bottoms)
    assert np.all(bottoms[0].diff == 7.0)          # not asked for: untouched
    assert np.all(lay.blobs[0].diff == 0.0)        # frozen
    assert np.all(lay.blobs[1].diff == 16.0)       # 4x4 positions of ones


# -------------------------------------------------------------- bad input ----
def test_group_that_does_not_divide_the_channels_names_layer_and_shapes():
    lay = conv_layer("DepthwiseConvolution", "num_output: 8 group: 3 kernel_size: 3",
                     name="conv2_1/dw", bottoms=("conv1",))
    with pytest.raises(GraphError) as err:
        infer_shapes(lay, [(1, 8, 10, 10)])
    text = str(err.value)
    for fragment in ("conv2_1/dw", "DepthwiseConvolution", "8 channels are not divisible by "
                     "group 3", "'conv1' (1, 8, 10, 10)"):
        assert fragment in text


def test_num_output_not_a_multiple_and_channel_mismatch():
    lay = conv_layer("ConvolutionDepthwise", "num_output: 5 kernel_size: 3", name="dw")
    with pytest.raises(GraphError, match="num_output 5 is not a multiple of group 4"):
        infer_shapes(lay, [(1, 4, 6, 6)])
    lay = conv_layer("ConvolutionDepthwise", "kernel_size: 3", name="dw")
    infer_shapes(lay, [(1, 4, 6, 6)])
    with pytest.raises(ShapeError, match="weights expect 4"):
        infer_shapes(lay, [(1, 5, 6, 6)])
    lay = conv_layer("DepthwiseConvolution", "kernel_size: 7", name="dw")
    with pytest.raises(ShapeError, match="do not fit"):
        infer_shapes(lay, [(1, 2, 3, 3)])


# ------------------------------------------------------------------ ReLU6 ----
def test_relu6_forward_and_kinks():
    lay = layer("ReLU6", "")
    x = np.array([[-3.0, -0.0, 0.0, 1e-6, 2.5, 5.999, 6.0, 6.5, 100.0]], np.float32)
    (y,) = run_layer(lay, [x])
    np.testing.assert_array_equal(y, relu6_reference(x).astype(np.float32))
    bottoms, tops = wired(lay)
    tops[0].diff[...] = 2.0
    lay.backward(tops, [True], bottoms)
    # the kink at 0 takes the slope (0 here); at 6 and above nothing passes
    np.testing.assert_array_equal(bottoms[0].diff[0], [0, 0, 0, 2, 2, 2, 0, 0, 0])


@pytest.mark.parametrize("slope", [0.0, 0.2, -0.3])
@pytest.mark.parametrize("in_place", [False, True])
def test_relu6_matches_reference(slope, in_place):
    lay = layer("ReLU6", f"relu6_param {{ negative_slope: {slope} }}")
    x = rand(2, 3, 4, 5, seed=11, scale=5.0)
    (y,) = run_layer(lay, [x], in_place=in_place)
    np.testing.assert_allclose(y, relu6_reference(x, slope), rtol=1e-6, atol=1e-6)
    bottoms, tops = wired(lay)
    dy = rand(*x.shape, seed=12)
    tops[0].diff[...] = dy
    lay.backward(tops, [True], bottoms)
    np.testing.assert_allclose(bottoms[0].diff, relu6_backward_reference(x, dy, slope),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu6_gradients(slope):
    lay = layer("ReLU6", f"relu6_param {{ negative_slope: {slope} }}")
    x = rand(2, 3, 4, 4, seed=13, scale=4.0) + 3.0     # values on both sides of 0 and 6
    # skip points within the step of the kinks at 0 and 6
    x[np.abs(x) < 0.05] = 0.5
    x[np.abs(x - 6) < 0.05] = 5.0
    assert check_gradients(lay, [x]) > 0


# --------------------------------------------------------- ShuffleChannel ----
@pytest.mark.parametrize("group,shape", [(2, (2, 4, 3, 3)), (3, (1, 6, 2, 5)), (4, (2, 8, 1)),
                                         (1, (1, 3, 2, 2)), (5, (1, 5, 2, 2))])
def test_shuffle_channel_matches_reference(group, shape):
    lay = layer("ShuffleChannel", f"shuffle_channel_param {{ group: {group} }}")
    x = rand(*shape, seed=14)
    (y,) = run_layer(lay, [x])
    np.testing.assert_array_equal(y, shuffle_channel_reference(x, group))
    bottoms, tops = wired(lay)
    dy = rand(*shape, seed=15)
    tops[0].diff[...] = dy
    lay.backward(tops, [True], bottoms)
    # the gradient of a permutation is the inverse permutation of the top diff
    np.testing.assert_array_equal(shuffle_channel_reference(bottoms[0].diff, group), dy)
    assert check_gradients(layer("ShuffleChannel", f"shuffle_channel_param {{ group: {group} }}"),
                           [x]) > 0


def test_shuffle_channel_in_place_and_default_group():
    lay = layer("ShuffleChannel", "shuffle_channel_param { group: 2 }")
    x = rand(1, 6, 2, 2, seed=16)
    (y,) = run_layer(lay, [x], in_place=True)
    np.testing.assert_array_equal(y, shuffle_channel_reference(x, 2))
    bottoms, tops = wired(lay)
    assert bottoms[0] is tops[0]
    dy = rand(1, 6, 2, 2, seed=17)
    tops[0].diff[...] = dy
    lay.backward(tops, [True], bottoms)
    np.testing.assert_array_equal(shuffle_channel_reference(bottoms[0].diff, 2), dy)
    (y,) = run_layer(layer("ShuffleChannel", ""), [x])
    np.testing.assert_array_equal(y, x)


def test_shuffle_channel_errors_name_the_layer():
    lay = layer("ShuffleChannel", "shuffle_channel_param { group: 4 }", name="shuffle3")
    with pytest.raises(ShapeError) as err:
        infer_shapes(lay, [(1, 6, 3, 3)])
    assert "shuffle3" in str(err.value) and "6 channels are not divisible by group 4" in str(
        err.value) and "(1, 6, 3, 3)" in str(err.value)
    with pytest.raises(GraphError, match="group must be positive"):
        infer_shapes(layer("ShuffleChannel", "shuffle_channel_param { group: 0 }"),
                     [(1, 2, 2, 2)])
    with pytest.raises(ShapeError, match="channel axis"):
        infer_shapes(layer("ShuffleChannel", ""), [(4,)])


# ----------------------------------------------------------------- kernels ----
def test_mobile_kernels_compile_one_signature():
    from netdef.kernels import compiled_signatures

    sigs = compiled_signatures()
    for name in ("depthwise.depthwise_forward", "depthwise.depthwise_backward_data",
                 "depthwise.depthwise_backward_weights", "elementwise.relu6",
                 "elementwise.relu6_backward"):
        assert len(sigs.get(name, [None])) == 1, (name, sigs.get(name))


# ---------------------------------------------------- nets: fusion, OpenCV ----
NET = """name: "mobile"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: {n} dim: 8 dim: 11 dim: 10 }} }} }}
layer {{ name: "dw1" type: "{dw}" bottom: "data" top: "dw1"
        convolution_param {{ num_output: 8 {group} kernel_size: 3 pad: 1 stride: 2
                             bias_term: false }} }}
layer {{ name: "dw1/bn" type: "BatchNorm" bottom: "dw1" top: "dw1"
        batch_norm_param {{ use_global_stats: true }} }}
layer {{ name: "dw1/scale" type: "Scale" bottom: "dw1" top: "dw1"
        scale_param {{ bias_term: true }} }}
layer {{ name: "relu1" type: "{relu}" bottom: "dw1" top: "dw1" }}
layer {{ name: "sep1" type: "Convolution" bottom: "dw1" top: "sep1"
        convolution_param {{ num_output: 8 kernel_size: 1 }} }}
layer {{ name: "shuffle" type: "ShuffleChannel" bottom: "sep1" top: "shuffle"
        shuffle_channel_param {{ group: 2 }} }}
layer {{ name: "dw2" type: "{dw}" bottom: "shuffle" top: "dw2"
        convolution_param {{ num_output: 16 {group} kernel_size: 3 dilation: 2 pad: 2 }} }}
"""


def write_net(tmp_path, name, dw, relu="ReLU6", n=2):
    group = "group: 8" if dw == "Convolution" else ""
    path = tmp_path / name
    path.write_text(NET.format(dw=dw, group=group, relu=relu, n=n))
    return str(path)


@pytest.mark.parametrize("dw", ["DepthwiseConvolution", "ConvolutionDepthwise"])
def test_fork_nets_fuse_and_agree_with_plain_convolution(tmp_path, dw):
    from netdef.net import Net
    from netdef.testing import randomize_weights

    plain = Net(write_net(tmp_path, "plain.prototxt", "Convolution"), optimize=False)
    randomize_weights(plain, seed=3)
    weights = str(tmp_path / "w.caffemodel")
    plain.save(weights)
    x = rand(2, 8, 11, 10, seed=21, scale=3.0)
    expected = plain.forward(data=x)["dw2"].copy()
    fork = write_net(tmp_path, "fork.prototxt", dw)
    for optimize in (False, True):
        net = Net(fork, optimize=optimize)
        net.copy_from(weights)
        np.testing.assert_allclose(net.forward(data=x)["dw2"], expected, rtol=1e-5, atol=1e-5)
    assert any("folded 2 BatchNorm/Scale" in line for line in net.plan_log)


@pytest.mark.parametrize("dw", ["Convolution", "ConvolutionDepthwise"])
def test_mobile_layers_agree_with_opencv(tmp_path, dw):
    """Depthwise convolution (stride, dilation, multiplier 2), ReLU6 and
    ShuffleChannel against OpenCV DNN 4.x on random weights. OpenCV knows
    ConvolutionDepthwise but not the DepthwiseConvolution spelling."""
    cv2 = pytest.importorskip("cv2")
    from netdef.net import Net
    from netdef.testing import randomize_weights

    proto = write_net(tmp_path, "net.prototxt", dw, n=1)
    x = rand(1, 8, 11, 10, seed=22, scale=3.0)
    for optimize in (False, True):
        net = Net(proto, optimize=optimize, keep=["dw1", "shuffle"])
        randomize_weights(net, seed=4)
        weights = str(tmp_path / "w.caffemodel")
        net.save(weights)
        ours = net.forward(blobs=["dw1", "shuffle", "dw2"], data=x)
        peer = cv2.dnn.readNetFromCaffe(proto, weights)
        peer.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        peer.setInput(x)
        for name, theirs in zip(["relu1", "shuffle", "dw2"],
                                peer.forward(["relu1", "shuffle", "dw2"])):
            got = ours["dw1" if name == "relu1" else name]
            assert got.shape == theirs.shape, name
            err = np.max(np.abs(got - theirs)) / max(np.max(np.abs(theirs)), 1e-12)
            assert err <= 1e-4, (name, err)


# ------------------------------------- 1x1 expansion + depthwise, one step ----
def _act(x, relu, slope):
    return np.maximum(x, 0) + slope * np.minimum(x, 0) if relu else x


# (N, C, E, H, W, stride, band): a last band narrower than the others, planes
# read in place (from 20 columns) and through the padded copy, parallel calls
@pytest.mark.parametrize("n,c,e,h,w,stride,band", [
    (2, 3, 12, 9, 10, 1, 8),
    (1, 4, 16, 14, 14, 2, 8),
    (1, 2, 24, 21, 23, 1, 16),
    (2, 2, 8, 7, 7, 2, 8),
    (1, 3, 40, 28, 28, 2, 16),
    (2, 8, 64, 24, 24, 1, 8),
])
@pytest.mark.parametrize("acts", [((0, 0.0), (0, 0.0)), ((1, 0.0), (1, 0.0)),
                                  ((1, 0.25), (0, 0.0)), ((0, 0.0), (1, 0.1))])
def test_pointwise_depthwise_kernel_matches_the_two_layers(n, c, e, h, w, stride, band, acts):
    from netdef.kernels import gemm

    if not gemm.available():
        pytest.skip("pointwise_depthwise calls numpy's OpenBLAS, which cannot be called here")
    from netdef.kernels.depthwise import pointwise_depthwise

    (relu1, slope1), (relu2, slope2) = acts
    x = rand(n, c, h, w, seed=31)
    we, be = rand(e, c, 1, 1, seed=32), rand(e, seed=33)
    wd, bd = rand(e, 1, 3, 3, seed=34), rand(e, seed=35)
    hidden = _act(conv2d_reference(x, we, be, 1, 0), relu1, slope1)
    expected = _act(depthwise_conv2d_reference(hidden, wd, bd, stride, 1), relu2, slope2)
    y = np.full(expected.shape, np.nan, np.float32)
    pointwise_depthwise(x, we.reshape(e, c), be, relu1, np.float32(slope1), wd.reshape(e, 3, 3),
                        bd, 3, 3, 1, 1, stride, stride, 1, 1, relu2, np.float32(slope2), band, y)
    np.testing.assert_allclose(y, expected, rtol=RTOL, atol=1e-4)


EXPAND_NET = """name: "expand"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: 2 dim: 4 dim: {size} dim: {size} }} }} }}
layer {{ name: "expand" type: "Convolution" bottom: "data" top: "expand"
        convolution_param {{ num_output: 16 kernel_size: 1 bias_term: false }} }}
layer {{ name: "expand/bn" type: "BatchNorm" bottom: "expand" top: "expand"
        batch_norm_param {{ use_global_stats: true }} }}
layer {{ name: "expand/scale" type: "Scale" bottom: "expand" top: "expand"
        scale_param {{ bias_term: true }} }}
layer {{ name: "expand/relu" type: "ReLU" bottom: "expand" top: "expand" }}
layer {{ name: "dwise" type: "Convolution" bottom: "expand" top: "dwise"
        convolution_param {{ num_output: 16 group: 16 kernel_size: 3 pad: 1 stride: {stride}
                             bias_term: false }} }}
layer {{ name: "dwise/bn" type: "BatchNorm" bottom: "dwise" top: "dwise"
        batch_norm_param {{ use_global_stats: true }} }}
layer {{ name: "dwise/scale" type: "Scale" bottom: "dwise" top: "dwise"
        scale_param {{ bias_term: true }} }}
layer {{ name: "dwise/relu" type: "ReLU" bottom: "dwise" top: "dwise" }}
layer {{ name: "linear" type: "Convolution" bottom: "dwise" top: "linear"
        convolution_param {{ num_output: 4 kernel_size: 1 }} }}
{extra}"""

_PAIRED = "1 1x1 convolutions run with the depthwise one after them"


@pytest.mark.parametrize("size,stride,extra,keep,paired", [
    (12, 1, "", [], True),
    (28, 2, "", [], True),
    (14, 2, "", [], False),         # strided on a small plane: two steps measured faster
    (12, 1, "", ["expand"], False),  # the caller reads the 1x1's output
    # a second reader of the 1x1's output
    (12, 1, 'layer { name: "other" type: "Convolution" bottom: "expand" top: "other" '
            'convolution_param { num_output: 2 kernel_size: 1 } }', [], False),
])
def test_expansion_and_depthwise_run_as_one_step(tmp_path, size, stride, extra, keep, paired):
    """MobileNet v2's expand + dwise pair (each with BatchNorm, Scale, ReLU)
    runs as one step where it is the 1x1's only reader and nobody asks for
    the 1x1's output; the results equal the unfused net's either way."""
    from netdef.kernels import gemm
    from netdef.kernels import compiled_signatures
    from netdef.net import Net
    from netdef.testing import randomize_weights

    path = tmp_path / "net.prototxt"
    path.write_text(EXPAND_NET.format(size=size, stride=stride, extra=extra))
    plain = Net(str(path), optimize=False)
    randomize_weights(plain, seed=8)
    weights = str(tmp_path / "w.caffemodel")
    plain.save(weights)
    x = rand(2, 4, size, size, seed=23)
    outputs = ["linear"] + (["other"] if extra else []) + keep
    expected = {k: v.copy() for k, v in plain.forward(blobs=outputs, data=x).items()}
    net = Net(str(path), weights=weights, optimize=True, keep=keep)
    got = net.forward(blobs=outputs, data=x)
    for name in outputs:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-4)
    log = " ".join(net.plan_log)
    assert (_PAIRED in log) == (paired and gemm.available()), log
    if paired and gemm.available():
        assert len(compiled_signatures()["depthwise.pointwise_depthwise"]) == 1
