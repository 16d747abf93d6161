"""Winograd F(4x4, 3x3) convolution: transforms, kernels, and the plan's use of it."""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from netdef.kernels import gemm
from netdef.kernels import winograd as wk
from netdef.layers import winograd
from netdef.net import Net


def test_transform_matrices_give_a_3_tap_correlation():
    # 1-D: A^T [(G g) * (B^T d)] is the valid correlation of 6 inputs with 3 taps
    rng = np.random.default_rng(0)
    d, g = rng.standard_normal(6), rng.standard_normal(3)
    got = wk.AT @ ((wk.G @ g) * (wk.BT @ d))
    want = [d[i:i + 3] @ g for i in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _winograd_conv(x, w, b, pad, relu_slope=None, n0=0, images=None):
    """Images n0 .. n0+images-1 of x through the two kernels and the 36 GEMMs."""
    n, c, h, wd = x.shape
    m = w.shape[0]
    images = n - n0 if images is None else images
    oh, ow = h + 2 * pad[0] - 2, wd + 2 * pad[1] - 2
    th, tw = -(-oh // 4), -(-ow // 4)
    t = images * th * tw
    v = np.full((36, t, c), np.nan, np.float32)        # every entry must be written
    wk.winograd_input(x, n0, pad[0], pad[1], th, tw, v)
    p = np.matmul(v, wk.transform_weights(w))
    y = np.full((n, m, oh, ow), np.nan, np.float32)
    wk.winograd_output(p, 0, b, int(relu_slope is not None), float(relu_slope or 0.0),
                       n0, th, tw, y)
    return y


# (N, C, H, W, M, pad): sizes not multiples of 4 leave partial tiles
CASES = [
    pytest.param(1, 3, 4, 4, 2, (0, 0), id="one-partial-tile"),
    pytest.param(2, 5, 9, 11, 4, (1, 1), id="odd-sizes"),
    pytest.param(1, 4, 6, 6, 3, (2, 2), id="pad2"),
    pytest.param(1, 2, 7, 10, 3, (1, 0), id="asymmetric-pad"),
    pytest.param(1, 32, 38, 38, 16, (1, 1), id="parallel-size"),
]


@pytest.mark.parametrize("n,c,h,w,m,pad", CASES)
def test_winograd_kernels_match_the_reference_convolution(n, c, h, w, m, pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((m, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    want = ref.conv2d_reference(x, wt, b, 1, pad)
    got = _winograd_conv(x, wt, b, pad)
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=0)


def test_winograd_output_applies_relu_and_writes_only_its_images():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    wt = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    got = _winograd_conv(x, wt, b, (1, 1), relu_slope=0.1, n0=1, images=1)
    want = ref.conv2d_reference(x[1:2], wt, b, 1, 1)
    want = np.where(want > 0, want, 0.1 * want)
    np.testing.assert_allclose(got[1:2], want, atol=2e-5 * np.abs(want).max(), rtol=0)
    assert np.isnan(got[0]).all() and np.isnan(got[2]).all()


def _chunked_conv(x, w, b, pad, rows, workers, relu_slope=None, n0=0, images=None):
    """Images n0 .. n0+images-1 of x through ``winograd_conv``."""
    n, c, h, wd = x.shape
    m = w.shape[0]
    images = n - n0 if images is None else images
    oh, ow = h + 2 * pad[0] - 2, wd + 2 * pad[1] - 2
    th, tw = -(-oh // 4), -(-ow // 4)
    v = np.full((workers, 36, rows * tw, c), np.nan, np.float32)
    p = np.full((workers, 36, rows * tw, m), np.nan, np.float32)
    y = np.full((n, m, oh, ow), np.nan, np.float32)
    wk.winograd_conv(x, n0, images, pad[0], pad[1], th, tw, rows, wk.transform_weights(w), b,
                     int(relu_slope is not None), float(relu_slope or 0.0), y, v, p)
    return y


@pytest.mark.skipif(not gemm.available(), reason="needs numpy's OpenBLAS")
@pytest.mark.parametrize("n,c,h,w,m,pad,rows,workers", [
    pytest.param(1, 3, 4, 4, 2, (0, 0), 1, 1, id="one-tile"),
    pytest.param(2, 5, 9, 11, 4, (1, 1), 2, 3, id="odd-sizes-more-workers-than-chunks"),
    pytest.param(3, 6, 13, 10, 7, (1, 0), 1, 2, id="asymmetric-pad-three-images"),
    pytest.param(1, 32, 38, 38, 16, (1, 1), 3, 2, id="parallel-size-partial-last-chunk"),
])
def test_chunked_winograd_matches_the_reference_convolution(n, c, h, w, m, pad, rows, workers):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((m, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    want = ref.conv2d_reference(x, wt, b, 1, pad)
    got = _chunked_conv(x, wt, b, pad, rows, workers)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max(), rtol=0)


@pytest.mark.skipif(not gemm.available(), reason="needs numpy's OpenBLAS")
def test_chunked_winograd_applies_relu_and_writes_only_its_images():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 8, 8)).astype(np.float32)
    wt = rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    got = _chunked_conv(x, wt, b, (1, 1), 1, 2, relu_slope=0.1, n0=1, images=1)
    want = ref.conv2d_reference(x[1:2], wt, b, 1, 1)
    want = np.where(want > 0, want, 0.1 * want)
    np.testing.assert_allclose(got[1:2], want, atol=2e-5 * np.abs(want).max(), rtol=0)
    assert np.isnan(got[0]).all() and np.isnan(got[2]).all()


NET = """
name: "wino"
input: "data" input_shape { dim: 4 dim: 16 dim: 13 dim: 11 }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 32 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "bn" type: "BatchNorm" bottom: "c1" top: "c1" }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param { num_output: 16 kernel_size: 3 group: 2 bias_term: false
    weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "c3" type: "Convolution" bottom: "c2" top: "c3"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2
    weight_filler { type: "gaussian" std: 0.1 } } }
"""


def _net(optimize):
    net = Net(NET, phase="TEST", optimize=optimize, seed=3)
    bn = net.params["bn"]
    bn[0].data[...] = np.linspace(-0.5, 0.5, 32)
    bn[1].data[...] = np.linspace(0.5, 2.0, 32)
    bn[2].data[...] = 1.0
    net.params_changed()
    return net


def _run_both(plain, fast, x, blob):
    """Give ``fast`` the weights of ``plain``, run both on x; (want, got) of ``blob``."""
    for name, blobs in plain.params.items():
        for a, b in zip(fast.params[name], blobs):
            a.data[...] = b.data
    fast.params_changed()
    want = plain.forward(data=x)[blob].copy()
    return want, fast.forward(data=x)[blob]


def test_optimized_plans_run_eligible_convolutions_as_winograd():
    plain, fast = _net(False), _net(True)
    x = np.random.default_rng(4).standard_normal((4, 16, 13, 11)).astype(np.float32)
    want, got = _run_both(plain, fast, x, "c3")
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)
    log = " ".join(fast.plan_log)
    # c1 (with its BatchNorm and ReLU folded in) and grouped c2; c3 has stride 2
    assert "2 3x3 convolutions run as Winograd" in log
    steps = {s.name: s.layer for s in fast._plan().steps}
    assert steps["c1+bn+r1"].winograd is not None
    assert steps["c2"].winograd is not None
    assert "c3" in steps and not hasattr(steps["c3"], "winograd")


def test_eligibility():
    net = Net(NET, phase="TEST", optimize=False)
    net.forward()
    layers = {s.name: s.layer for s in net._inst.steps}
    assert winograd.eligible(layers["c1"])
    assert winograd.eligible(layers["c2"])           # group 2: 16 input channels each
    assert not winograd.eligible(layers["c3"])       # stride 2


def test_few_input_channels_stay_on_im2col():
    net = Net(NET.replace("dim: 16 dim: 13", "dim: 3 dim: 13"), phase="TEST", optimize=False)
    net.forward()
    layers = {s.name: s.layer for s in net._inst.steps}
    assert not winograd.eligible(layers["c1"])       # 3 input channels



WIDE = """
name: "wide"
input: "data" input_shape { dim: %d dim: 192 dim: 7 dim: 7 }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: %d kernel_size: 3 pad: 1 } }
"""


@pytest.mark.parametrize("batch,outputs,expected", [
    (1, 192, False),    # 4 tiles, U of 1.3M values: reading U would dominate
    (2, 192, True),     # 8 tiles
    (1, 128, True),     # 4 tiles, U of 0.9M values
])
def test_large_layers_on_maps_of_few_tiles_stay_on_im2col(batch, outputs, expected):
    net = Net(WIDE % (batch, outputs), phase="TEST", optimize=False)
    layer = next(s.layer for s in net._inst.steps if s.name == "c")
    assert winograd.eligible(layer) is expected


HEADS = """
name: "heads"
input: "data" input_shape { dim: 2 dim: 16 dim: 10 dim: 9 }
layer { name: "feat" type: "Convolution" bottom: "data" top: "feat"
  convolution_param { num_output: 24 kernel_size: 1
    weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loc" type: "Convolution" bottom: "feat" top: "loc"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc" top: "loc_flat" }
layer { name: "conf" type: "Convolution" bottom: "feat" top: "conf"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1
    weight_filler { type: "gaussian" std: 0.1 } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "conf_relu" type: "ReLU" bottom: "conf" top: "conf" }
layer { name: "conf_flat" type: "Flatten" bottom: "conf" top: "conf_flat" }
layer { name: "out" type: "Concat" bottom: "loc_flat" bottom: "conf_flat" top: "out" }
"""


def test_heads_on_one_feature_map_share_the_input_transform():
    plain = Net(HEADS, phase="TEST", optimize=False, seed=5)
    fast = Net(HEADS, phase="TEST", optimize=True, seed=5)
    x = np.random.default_rng(6).standard_normal((2, 16, 10, 9)).astype(np.float32)
    want, got = _run_both(plain, fast, x, "out")
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)
    assert "(1 of them sharing another's input transform)" in " ".join(fast.plan_log)
    names = [s.name for s in fast._plan().steps]
    assert "loc&conf+conf_relu" in names and "loc" not in names
    assert (want.reshape(2, -1)[:, 8 * 90:] >= 0).all()          # conf kept its ReLU


def test_fused_relu_is_applied_with_the_bias_on_the_im2col_path():
    # 5x5 convolutions (not Winograd), batch 3 (blocks of several images) and
    # batch 1, with and without a bias, each followed by a ReLU with a slope
    for batch, bias in ((3, "true"), (1, "false")):
        text = f"""
        input: "data" input_shape {{ dim: {batch} dim: 4 dim: 9 dim: 8 }}
        layer {{ name: "c" type: "Convolution" bottom: "data" top: "c"
          convolution_param {{ num_output: 6 kernel_size: 5 pad: 1 bias_term: {bias}
            weight_filler {{ type: "gaussian" std: 0.3 }}
            bias_filler {{ type: "gaussian" std: 0.3 }} }} }}
        layer {{ name: "r" type: "ReLU" bottom: "c" top: "r" relu_param {{ negative_slope: 0.1 }} }}
        """
        plain = Net(text, phase="TEST", optimize=False, seed=7)
        fast = Net(text, phase="TEST", optimize=True, seed=7)
        x = np.random.default_rng(8).standard_normal((batch, 4, 9, 8)).astype(np.float32)
        want, got = _run_both(plain, fast, x, "r")
        assert [s.name for s in fast._plan().steps][-1] == "c+r"
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        assert (want < 0).any()                  # the slope was exercised
