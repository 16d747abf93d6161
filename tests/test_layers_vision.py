"""Convolution, Deconvolution, Im2col, Pooling and LRN against tests/reference.py."""
from __future__ import annotations

import os

import numpy as np
import pytest
from layer_harness import (
    check_gradients,
    fill_params,
    infer_shapes,
    make_layer,
    run_layer,
    wired,
)
from reference import (
    conv2d_backward_reference,
    conv2d_reference,
    conv_out,
    deconv2d_reference,
    im2col_reference,
    lrn_reference,
    pool_backward_reference,
    pool_out,
    pool_reference,
)

from netdef.errors import GraphError, ShapeError
from netdef.frontend.schema import pb
from netdef.layers import vision

RTOL, ATOL = 1e-4, 1e-5


def layer(type_name: str, body: str = "", bottoms=("data",), tops=None, name="L", phase="TEST"):
    tops = tops if tops is not None else [f"out{i}" for i in range(len(bottoms))]
    wiring = " ".join(f'bottom: "{b}"' for b in bottoms) + " " + " ".join(
        f'top: "{t}"' for t in tops)
    return make_layer(f'layer {{ name: "{name}" type: "{type_name}" {wiring} {body} }}', phase)


def conv(body: str, **kw):
    return layer("Convolution", f"convolution_param {{ {body} }}", **kw)


def rand(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def assert_message(err, *fragments):
    text = str(err.value)
    for f in fragments:
        assert f in text, f"{f!r} not in {text!r}"


# ------------------------------------------------------------ convolution ----
CONV_CASES = [
    # (convolution_param body, bottom shape, (kernel, stride, pad, dilation, group))
    ("num_output: 4 kernel_size: 3", (2, 3, 7, 7), (3, 1, 0, 1, 1)),
    ("num_output: 4 kernel_size: 3 stride: 2 pad: 1", (1, 3, 9, 8), (3, 2, 1, 1, 1)),
    ("num_output: 5 kernel_size: 2 stride: 3", (2, 2, 7, 5), (2, 3, 0, 1, 1)),    # stride > kernel
    ("num_output: 3 kernel_size: 3 dilation: 2 pad: 2", (1, 2, 8, 9), (3, 1, 2, 2, 1)),
    ("num_output: 6 kernel_size: 3 group: 2 pad: 1", (2, 4, 6, 5), (3, 1, 1, 1, 2)),
    ("num_output: 6 kernel_size: 1 group: 3", (2, 6, 5, 4), (1, 1, 0, 1, 3)),     # 1x1 grouped
    ("num_output: 4 kernel_size: 1", (3, 5, 4, 3), (1, 1, 0, 1, 1)),               # 1x1: no im2col
    ("num_output: 2 kernel_size: 1 stride: 2", (1, 3, 7, 7), (1, 2, 0, 1, 1)),     # 1x1 strided
    ("num_output: 3 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1",
     (1, 2, 7, 6), ((3, 1), (2, 1), (1, 0), 1, 1)),
    ("num_output: 3 kernel_size: [2, 3] stride: [1, 2] pad: [0, 1] dilation: [2, 1]",
     (2, 2, 6, 7), ((2, 3), (1, 2), (0, 1), (2, 1), 1)),
    ("num_output: 2 kernel_size: 5 pad: 2 bias_term: false", (1, 1, 5, 5), (5, 1, 2, 1, 1)),
]


def _hw(v):
    return v if isinstance(v, tuple) else (v, v)


@pytest.mark.parametrize("body,shape,geo", CONV_CASES)
def test_convolution_matches_reference(body, shape, geo):
    kernel, stride, pad, dilation, group = geo
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_hw, (kernel, stride, pad, dilation))
    lay = conv(body)
    n_out = int(body.split("num_output: ")[1].split()[0])
    expect = (shape[0], n_out, conv_out(shape[2], kh, sh, ph, dh), conv_out(shape[3], kw, sw, pw, dw))
    assert infer_shapes(lay, [shape]) == [expect]
    blobs = fill_params(lay, seed=3)
    assert blobs[0].shape == (n_out, shape[1] // group, kh, kw)
    bias = blobs[1] if len(blobs) > 1 else None
    x = rand(*shape)
    (y,) = run_layer(lay, [x])
    ref = conv2d_reference(x, blobs[0], bias, (sh, sw), (ph, pw), (dh, dw), group)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
    assert lay.macs(*wired(lay)) == int(np.prod(expect)) * shape[1] // group * kh * kw


def test_convolution_params_fillers_and_counts():
    lay = conv("num_output: 8 kernel_size: 3 group: 2 "
               "weight_filler { type: 'xavier' } bias_filler { type: 'constant' value: 0.2 }")
    infer_shapes(lay, [(1, 4, 10, 10)])
    assert [b.shape for b in lay.blobs] == [(8, 2, 3, 3), (8,)]
    assert lay.learnable == [True, True]
    assert lay.num_params == 8 * 2 * 9 + 8 == lay.num_stored
    assert lay.fillers[0].type == "xavier"
    assert (lay.fillers[1].type, lay.fillers[1].value) == ("constant", pytest.approx(0.2))
    plain = conv("num_output: 2 kernel_size: 1")
    infer_shapes(plain, [(1, 3, 4, 4)])
    # Caffe's unset filler: constant 0
    assert [(f.type, f.value) for f in plain.fillers] == [("constant", 0.0)] * 2


def test_convolution_several_bottoms_share_weights():
    lay = conv("num_output: 3 kernel_size: 3 pad: 1", bottoms=("a", "b"), tops=("ya", "yb"))
    assert infer_shapes(lay, [(1, 2, 5, 5), (1, 2, 5, 5)]) == [(1, 3, 5, 5)] * 2
    w, b = fill_params(lay)
    xa, xb = rand(1, 2, 5, 5, seed=1), rand(1, 2, 5, 5, seed=2)
    ya, yb = run_layer(lay, [xa, xb])
    np.testing.assert_allclose(ya, conv2d_reference(xa, w, b, pad=1), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(yb, conv2d_reference(xb, w, b, pad=1), rtol=RTOL, atol=ATOL)
    assert lay.macs(*wired(lay)) == 2 * 3 * 25 * 2 * 9


def test_convolution_channel_axis_two():
    lay = conv("num_output: 2 kernel_size: 3 axis: 2")
    assert infer_shapes(lay, [(2, 3, 4, 6, 5)]) == [(2, 3, 2, 4, 3)]
    w, b = fill_params(lay)
    x = rand(2, 3, 4, 6, 5)
    (y,) = run_layer(lay, [x])
    ref = conv2d_reference(x.reshape(6, 4, 6, 5), w, b).reshape(2, 3, 2, 4, 3)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_convolution_reshape_to_new_size_reuses_layer():
    lay = conv("num_output: 2 kernel_size: 3 stride: 2")
    assert infer_shapes(lay, [(1, 2, 9, 9)]) == [(1, 2, 4, 4)]
    w, b = fill_params(lay)
    x = rand(3, 2, 13, 11)
    (y,) = run_layer(lay, [x])
    np.testing.assert_allclose(y, conv2d_reference(x, w, b, stride=2), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("body,fragments", [
    ("num_output: 4", ["no kernel size"]),
    ("kernel_size: 3", ["num_output must be set"]),
    ("num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3", ["not both"]),
    ("num_output: 4 kernel_h: 3", ["kernel_h and kernel_w must be given together"]),
    ("num_output: 4 kernel_size: [3, 3, 3]", ["kernel_size has 3 values"]),
    ("num_output: 4 kernel_size: 3 stride: 0", ["stride must be positive"]),
    ("num_output: 4 kernel_size: 0", ["kernel size must be positive"]),
    ("num_output: 4 kernel_size: 3 group: 0", ["group must be positive"]),
    ("num_output: 5 kernel_size: 3 group: 2", ["num_output 5 is not divisible by group 2"]),
])
def test_convolution_config_errors(body, fragments):
    lay = conv(body, name="conv2")
    with pytest.raises(GraphError) as err:
        infer_shapes(lay, [(1, 4, 8, 8)])
    assert_message(err, "layer 'conv2' (Convolution)", *fragments)


def test_convolution_group_error_names_channels():
    lay = conv("num_output: 10 kernel_size: 5 group: 5", name="conv2", bottoms=("norm1",))
    with pytest.raises(GraphError) as err:
        infer_shapes(lay, [(10, 96, 27, 27)])
    assert_message(err, "layer 'conv2' (Convolution): 96 input channels are not divisible "
                        "by group 5", "'norm1' (10, 96, 27, 27)")


def test_convolution_kernel_larger_than_input_is_shape_error():
    lay = conv("num_output: 4 kernel_size: 7 pad: 1", name="conv9", bottoms=("pool5",))
    with pytest.raises(ShapeError) as err:
        infer_shapes(lay, [(1, 3, 4, 4)])
    assert_message(err, "layer 'conv9' (Convolution)", "'pool5' (1, 3, 4, 4)", "7x7", "4x4")


def test_convolution_shape_errors_after_setup_and_between_bottoms():
    lay = conv("num_output: 4 kernel_size: 1", name="c")
    infer_shapes(lay, [(1, 3, 4, 4)])
    with pytest.raises(ShapeError) as err:
        infer_shapes(lay, [(1, 5, 4, 4)])
    assert_message(err, "has 5 channels but the weights expect 3", "'data' (1, 5, 4, 4)")
    two = conv("num_output: 4 kernel_size: 1", bottoms=("a", "b"))
    with pytest.raises(ShapeError) as err:
        infer_shapes(two, [(1, 3, 4, 4), (1, 3, 5, 4)])
    assert_message(err, "same shape", "'a' (1, 3, 4, 4)", "'b' (1, 3, 5, 4)")


def test_convolution_unsupported_rank_and_top_count():
    with pytest.raises(GraphError) as err:
        infer_shapes(conv("num_output: 2 kernel_size: 3"), [(1, 2, 4, 4, 4)])
    assert_message(err, "only 2-D convolution", "(1, 2, 4, 4, 4)")
    with pytest.raises(GraphError) as err:
        infer_shapes(conv("num_output: 2 kernel_size: 1", tops=("a", "b")), [(1, 2, 4, 4)])
    assert_message(err, "one top per bottom")


# ---------------------------------------------------------- deconvolution ----
DECONV_CASES = [
    ("num_output: 3 kernel_size: 4 stride: 2 pad: 1", (2, 2, 4, 5), (4, 2, 1, 1, 1)),
    ("num_output: 4 kernel_size: 3", (1, 3, 3, 4), (3, 1, 0, 1, 1)),
    ("num_output: 6 kernel_size: 3 stride: 2 group: 2", (1, 4, 3, 3), (3, 2, 0, 1, 2)),
    ("num_output: 2 kernel_size: 3 dilation: 2 pad: 1", (1, 2, 4, 3), (3, 1, 1, 2, 1)),
    ("num_output: 5 kernel_size: 1", (2, 3, 3, 4), (1, 1, 0, 1, 1)),
    ("num_output: 2 kernel_size: 2 stride: 3 bias_term: false", (1, 2, 3, 3), (2, 3, 0, 1, 1)),
]


@pytest.mark.parametrize("body,shape,geo", DECONV_CASES)
def test_deconvolution_matches_reference(body, shape, geo):
    k, s, p, d, g = geo
    lay = layer("Deconvolution", f"convolution_param {{ {body} }}")
    n_out = int(body.split("num_output: ")[1].split()[0])
    size = [s * (v - 1) + d * (k - 1) + 1 - 2 * p for v in shape[2:]]
    assert infer_shapes(lay, [shape]) == [(shape[0], n_out, *size)]
    blobs = fill_params(lay, seed=5)
    assert blobs[0].shape == (shape[1], n_out // g, k, k)
    x = rand(*shape)
    (y,) = run_layer(lay, [x])
    ref = deconv2d_reference(x, blobs[0], blobs[1] if len(blobs) > 1 else None, s, p, d, g)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
    assert lay.macs(*wired(lay)) == int(np.prod(shape)) * n_out // g * k * k


def test_deconvolution_negative_output_is_shape_error():
    lay = layer("Deconvolution", "convolution_param { num_output: 2 kernel_size: 1 pad: 3 }",
                name="up")
    with pytest.raises(ShapeError) as err:
        infer_shapes(lay, [(1, 2, 2, 2)])
    assert_message(err, "layer 'up' (Deconvolution)", "'data' (1, 2, 2, 2)")


def test_im2col_layer():
    lay = layer("Im2col", "convolution_param { kernel_size: 3 stride: 2 pad: 1 dilation: 1 }")
    assert infer_shapes(lay, [(2, 3, 6, 5)]) == [(2, 27, 3, 3)]
    x = rand(2, 3, 6, 5)
    (y,) = run_layer(lay, [x])
    for n in range(2):
        ref = im2col_reference(x[n], 3, 2, 1).reshape(27, 3, 3)
        np.testing.assert_array_equal(y[n], ref.astype(np.float32))
    assert lay.blobs == [] and lay.macs(*wired(lay)) == 0


# ---------------------------------------------------------------- pooling ----
def pool(body: str, **kw):
    return layer("Pooling", f"pooling_param {{ {body} }}", **kw)


POOL_SHAPES = [
    # (pooling_param body, (H, W), kernel, stride, pad, ceil)
    ("kernel_size: 3 stride: 2", (55, 55), 3, 2, 0, True),
    ("kernel_size: 3 stride: 2", (112, 112), 3, 2, 0, True),        # ceil adds a window
    ("kernel_size: 3 stride: 2 round_mode: FLOOR", (112, 112), 3, 2, 0, False),
    ("kernel_size: 2 stride: 2 pad: 1", (5, 5), 2, 2, 1, True),     # last window clipped
    ("kernel_size: 3 stride: 1 pad: 1", (7, 6), 3, 1, 1, True),
    ("kernel_size: 2 stride: 3", (8, 7), 2, 3, 0, True),            # stride > kernel
    ("kernel_size: 2 stride: 3 round_mode: FLOOR", (8, 7), 2, 3, 0, False),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0", (6, 5),
     (3, 2), (2, 1), (1, 0), True),
    ("kernel_size: 4", (9, 9), 4, 1, 0, True),
]


@pytest.mark.parametrize("body,hw,k,s,p,ceil", POOL_SHAPES)
def test_pooling_shapes(body, hw, k, s, p, ceil):
    (kh, kw), (sh, sw), (ph, pw) = _hw(k), _hw(s), _hw(p)
    expect = (2, 3, pool_out(hw[0], kh, sh, ph, ceil), pool_out(hw[1], kw, sw, pw, ceil))
    assert infer_shapes(pool(body), [(2, 3, *hw)]) == [expect]


POOL_FORWARD = [
    ("kernel_size: 3 stride: 2", (2, 3, 9, 8), 3, 2, 0, True),
    ("kernel_size: 3 stride: 2 pad: 1", (1, 2, 7, 7), 3, 2, 1, True),
    ("kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 6), 2, 2, 1, True),
    ("kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 2, 8, 8), 3, 2, 0, False),
    ("kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2", (2, 1, 5, 7), (2, 3), (1, 2), 0, True),
    ("kernel_size: 2 stride: 3", (1, 2, 8, 8), 2, 3, 0, True),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("body,shape,k,s,p,ceil", POOL_FORWARD)
def test_pooling_matches_reference(method, body, shape, k, s, p, ceil):
    lay = pool(f"pool: {method} {body}")
    x = rand(*shape)
    (y,) = run_layer(lay, [x])
    ref = pool_reference(x, method.lower(), k, s, p, ceil)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
    assert lay.macs(*wired(lay)) == 0


def test_max_pooling_mask_top():
    lay = pool("pool: MAX kernel_size: 3 stride: 2 pad: 1", tops=("y", "mask"))
    x = rand(2, 3, 7, 6)
    y, mask = run_layer(lay, [x])
    ref, arg = pool_reference(x, "max", 3, 2, 1, return_argmax=True)
    np.testing.assert_allclose(y, ref, rtol=RTOL)
    np.testing.assert_array_equal(mask, arg.astype(np.float32))


def test_global_pooling():
    lay = pool("pool: AVE global_pooling: true")
    assert infer_shapes(lay, [(2, 3, 7, 5)]) == [(2, 3, 1, 1)]
    x = rand(2, 3, 7, 5)
    (y,) = run_layer(lay, [x])
    np.testing.assert_allclose(y[:, :, 0, 0], x.mean(axis=(2, 3)), rtol=RTOL, atol=ATOL)
    x2 = rand(1, 3, 4, 9)     # a new input size re-derives the kernel
    (y2,) = run_layer(lay, [x2])
    np.testing.assert_allclose(y2[:, :, 0, 0], x2.mean(axis=(2, 3)), rtol=RTOL, atol=ATOL)
    big = pool("pool: MAX global_pooling: true")
    (ym,) = run_layer(big, [x])
    np.testing.assert_array_equal(ym[:, :, 0, 0], x.max(axis=(2, 3)))


def _stochastic_windows(x, k, s):
    n, c, h, w = x.shape
    oh, ow = pool_out(h, k, s, 0), pool_out(w, k, s, 0)
    for idx in np.ndindex(n, c, oh, ow):
        a, b, i, j = idx
        yield idx, x[a, b, i * s:min(i * s + k, h), j * s:min(j * s + k, w)].ravel()


def test_stochastic_pooling_test_phase_is_weighted_average():
    x = np.abs(rand(1, 2, 7, 7))
    x[0, 0, :3, :3] = 0.0                                # an all-zero window gives 0
    lay = pool("pool: STOCHASTIC kernel_size: 3 stride: 2")
    (y,) = run_layer(lay, [x])
    for idx, win in _stochastic_windows(x, 3, 2):
        want = (win ** 2).sum() / win.sum() if win.sum() > 0 else 0.0
        assert y[idx] == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_stochastic_pooling_train_phase_samples_window_elements():
    x = np.abs(rand(2, 2, 6, 7)) + 0.1
    lay = pool("pool: STOCHASTIC kernel_size: 2 stride: 2", phase="TRAIN")
    lay_seeded = lay
    (y,) = run_layer(lay, [x])
    assert y.shape == (2, 2, 3, 4)
    for idx, win in _stochastic_windows(x, 2, 2):
        assert y[idx] in win
    # a window with one non-zero element always picks it
    x2 = np.zeros((1, 1, 4, 4), np.float32)
    x2[0, 0, 1, 0] = 5.0
    lay_seeded.rng = np.random.default_rng(0)
    (y2,) = run_layer(lay_seeded, [x2])
    assert y2[0, 0, 0, 0] == 5.0 and y2[0, 0, 1, 1] == 0.0


@pytest.mark.parametrize("body,tops,fragments", [
    ("kernel_size: 2 pad: 2", ("y",), ["pad 2x2 must be smaller than the kernel 2x2"]),
    ("global_pooling: true kernel_size: 2", ("y",), ["do not set kernel_size"]),
    ("global_pooling: true stride: 2", ("y",), ["pad 0 and stride 1"]),
    ("pool: AVE kernel_size: 2", ("y", "mask"), ["only MAX pooling has a second"]),
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", ("y",), ["does not support padding"]),
    ("stride: 2", ("y",), ["no kernel size"]),
    ("kernel_size: 2 stride: 0", ("y",), ["stride must be positive"]),
    ("kernel_size: 2 kernel_h: 2 kernel_w: 2", ("y",), ["not both"]),
])
def test_pooling_config_errors(body, tops, fragments):
    lay = pool(body, tops=tops, name="pool1")
    with pytest.raises(GraphError) as err:
        infer_shapes(lay, [(1, 2, 6, 6)])
    assert_message(err, "layer 'pool1' (Pooling)", *fragments)


def test_pooling_shape_errors():
    lay = pool("kernel_size: 5 round_mode: FLOOR", name="p", bottoms=("conv5",))
    with pytest.raises(ShapeError) as err:
        infer_shapes(lay, [(1, 2, 3, 3)])
    assert_message(err, "layer 'p' (Pooling)", "'conv5' (1, 2, 3, 3)", "5x5")
    with pytest.raises(ShapeError) as err:
        infer_shapes(pool("kernel_size: 2", bottoms=("fc",)), [(1, 10)])
    assert_message(err, "4-axis", "'fc' (1, 10)")


# -------------------------------------------------------------------- LRN ----
@pytest.mark.parametrize("region,size,alpha,beta,k", [
    ("ACROSS_CHANNELS", 5, 1e-4, 0.75, 1.0),
    ("ACROSS_CHANNELS", 3, 0.5, 0.6, 2.0),
    ("ACROSS_CHANNELS", 7, 2.0, 0.75, 1.0),        # window wider than the channel count
    ("WITHIN_CHANNEL", 3, 0.5, 0.75, 1.0),
    ("WITHIN_CHANNEL", 5, 1.5, 0.9, 1.0),
])
def test_lrn_matches_reference(region, size, alpha, beta, k):
    body = (f"lrn_param {{ norm_region: {region} local_size: {size} alpha: {alpha} "
            f"beta: {beta} k: {k} }}")
    lay = layer("LRN", body)
    x = rand(2, 5, 6, 7)
    assert infer_shapes(lay, [x.shape]) == [x.shape]
    (y,) = run_layer(lay, [x])
    ref = lrn_reference(x, size, alpha, beta, k, "across" if region[0] == "A" else "within")
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_lrn_in_place_and_defaults():
    lay = layer("LRN", tops=("data",))
    x = rand(1, 6, 4, 4)
    (y,) = run_layer(lay, [x], in_place=True)
    np.testing.assert_allclose(y, lrn_reference(x), rtol=RTOL, atol=ATOL)
    assert (lay.size, lay.alpha, lay.beta, lay.k) == (5, 1.0, 0.75, 1.0)


def test_lrn_errors():
    with pytest.raises(GraphError) as err:
        infer_shapes(layer("LRN", "lrn_param { local_size: 4 }", name="norm1"), [(1, 3, 4, 4)])
    assert_message(err, "layer 'norm1' (LRN)", "local_size must be odd, got 4")
    with pytest.raises(ShapeError) as err:
        infer_shapes(layer("LRN"), [(2, 8)])
    assert_message(err, "4-axis", "'data' (2, 8)")


def test_pooling_enum_defaults():
    lay = pool("kernel_size: 2")
    infer_shapes(lay, [(1, 1, 4, 4)])
    assert lay.method == pb.PoolingParameter.MAX and lay.ceil_mode


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT", "0") != "0",
                    reason="no compiled signatures without the JIT")
def test_vision_kernels_compile_one_signature():
    """Layers pass the kernels' documented dtypes (Python ints/floats, float32
    C-contiguous arrays), so no kernel compiles a second signature."""
    x = rand(2, 4, 9, 8)
    for lay in (conv("num_output: 4 kernel_size: 3 stride: 2 pad: 1 dilation: 2"),
                layer("Deconvolution", "convolution_param { num_output: 2 kernel_size: 2 }"),
                layer("Im2col", "convolution_param { kernel_size: 2 }"),
                pool("pool: MAX kernel_size: 3 stride: 2"), pool("pool: AVE kernel_size: 2"),
                pool("pool: STOCHASTIC kernel_size: 2", phase="TRAIN"),
                layer("LRN"), layer("LRN", "lrn_param { norm_region: WITHIN_CHANNEL }")):
        infer_shapes(lay, [x.shape])
        fill_params(lay)
        run_layer(lay, [np.abs(x)])
        bottoms, tops = wired(lay)
        for top in tops:
            top.diff[...] = 1.0
        lay.backward(tops, [True], bottoms)
    from netdef.kernels import compiled_signatures

    sigs = compiled_signatures()
    for name in ("im2col.im2col", "im2col.col2im", "pooling.max_pool_forward",
                 "pooling.max_pool_backward", "pooling.ave_pool_forward",
                 "pooling.ave_pool_backward", "lrn.lrn_across_forward",
                 "lrn.lrn_across_backward", "lrn.lrn_within_forward",
                 "lrn.lrn_within_backward"):
        assert len(sigs[name]) == 1, (name, sigs[name])


# --------------------------------------------------------------- backward ----
def distinct(*shape, seed=0, spacing=0.05):
    """Values at least ``spacing`` apart in random order: a finite-difference
    step below spacing/2 never changes which element of a window is largest."""
    n = int(np.prod(shape))
    values = (np.arange(n) - n / 2) * spacing
    return np.random.default_rng(seed).permutation(values).reshape(shape).astype(np.float32)


def small_blocks(monkeypatch, images: int, plane: int):
    """Make convolution blocks ``images`` images wide for outputs of ``plane`` positions."""
    monkeypatch.setattr(vision, "_GEMM_COLUMNS", images * plane)


CONV_GRAD_CASES = [
    # (convolution_param body, bottom shape)
    ("num_output: 3 kernel_size: 3", (2, 2, 5, 6)),
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1", (1, 2, 7, 6)),
    ("num_output: 2 kernel_size: 2 stride: 3", (2, 2, 7, 5)),                      # stride > kernel
    ("num_output: 2 kernel_size: 3 dilation: 2 pad: 2", (1, 2, 6, 7)),
    ("num_output: 4 kernel_size: 3 group: 2 pad: 1", (2, 4, 5, 4)),
    ("num_output: 6 kernel_size: 3 group: 3 stride: 2", (1, 3, 6, 6)),              # depthwise
    ("num_output: 4 kernel_size: 1", (3, 3, 4, 3)),                                # 1x1 batch
    ("num_output: 4 kernel_size: 1", (1, 3, 4, 3)),                                # 1x1 one image
    ("num_output: 6 kernel_size: 1 group: 3", (2, 6, 3, 4)),
    ("num_output: 2 kernel_size: 1 stride: 2", (2, 3, 5, 5)),                      # strided 1x1
    ("num_output: 2 kernel_h: 3 kernel_w: 1 stride_h: 2 stride_w: 1 pad_h: 1", (1, 2, 6, 5)),
    ("num_output: 2 kernel_size: 3 pad: 1 bias_term: false", (2, 2, 4, 4)),
]


@pytest.mark.parametrize("body,shape", CONV_GRAD_CASES)
def test_convolution_gradients(body, shape):
    lay = conv(body)
    infer_shapes(lay, [shape])
    fill_params(lay, seed=4, scale=0.5)
    assert check_gradients(lay, [rand(*shape, seed=5)]) > 0


@pytest.mark.parametrize("body,shape", [
    ("num_output: 3 kernel_size: 3 stride: 2 pad: 1 dilation: 1 group: 1", (3, 2, 7, 6)),
    ("num_output: 4 kernel_size: 2 group: 2 dilation: 2", (2, 4, 6, 5)),
    ("num_output: 4 kernel_size: 1", (3, 3, 4, 3)),
    ("num_output: 6 kernel_size: 1 group: 2", (2, 4, 3, 3)),
])
@pytest.mark.parametrize("block", [1, 2, 8])
def test_convolution_backward_matches_reference(monkeypatch, body, shape, block):
    """dx, dW and db against loop-based scattering, with blocks of 1, 2 (the
    batch split unevenly) or all images per GEMM."""
    lay = conv(body)
    (top,) = infer_shapes(lay, [shape])
    small_blocks(monkeypatch, block, top[2] * top[3])
    lay.reshape(*wired(lay))
    w, b = fill_params(lay, seed=6)
    x, dy = rand(*shape, seed=7), rand(*top, seed=8)
    (y,) = run_layer(lay, [x])
    cp = lay.win
    stride, pad, dil = (cp.sh, cp.sw), (cp.ph, cp.pw), (cp.dh, cp.dw)
    np.testing.assert_allclose(y, conv2d_reference(x, w, b, stride, pad, dil, lay.group),
                               rtol=RTOL, atol=ATOL)
    bottoms, tops = wired(lay)
    tops[0].diff[...] = dy
    lay.blobs[0].diff[...] = 1.0        # parameter diffs accumulate
    lay.blobs[1].diff[...] = -1.0
    bottoms[0].diff[...] = np.nan       # bottom diffs are overwritten
    lay.backward(tops, [True], bottoms)
    dx, dw, db = conv2d_backward_reference(x, w, dy, stride, pad, dil, lay.group)
    np.testing.assert_allclose(bottoms[0].diff, dx, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(lay.blobs[0].diff, dw + 1.0, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(lay.blobs[1].diff, db - 1.0, rtol=RTOL, atol=1e-4)


def test_convolution_gradients_in_blocks(monkeypatch):
    lay = conv("num_output: 3 kernel_size: 3 pad: 1 group: 1")
    infer_shapes(lay, [(3, 2, 4, 4)])
    small_blocks(monkeypatch, 2, 16)
    lay.reshape(*wired(lay))
    assert lay.blocks(lay.block) == [(0, 2), (2, 1)]
    fill_params(lay, seed=1, scale=0.5)
    assert check_gradients(lay, [rand(3, 2, 4, 4, seed=2)]) > 0


def test_convolution_several_bottoms_gradients():
    """Shared weights: their gradient sums both bottoms' contributions."""
    lay = conv("num_output: 2 kernel_size: 3 stride: 2 pad: 1", bottoms=("a", "b"),
               tops=("ya", "yb"))
    infer_shapes(lay, [(2, 2, 5, 5)] * 2)
    fill_params(lay, seed=3, scale=0.5)
    assert check_gradients(lay, [rand(2, 2, 5, 5, seed=1), rand(2, 2, 5, 5, seed=2)]) > 0


def test_convolution_axis_two_gradients():
    lay = conv("num_output: 2 kernel_size: 3 axis: 2 pad: 1")
    infer_shapes(lay, [(2, 2, 3, 4, 4)])
    fill_params(lay, seed=3, scale=0.5)
    assert check_gradients(lay, [rand(2, 2, 3, 4, 4)]) > 0


def test_convolution_backward_reuses_or_recomputes_columns_alike():
    """Backward right after forward uses the columns forward left in the shared
    buffer; after another layer took the buffer it unfolds them again."""
    lay = conv("num_output: 3 kernel_size: 3 stride: 2", bottoms=("a", "b"), tops=("ya", "yb"))
    infer_shapes(lay, [(2, 2, 7, 7)] * 2)
    fill_params(lay, seed=3)
    bottoms, tops = wired(lay)
    results = []
    for clobber in (False, True):
        run_layer(lay, [rand(2, 2, 7, 7, seed=1), rand(2, 2, 7, 7, seed=2)])
        for i, top in enumerate(tops):
            top.diff[...] = rand(*top.shape, seed=10 + i)
        x1 = bottoms[1].data.reshape(2, 2, 7, 7)
        assert lay.blocks(lay.block) == [(0, 2)] and lay.has_columns(1, x1, 0, 2)
        if clobber:
            vision.column_buffer(4, 4)[...] = 123.0
            assert not lay.has_columns(1, x1, 0, 2)
        lay.blobs[0].diff[...] = 0.0
        lay.backward(tops, [True, False], bottoms)
        results.append((lay.blobs[0].diff.copy(), bottoms[0].diff.copy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_convolution_propagate_down_and_frozen_params():
    lay = conv("num_output: 2 kernel_size: 3", bottoms=("a", "b"), tops=("ya", "yb"))
    infer_shapes(lay, [(1, 2, 4, 4)] * 2)
    fill_params(lay)
    run_layer(lay, [rand(1, 2, 4, 4, seed=1), rand(1, 2, 4, 4, seed=2)])
    bottoms, tops = wired(lay)
    for top in tops:
        top.diff[...] = 1.0
    for blob in bottoms:
        blob.diff[...] = 5.0
    lay.param_propagate_down = [False, False]
    for blob in lay.blobs:
        blob.diff[...] = 0.0
    lay.backward(tops, [False, True], bottoms)
    assert np.all(bottoms[0].diff == 5.0) and not np.all(bottoms[1].diff == 5.0)
    assert not lay.blobs[0].diff.any() and not lay.blobs[1].diff.any()


DECONV_GRAD_CASES = [
    ("num_output: 2 kernel_size: 4 stride: 2 pad: 1", (2, 2, 3, 4)),
    ("num_output: 3 kernel_size: 3", (1, 2, 3, 3)),
    ("num_output: 4 kernel_size: 3 stride: 2 group: 2", (2, 4, 3, 2)),
    ("num_output: 2 kernel_size: 3 dilation: 2 pad: 1", (1, 2, 3, 3)),
    ("num_output: 3 kernel_size: 1", (3, 2, 3, 3)),                    # 1x1 batch
    ("num_output: 3 kernel_size: 1", (1, 2, 3, 3)),                    # 1x1 one image
    ("num_output: 2 kernel_size: 2 stride: 3 bias_term: false", (2, 2, 3, 3)),
]


@pytest.mark.parametrize("body,shape", DECONV_GRAD_CASES)
def test_deconvolution_gradients(body, shape):
    lay = layer("Deconvolution", f"convolution_param {{ {body} }}")
    infer_shapes(lay, [shape])
    fill_params(lay, seed=4, scale=0.5)
    assert check_gradients(lay, [rand(*shape, seed=5)]) > 0


def test_deconvolution_gradients_in_blocks(monkeypatch):
    lay = layer("Deconvolution", "convolution_param { num_output: 2 kernel_size: 3 stride: 2 }")
    infer_shapes(lay, [(3, 2, 3, 3)])
    small_blocks(monkeypatch, 2, 9)
    lay.reshape(*wired(lay))
    assert lay.blocks(lay.block) == [(0, 2), (2, 1)]
    fill_params(lay, seed=1, scale=0.5)
    x = rand(3, 2, 3, 3, seed=2)
    assert check_gradients(lay, [x]) > 0
    (y,) = run_layer(lay, [x])
    ref = deconv2d_reference(x, lay.blobs[0].data, lay.blobs[1].data, 2, 0, 1, 1)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("body", ["kernel_size: 3 stride: 2 pad: 1",
                                  "kernel_size: 2 stride: 1 dilation: 2"])
def test_im2col_gradients(body):
    lay = layer("Im2col", f"convolution_param {{ {body} }}")
    assert check_gradients(lay, [rand(2, 2, 5, 4)]) > 0


POOL_GRAD_CASES = [
    # (pooling_param body, bottom shape)
    ("kernel_size: 3 stride: 2", (2, 2, 7, 7)),
    ("kernel_size: 3 stride: 2", (1, 2, 8, 8)),                    # ceil: last window overhangs
    ("kernel_size: 3 stride: 2 pad: 1", (1, 2, 6, 7)),
    ("kernel_size: 2 stride: 2 pad: 1", (1, 2, 5, 5)),             # last window clipped
    ("kernel_size: 3 stride: 2 round_mode: FLOOR", (1, 2, 8, 8)),
    ("kernel_size: 2 stride: 3", (1, 2, 8, 7)),                    # stride > kernel
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1", (1, 2, 6, 5)),
    ("global_pooling: true", (2, 3, 4, 5)),
]


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
@pytest.mark.parametrize("body,shape", POOL_GRAD_CASES)
def test_max_pooling_gradients(body, shape, phase):
    lay = pool(f"pool: MAX {body}", phase=phase)
    infer_shapes(lay, [shape])
    assert lay.needs_backward == (phase == "TRAIN")
    assert check_gradients(lay, [distinct(*shape)], stepsize=1e-2) > 0


@pytest.mark.parametrize("body,shape", POOL_GRAD_CASES)
def test_ave_pooling_gradients(body, shape):
    lay = pool(f"pool: AVE {body}")
    assert check_gradients(lay, [rand(*shape)]) > 0


@pytest.mark.parametrize("method", ["max", "ave"])
@pytest.mark.parametrize("body,shape", POOL_GRAD_CASES[:7])
def test_pooling_backward_matches_reference(method, body, shape):
    lay = pool(f"pool: {method.upper()} {body}", phase="TRAIN")
    x = distinct(*shape)
    (y,) = run_layer(lay, [x])
    bottoms, tops = wired(lay)
    dy = rand(*y.shape, seed=3)
    tops[0].diff[...] = dy
    bottoms[0].diff[...] = np.nan
    lay.backward(tops, [True], bottoms)
    win = lay.win
    want = pool_backward_reference(x, dy, method, (win.kh, win.kw), (win.sh, win.sw),
                                   (win.ph, win.pw), lay.ceil_mode)
    np.testing.assert_allclose(bottoms[0].diff, want, rtol=RTOL, atol=ATOL)


def test_max_pooling_with_mask_top_gradients():
    lay = pool("pool: MAX kernel_size: 3 stride: 2 pad: 1", tops=("y", "mask"), phase="TRAIN")
    x = distinct(2, 2, 6, 5)
    assert check_gradients(lay, [x], top_count=2, top_index=0) > 0
    y, mask = run_layer(lay, [x])
    ref, arg = pool_reference(x, "max", 3, 2, 1, return_argmax=True)
    np.testing.assert_array_equal(mask, arg.astype(np.float32))


def test_max_pooling_needs_backward_switches_the_argmax_on():
    """A TEST layer skips the argmax; the net sets needs_backward to keep it.
    Either way backward is right (without it, it recomputes the winners)."""
    x = distinct(1, 2, 7, 7)
    grads = []
    for needs in (False, True):
        lay = pool("pool: MAX kernel_size: 3 stride: 2")
        infer_shapes(lay, [x.shape])
        lay.needs_backward = needs
        run_layer(lay, [x])
        assert lay._argmax_valid == needs
        bottoms, tops = wired(lay)
        tops[0].diff[...] = 1.0
        lay.backward(tops, [True], bottoms)
        grads.append(bottoms[0].diff.copy())
    np.testing.assert_array_equal(grads[0], grads[1])
    assert grads[0].sum() == 2 * 3 * 3


@pytest.mark.parametrize("body,shape", [
    ("kernel_size: 3 stride: 2", (2, 2, 7, 7)),
    ("kernel_size: 3 stride: 2", (1, 2, 8, 8)),                    # ceil: last window overhangs
    ("kernel_size: 2 stride: 3", (1, 2, 8, 7)),
    ("global_pooling: true", (1, 2, 4, 5)),
])
@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_stochastic_pooling_gradients(body, shape, phase):
    """TRAIN: the gradient goes to the picked element (the checker reseeds
    layer.rng, so every forward picks alike); TEST: the derivative of
    sum(x^2)/sum(x)."""
    lay = pool(f"pool: STOCHASTIC {body}", phase=phase)
    x = np.abs(rand(*shape)) + 0.1
    assert check_gradients(lay, [x], stepsize=1e-3, threshold=1e-2) > 0


def test_stochastic_pooling_train_routes_to_the_picked_element():
    lay = pool("pool: STOCHASTIC kernel_size: 3 stride: 2", phase="TRAIN")
    x = np.abs(rand(2, 2, 8, 8)) + 0.1
    (y,) = run_layer(lay, [x])
    bottoms, tops = wired(lay)
    tops[0].diff[...] = rand(*y.shape, seed=4)
    lay.backward(tops, [True], bottoms)
    dx = bottoms[0].diff
    for idx in np.ndindex(*y.shape):
        n, c, i, j = idx
        win = x[n, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3]
        hits = np.argwhere(win == y[idx])
        assert len(hits) == 1      # the picked value sits in its window
    # every top gradient arrives somewhere, nothing else does
    assert dx.sum() == pytest.approx(tops[0].diff.sum(), rel=1e-5)
    assert np.count_nonzero(dx) <= y.size


@pytest.mark.parametrize("region,size,alpha,beta,k", [
    ("ACROSS_CHANNELS", 5, 0.8, 0.75, 1.0),
    ("ACROSS_CHANNELS", 3, 0.5, 0.6, 2.0),
    ("ACROSS_CHANNELS", 7, 2.0, 0.75, 1.0),          # window wider than the channel count
    ("WITHIN_CHANNEL", 3, 0.9, 0.75, 1.0),
    ("WITHIN_CHANNEL", 5, 1.5, 0.6, 1.0),
])
def test_lrn_gradients(region, size, alpha, beta, k):
    lay = layer("LRN", f"lrn_param {{ norm_region: {region} local_size: {size} "
                       f"alpha: {alpha} beta: {beta} k: {k} }}")
    assert check_gradients(lay, [rand(2, 4, 4, 5)]) > 0


@pytest.mark.parametrize("region", ["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
def test_lrn_in_place_backward_equals_out_of_place(region):
    body = f"lrn_param {{ norm_region: {region} local_size: 3 alpha: 0.9 }}"
    x, dy = rand(2, 4, 3, 5, seed=1), rand(2, 4, 3, 5, seed=2)
    grads = []
    for in_place in (False, True):
        lay = layer("LRN", body, tops=("data",) if in_place else ("y",))
        run_layer(lay, [x], in_place=in_place)
        bottoms, tops = wired(lay)
        tops[0].diff[...] = dy
        lay.backward(tops, [True], bottoms)
        grads.append(bottoms[0].diff.copy())
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("body,shape,geo", DECONV_CASES)
def test_deconvolution_input_gradient_is_a_convolution(body, shape, geo):
    """dx of a deconvolution = the convolution of dy by the same weights
    (Caffe's definition of the layer); db = dy summed over images and positions."""
    k, s, p, d, g = geo
    lay = layer("Deconvolution", f"convolution_param {{ {body} }}")
    infer_shapes(lay, [shape])
    blobs = fill_params(lay, seed=2)
    (y,) = run_layer(lay, [rand(*shape, seed=3)])
    bottoms, tops = wired(lay)
    dy = rand(*y.shape, seed=4)
    tops[0].diff[...] = dy
    for blob in lay.blobs:
        blob.diff[...] = 0.0
    lay.backward(tops, [True], bottoms)
    np.testing.assert_allclose(bottoms[0].diff, conv2d_reference(dy, blobs[0], None, s, p, d, g),
                               rtol=RTOL, atol=1e-4)
    if len(blobs) > 1:
        np.testing.assert_allclose(lay.blobs[1].diff, dy.sum(axis=(0, 2, 3)), rtol=RTOL,
                                   atol=1e-4)
