"""Kernels against the slow NumPy references in tests/reference.py.

Every kernel is called with the documented types (float32 C-contiguous
arrays, Python int and float scalars, 1-D arrays for elementwise kernels),
so the last test can check that no kernel compiled a second signature.
Cases whose id contains "tiny" also run with NUMBA_DISABLE_JIT=1.
"""
from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import reference as ref
from netdef import kernels
from netdef.kernels import elementwise as ew
from netdef.kernels import im2col as i2c
from netdef.kernels import lrn, normalization, pooling, softmax
from netdef.kernels import detection as det

ROOT = pathlib.Path(__file__).resolve().parents[1]
JIT_DISABLED = os.environ.get("NUMBA_DISABLE_JIT", "0") not in ("", "0")


def rand(rng, *shape, scale=1.0):
    return np.ascontiguousarray(rng.standard_normal(shape).astype(np.float32) * scale)


def close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


# ---------------------------------------------------------------- im2col / col2im

# (C, H, W, kernel, stride, pad, dilation)
CONV_CASES = [
    pytest.param(2, 5, 4, 3, 1, 1, 1, id="tiny"),
    pytest.param(3, 9, 11, (3, 2), (2, 1), (1, 0), 1, id="asymmetric"),
    pytest.param(4, 10, 10, 2, 3, 0, 1, id="stride>kernel"),
    pytest.param(2, 8, 7, 3, 4, 2, 1, id="stride>kernel-pad"),
    pytest.param(3, 11, 9, 3, 2, 2, 2, id="dilation"),
    pytest.param(2, 5, 5, 5, 1, 2, 1, id="kernel=size"),
    pytest.param(2, 4, 4, 3, 1, 3, 1, id="rows-all-padding"),
    pytest.param(3, 6, 6, 1, 1, 0, 1, id="1x1"),
    pytest.param(1, 13, 12, (2, 4), (3, 2), (1, 2), (3, 1), id="mixed"),
    pytest.param(16, 30, 31, 3, 1, 1, 1, id="parallel-path"),  # >= PARALLEL_MIN_WORK
]


def pair(v):
    return v if isinstance(v, tuple) else (v, v)


def geometry(h, w, k, s, p, d):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(pair, (k, s, p, d))
    oh, ow = ref.conv_out(h, kh, sh, ph, dh), ref.conv_out(w, kw, sw, pw, dw)
    return kh, kw, ph, pw, sh, sw, dh, dw, oh, ow


@pytest.mark.parametrize("c,h,w,k,s,p,d", CONV_CASES)
def test_im2col_matches_reference(c, h, w, k, s, p, d):
    rng = np.random.default_rng(0)
    img = rand(rng, c, h, w)
    g = geometry(h, w, k, s, p, d)
    kh, kw, oh, ow = g[0], g[1], g[-2], g[-1]
    col = np.full((c * kh * kw, oh * ow), np.nan, np.float32)  # every entry must be written
    i2c.im2col(img[None], 0, *g, col)
    close(col, ref.im2col_reference(img, k, s, p, d), rtol=0, atol=0)


@pytest.mark.parametrize("c,h,w,k,s,p,d", CONV_CASES)
def test_col2im_is_adjoint_of_im2col(c, h, w, k, s, p, d):
    rng = np.random.default_rng(1)
    img = rand(rng, c, h, w)
    g = geometry(h, w, k, s, p, d)
    kh, kw, oh, ow = g[0], g[1], g[-2], g[-1]
    col_y = rand(rng, c * kh * kw, oh * ow)
    col_x = np.empty_like(col_y)
    i2c.im2col(img[None], 0, *g, col_x)
    back = np.full((1, c, h, w), 7.0, np.float32)  # col2im must overwrite, not add
    i2c.col2im(col_y, 0, *g, back)
    lhs = np.dot(col_x.ravel().astype(np.float64), col_y.ravel())
    rhs = np.dot(img.ravel().astype(np.float64), back.ravel())
    assert lhs == pytest.approx(rhs, rel=1e-5, abs=1e-4)


@pytest.mark.parametrize("c,h,w,k,s,p,d", CONV_CASES[:3] + CONV_CASES[-2:])
def test_im2col_and_col2im_of_a_block_of_images(c, h, w, k, s, p, d):
    """Images n0 .. n0+B-1 lie side by side in the columns; col2im folds them
    back into exactly those images and leaves the others alone."""
    rng = np.random.default_rng(4)
    x = rand(rng, 5, c, h, w)
    g = geometry(h, w, k, s, p, d)
    kh, kw, oh, ow = g[0], g[1], g[-2], g[-1]
    rows, plane = c * kh * kw, oh * ow
    col = np.full((rows, 3 * plane), np.nan, np.float32)
    i2c.im2col(x, 1, *g, col)
    for b in range(3):
        close(col[:, b * plane:(b + 1) * plane], ref.im2col_reference(x[1 + b], k, s, p, d),
              rtol=0, atol=0)
    dcol = rand(rng, rows, 3 * plane)
    back = np.full((5, c, h, w), 7.0, np.float32)
    i2c.col2im(dcol, 1, *g, back)
    assert np.all(back[0] == 7.0) and np.all(back[4] == 7.0)
    for b in range(3):
        one = np.empty((1, c, h, w), np.float32)
        i2c.col2im(np.ascontiguousarray(dcol[:, b * plane:(b + 1) * plane]), 0, *g, one)
        close(back[1 + b], one[0], rtol=0, atol=0)


# (N, C, H, W, M, kernel, stride, pad, dilation, group)
GEMM_CASES = [
    pytest.param(1, 2, 5, 5, 2, 3, 1, 1, 1, 1, id="tiny"),
    pytest.param(2, 6, 9, 8, 4, 3, 2, 1, 1, 2, id="group2"),
    pytest.param(1, 6, 8, 7, 6, 3, 1, 2, 2, 3, id="group3-dilated"),
    pytest.param(2, 4, 7, 9, 4, (2, 3), (3, 1), (0, 1), 1, 4, id="depthwise"),
    # outputs up to 8 wide unfold element by element; wider ones use
    # im2col's literal-stride copies (2 and 4) and the general one (3)
    pytest.param(1, 3, 19, 23, 2, 5, (2, 4), 2, 1, 1, id="narrow-stride4-pad2"),
    pytest.param(1, 2, 11, 13, 3, 3, (1, 3), 2, 1, 1, id="narrow-stride3-pad2"),
    pytest.param(1, 3, 19, 47, 2, 5, (2, 4), 2, 1, 1, id="stride4-pad2"),
    pytest.param(1, 2, 11, 31, 3, 3, (1, 3), 2, 1, 1, id="stride3-pad2"),
    pytest.param(2, 2, 9, 21, 2, 3, 2, 1, 2, 1, id="stride2-dilated"),
]


def _conv_by_gemm(x, wt, b, k, s, p, d, group):
    n_img, c, h, w = x.shape
    m = wt.shape[0]
    g = geometry(h, w, k, s, p, d)
    kh, kw, oh, ow = g[0], g[1], g[-2], g[-1]
    rows = (c // group) * kh * kw
    col = np.empty((c * kh * kw, oh * ow), np.float32)
    y = np.empty((n_img, m, oh, ow), np.float32)
    wmat = wt.reshape(group, m // group, rows)
    for n in range(n_img):
        i2c.im2col(x, n, *g, col)
        for gi in range(group):
            y[n, gi * (m // group):(gi + 1) * (m // group)] = (
                wmat[gi] @ col[gi * rows:(gi + 1) * rows]).reshape(m // group, oh, ow)
    return y + b.reshape(1, -1, 1, 1)


def _deconv_by_gemm(x, wt, b, k, s, p, d, group):
    n_img, c, h, w = x.shape
    mpg = wt.shape[1]
    m = mpg * group
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(pair, (k, s, p, d))
    oh = sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph
    ow = sw * (w - 1) + dw * (kw - 1) + 1 - 2 * pw
    cpg = c // group
    col = np.empty((m * kh * kw, h * w), np.float32)
    y = np.empty((n_img, m, oh, ow), np.float32)
    for n in range(n_img):
        for gi in range(group):
            wg = wt[gi * cpg:(gi + 1) * cpg].reshape(cpg, mpg * kh * kw)
            col[gi * mpg * kh * kw:(gi + 1) * mpg * kh * kw] = (
                wg.T @ x[n, gi * cpg:(gi + 1) * cpg].reshape(cpg, h * w))
        i2c.col2im(col, n, kh, kw, ph, pw, sh, sw, dh, dw, h, w, y)
    return y + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("n,c,h,w,m,k,s,p,d,group", GEMM_CASES)
def test_convolution_by_im2col_gemm(n, c, h, w, m, k, s, p, d, group):
    rng = np.random.default_rng(2)
    kh, kw = pair(k)
    x, wt, b = rand(rng, n, c, h, w), rand(rng, m, c // group, kh, kw), rand(rng, m)
    close(_conv_by_gemm(x, wt, b, k, s, p, d, group),
          ref.conv2d_reference(x, wt, b, s, p, d, group), atol=1e-5)


@pytest.mark.parametrize("n,c,h,w,m,k,s,p,d,group", GEMM_CASES)
def test_deconvolution_by_col2im(n, c, h, w, m, k, s, p, d, group):
    rng = np.random.default_rng(3)
    kh, kw = pair(k)
    x, wt, b = rand(rng, n, c, h, w), rand(rng, c, m // group, kh, kw), rand(rng, m)
    close(_deconv_by_gemm(x, wt, b, k, s, p, d, group),
          ref.deconv2d_reference(x, wt, b, s, p, d, group), atol=1e-5)


@pytest.mark.parametrize("band", [1, 2, 5])
@pytest.mark.parametrize("n,c,h,w,m,k,s,p,d,group", GEMM_CASES)
def test_convolution_in_bands_of_output_rows(n, c, h, w, m, k, s, p, d, group, band):
    """conv_bands (im2col of a band, SGEMM, bias and ReLU per task) against
    the reference, with and without a leaky ReLU, over bands that do not
    divide the output height; every output value is written."""
    from netdef.kernels import gemm

    if not gemm.available():
        pytest.skip("conv_bands calls numpy's OpenBLAS, which cannot be called here")
    rng = np.random.default_rng(5)
    kh, kw = pair(k)
    x, wt, b = rand(rng, n, c, h, w), rand(rng, m, c // group, kh, kw), rand(rng, m)
    x[-1, -1, 0, 0] = np.nan         # the ReLU keeps NaN, as Caffe's does
    expected = ref.conv2d_reference(x, wt, b, s, p, d, group)
    g = geometry(h, w, k, s, p, d)
    for relu, slope in ((0, 0.0), (1, 0.0), (1, 0.25)):
        y = np.full((n, m, g[-2] * g[-1]), np.nan, np.float32)
        i2c.conv_bands(x, wt.reshape(m, -1), b, relu, np.float32(slope), *g[:-2], group, band, y)
        want = expected if not relu else np.maximum(expected, 0) + slope * np.minimum(expected, 0)
        close(y.reshape(expected.shape), want, atol=1e-5)


@pytest.mark.parametrize("n,c,plane,m,rows,cols", [
    pytest.param(1, 3, 16, 2, 2, 16, id="one-block"),
    pytest.param(2, 5, 50, 7, 3, 16, id="partial-bands-both-ways"),
    pytest.param(3, 16, 49, 40, 16, 49, id="row-bands-only"),
    pytest.param(1, 32, 784, 24, 24, 208, id="mobilenet-shape"),
])
def test_pointwise_convolution_in_blocks(n, c, plane, m, rows, cols):
    """pointwise_bands (SGEMM and bias/ReLU per block of channels x
    positions) against the reference 1x1 convolution, with and without a
    leaky ReLU; every output value is written."""
    from netdef.kernels import gemm

    if not gemm.available():
        pytest.skip("pointwise_bands calls numpy's OpenBLAS, which cannot be called here")
    rng = np.random.default_rng(6)
    x, wt, b = rand(rng, n, c, plane), rand(rng, m, c, 1, 1), rand(rng, m)
    x[-1, -1, 0] = np.nan            # the ReLU keeps NaN, as Caffe's does
    expected = ref.conv2d_reference(x.reshape(n, c, 1, plane), wt, b, 1, 0).reshape(n, m, plane)
    for relu, slope in ((0, 0.0), (1, 0.0), (1, 0.25)):
        y = np.full((n, m, plane), np.nan, np.float32)
        i2c.pointwise_bands(x, wt.reshape(m, c), b, relu, np.float32(slope), rows, cols, y)
        want = expected if not relu else np.maximum(expected, 0) + slope * np.minimum(expected, 0)
        close(y, want, atol=1e-5)


# ---------------------------------------------------------------- pooling

# (N, C, H, W, kernel, stride, pad, ceil_mode)
POOL_CASES = [
    pytest.param(1, 2, 5, 5, 2, 2, 0, True, id="tiny"),
    pytest.param(2, 3, 6, 7, 3, 2, 0, True, id="ceil-overhang"),
    pytest.param(1, 2, 5, 5, 2, 2, 1, True, id="tiny-pad-last-window-dropped"),
    pytest.param(2, 2, 7, 7, 3, 2, 1, True, id="pad"),
    pytest.param(1, 3, 112, 112, 3, 2, 0, True, id="googlenet-pool1"),
    pytest.param(1, 2, 13, 11, 3, 2, 0, False, id="floor"),
    pytest.param(2, 2, 9, 10, 2, 4, 0, True, id="stride>kernel-empty-window"),
    pytest.param(1, 2, 10, 9, (3, 2), (2, 3), (1, 1), True, id="asymmetric"),
    pytest.param(2, 3, 7, 6, (7, 6), 1, 0, True, id="global"),
    # the fast paths of max_pool_3x3_values: stride 2, 1 and other,
    # with border windows (pad), a ceil-mode overhang, and parallel-size calls
    pytest.param(2, 40, 27, 27, 3, 2, 0, True, id="3x3s2-parallel"),
    pytest.param(1, 4, 14, 15, 3, 1, 1, True, id="3x3s1-pad"),
    pytest.param(1, 3, 16, 17, 3, 3, 1, True, id="3x3s3-pad"),
    pytest.param(1, 2, 10, 12, 3, 2, 2, True, id="3x3s2-pad2-overhang"),
    pytest.param(1, 2, 10, 12, (3, 2), (2, 1), (0, 1), False, id="3x2-mixed"),
]


def _pool_geometry(h, w, k, s, p, ceil_mode):
    (kh, kw), (sh, sw), (ph, pw) = map(pair, (k, s, p))
    oh, ow = ref.pool_out(h, kh, sh, ph, ceil_mode), ref.pool_out(w, kw, sw, pw, ceil_mode)
    return (kh, kw, sh, sw, ph, pw), oh, ow


@pytest.mark.parametrize("n,c,h,w,k,s,p,ceil_mode", POOL_CASES)
def test_max_pool_forward_and_backward(n, c, h, w, k, s, p, ceil_mode):
    rng = np.random.default_rng(4)
    # small integers make ties common: the first maximum in row-major order wins
    x = rng.integers(-3, 4, (n, c, h, w)).astype(np.float32)
    g, oh, ow = _pool_geometry(h, w, k, s, p, ceil_mode)
    out = np.empty((n, c, oh, ow), np.float32)
    arg = np.empty((n, c, oh, ow), np.int64)
    pooling.max_pool_forward(x, *g, out, arg)
    want, want_arg = ref.pool_reference(x, "max", k, s, p, ceil_mode, return_argmax=True)
    close(out, want, rtol=0, atol=0)
    np.testing.assert_array_equal(arg, want_arg)
    values_only = np.empty_like(out)
    pooling.max_pool_forward_values(x, *g, values_only)
    close(values_only, want, rtol=0, atol=0)
    if g[:2] == (3, 3):
        values_3x3 = np.empty_like(out)
        pooling.max_pool_3x3_values(x, *g[2:], values_3x3)
        close(values_3x3, want, rtol=0, atol=0)

    top = rand(rng, n, c, oh, ow)
    bottom = np.full((n, c, h, w), 5.0, np.float32)
    pooling.max_pool_backward(top, arg, bottom)
    expected = np.zeros((n, c, h * w))
    for idx in np.ndindex(n, c, oh, ow):
        if want_arg[idx] >= 0:
            expected[idx[0], idx[1], want_arg[idx]] += top[idx]
    close(bottom, expected.reshape(n, c, h, w))


@pytest.mark.parametrize("n,c,h,w,k,s,p,ceil_mode", POOL_CASES)
def test_ave_pool_forward_and_backward(n, c, h, w, k, s, p, ceil_mode):
    rng = np.random.default_rng(5)
    x = rand(rng, n, c, h, w)
    g, oh, ow = _pool_geometry(h, w, k, s, p, ceil_mode)
    out = np.empty((n, c, oh, ow), np.float32)
    with np.errstate(invalid="ignore"):
        pooling.ave_pool_forward(x, *g, out)
    want = ref.pool_reference(x, "ave", k, s, p, ceil_mode)
    close(out, want)

    # the backward is the adjoint of the (linear) forward on finite outputs
    top = np.where(np.isnan(want), 0.0, rand(rng, n, c, oh, ow)).astype(np.float32)
    bottom = np.full((n, c, h, w), 5.0, np.float32)
    pooling.ave_pool_backward(top, *g, bottom)
    lhs = np.nansum(want * top)
    assert np.sum(x.astype(np.float64) * bottom) == pytest.approx(lhs, rel=1e-5, abs=1e-5)


def test_max_pool_of_nan_and_minus_inf_window_is_caffe_lowest():
    x = np.array([[[[np.nan, -np.inf], [-np.inf, np.nan]]]], np.float32)
    out = np.empty((1, 1, 1, 1), np.float32)
    arg = np.empty((1, 1, 1, 1), np.int64)
    pooling.max_pool_forward(x, 2, 2, 1, 1, 0, 0, out, arg)
    assert out[0, 0, 0, 0] == -np.finfo(np.float32).max and arg[0, 0, 0, 0] == -1


# ---------------------------------------------------------------- LRN


@pytest.mark.parametrize("n,c,h,w,size", [
    pytest.param(1, 4, 2, 3, 3, id="tiny"),
    pytest.param(2, 7, 5, 4, 5, id="size5"),
    pytest.param(1, 3, 3, 3, 5, id="size>C"),
    pytest.param(2, 6, 2, 2, 1, id="size1"),
    pytest.param(1, 9, 4, 5, 4, id="even-size"),
    pytest.param(2, 16, 16, 16, 5, id="parallel-path"),
    # planes of 2115 positions: two runs per image (lrn._SPAN), the last one
    # shorter, on the parallel build (33840 elements)
    pytest.param(2, 8, 47, 45, 5, id="runs-of-a-plane"),
])
@pytest.mark.parametrize("beta", [0.75, 0.6])  # 0.75 has its own fast path
def test_lrn_across_forward_and_backward(n, c, h, w, size, beta):
    rng = np.random.default_rng(6)
    x = rand(rng, n, c, h, w, scale=2.0)
    alpha, k = 0.7, 2.0
    out, scale = np.empty_like(x), np.empty_like(x)
    lrn.lrn_across_forward(x, size, alpha, beta, k, out, scale)
    close(out, ref.lrn_reference(x, size, alpha, beta, k, "across"))
    close(out, x * scale ** -beta)

    # directional derivative of <lrn(x), g> against central differences of the reference
    g, v = rand(rng, n, c, h, w), rand(rng, n, c, h, w)
    dx = np.empty_like(x)
    lrn.lrn_across_backward(x, out, scale, g, size, alpha, beta, dx)
    x64, eps = x.astype(np.float64), 1e-5

    def loss(z):
        return np.sum(ref.lrn_reference(z, size, alpha, beta, k, "across") * g)

    numeric = (loss(x64 + eps * v) - loss(x64 - eps * v)) / (2 * eps)
    assert np.sum(dx * v.astype(np.float64)) == pytest.approx(numeric, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("n,c,h,w,size", [
    pytest.param(1, 2, 4, 3, 3, id="tiny"),
    pytest.param(2, 3, 6, 7, 5, id="size5"),
    pytest.param(1, 2, 2, 3, 5, id="size>H"),
    pytest.param(1, 1, 3, 3, 1, id="size1"),
    pytest.param(2, 4, 24, 24, 3, id="parallel-path"),
])
@pytest.mark.parametrize("beta", [0.75, 0.6])
def test_lrn_within_forward_and_backward(n, c, h, w, size, beta):
    rng = np.random.default_rng(7)
    x = rand(rng, n, c, h, w, scale=2.0)
    out, scale = np.empty_like(x), np.empty_like(x)
    lrn.lrn_within_forward(x, size, 0.9, beta, out, scale)
    close(out, ref.lrn_reference(x, size, 0.9, beta, 123.0, "within"))  # k is ignored
    # odd size: the border divisor is still size*size (padding counts as zeros)
    xp = np.pad(x.astype(np.float64) ** 2, ((0, 0), (0, 0), ((size - 1) // 2,) * 2,
                                             ((size - 1) // 2,) * 2))
    window_sum = sum(xp[:, :, i:i + h, j:j + w] for i in range(size) for j in range(size))
    close(scale, 1.0 + 0.9 * window_sum / (size * size))

    # directional derivative of <lrn(x), g> against central differences of the reference
    g, v = rand(rng, n, c, h, w), rand(rng, n, c, h, w)
    dx = np.full_like(x, np.nan)        # must be overwritten
    lrn.lrn_within_backward(x, out, scale, g, size, 0.9, beta, dx)
    x64, eps = x.astype(np.float64), 1e-5

    def loss(z):
        return np.sum(ref.lrn_reference(z, size, 0.9, beta, 1.0, "within") * g)

    numeric = (loss(x64 + eps * v) - loss(x64 - eps * v)) / (2 * eps)
    assert np.sum(dx * v.astype(np.float64)) == pytest.approx(numeric, rel=1e-4, abs=1e-4)


# ---------------------------------------------------------------- elementwise

SPECIALS = np.array([0.0, -0.0, 1e-8, -1e-8, 30.0, -30.0, 100.0, -100.0, np.inf, -np.inf],
                    np.float32)

# (kernel, extra scalar args, reference kind, reference params, domain)
NEURONS = [
    (ew.relu, (0.0,), "ReLU", {}, "all"),
    (ew.relu, (0.1,), "ReLU", {"negative_slope": 0.1}, "all"),
    (ew.sigmoid, (), "Sigmoid", {}, "all"),
    (ew.tanh, (), "TanH", {}, "all"),
    (ew.elu, (0.5,), "ELU", {"alpha": 0.5}, "all"),
    (ew.absval, (), "AbsVal", {}, "all"),
    (ew.bnll, (), "BNLL", {}, "all"),
    (ew.threshold, (0.25,), "Threshold", {"threshold": 0.25}, "all"),
    (ew.clip, (-0.5, 0.75), "Clip", {"min": -0.5, "max": 0.75}, "all"),
    (ew.swish, (1.5,), "Swish", {"beta": 1.5}, "finite"),
    (ew.power, (2.0, 0.5, 1.0), "Power", {"power": 2.0, "scale": 0.5, "shift": 1.0}, "finite"),
    (ew.power, (0.5, -1.0, 3.0), "Power", {"power": 0.5, "scale": -1.0, "shift": 3.0}, "finite"),
    (ew.power, (1.0, 2.0, -1.0), "Power", {"power": 1.0, "scale": 2.0, "shift": -1.0}, "finite"),
    (ew.power, (3.0, 0.0, 2.0), "Power", {"power": 3.0, "scale": 0.0, "shift": 2.0}, "finite"),
    (ew.power, (0.0, 1.0, -2.0), "Power", {"power": 0.0, "scale": 1.0, "shift": -2.0}, "finite"),
    (ew.exp_base, (1.0, 1.0, 0.0), "Exp", {}, "moderate"),
    (ew.exp_base, (np.log(2.0), 0.5, 1.0), "Exp", {"base": 2.0, "scale": 0.5, "shift": 1.0},
     "moderate"),
    (ew.log_base, (1.0, 1.0, 0.0), "Log", {}, "positive"),
    (ew.log_base, (1.0 / np.log(10.0), 2.0, 0.5), "Log",
     {"base": 10.0, "scale": 2.0, "shift": 0.5}, "positive"),
]


def _neuron_input(rng, domain, tiny):
    x = rand(rng, 7 if tiny else 1001, scale=3.0)
    if domain == "all":
        x = np.concatenate([x, SPECIALS])
    elif domain == "finite":
        x = np.concatenate([x, SPECIALS[:6]])
    elif domain == "positive":
        x = np.abs(x) + np.float32(0.01)
    return np.ascontiguousarray(x)


@pytest.mark.parametrize("in_place", [False, True], ids=["out", "inplace"])
@pytest.mark.parametrize("size", ["tiny", "big"])
@pytest.mark.parametrize("fn,args,kind,params,domain", NEURONS,
                         ids=[f"{n[2]}{i}" for i, n in enumerate(NEURONS)])
def test_neuron_kernels(fn, args, kind, params, domain, size, in_place):
    rng = np.random.default_rng(8)
    x = _neuron_input(rng, domain, size == "tiny")
    want = ref.neuron_reference(kind, x, **params)
    out = x.copy() if in_place else np.empty_like(x)
    src = out if in_place else x
    with np.errstate(all="ignore"):
        fn(src, *args, out)
    close(out, want, rtol=2e-6 if kind != "Exp" else 1e-5, atol=1e-6)


def test_neuron_caffe_corner_cases():
    x = np.array([np.nan, -np.inf, -2.0], np.float32)
    out = np.empty_like(x)
    with np.errstate(invalid="ignore"):
        ew.relu(x, 0.0, out)  # Caffe: max(x, 0) + 0 * min(x, 0) is NaN at -inf
    np.testing.assert_array_equal(out, [np.nan, np.nan, 0.0])
    ew.clip(x, -1.0, 1.0, out)  # std::max(lo, std::min(x, hi)): NaN -> lo
    np.testing.assert_array_equal(out, [-1.0, -1.0, -1.0])
    with np.errstate(invalid="ignore"):
        ew.power(x, 0.5, 1.0, 0.0, out)  # negative base, fractional power -> NaN
    assert np.isnan(out[2])


@pytest.mark.parametrize("size", ["tiny", "big"])
def test_neuron_backward_kernels(size):
    rng = np.random.default_rng(9)
    n = 9 if size == "tiny" else 999
    x, dy = rand(rng, n, scale=2.0), rand(rng, n)
    x64 = x.astype(np.float64)
    dx = np.empty_like(x)

    ew.relu_backward(x, dy, 0.2, dx)
    close(dx, dy * np.where(x64 > 0, 1.0, 0.2))
    y = np.empty_like(x)
    ew.sigmoid(x, y)
    ew.sigmoid_backward(y, dy, dx)
    s = ref.sigmoid_reference(x64)
    close(dx, dy * s * (1 - s))
    ew.tanh(x, y)
    ew.tanh_backward(y, dy, dx)
    close(dx, dy * (1 - np.tanh(x64) ** 2))
    ew.elu(x, 0.7, y)
    ew.elu_backward(x, y, dy, 0.7, dx)
    close(dx, dy * np.where(x64 > 0, 1.0, 0.7 * np.exp(x64)))


@pytest.mark.parametrize("shape", [pytest.param((1, 3, 4), id="tiny"), (3, 5, 37)])
def test_prelu_forward_and_backward(shape):
    rng = np.random.default_rng(10)
    x, dy, slope = rand(rng, *shape), rand(rng, *shape), rand(rng, shape[1])
    out = np.empty_like(x)
    ew.prelu(x, slope, out)
    close(out, ref.prelu_reference(x, slope))
    inplace = x.copy()
    ew.prelu(inplace, slope, inplace)
    close(inplace, out)
    dx = np.empty_like(x)
    slope_diff = np.ones(shape[1], np.float32)  # parameter diffs accumulate
    ew.prelu_backward(x, dy, slope, dx, slope_diff)
    neg = x <= 0
    close(dx, np.where(neg, slope[None, :, None] * dy, dy))
    close(slope_diff, 1.0 + (dy * x * neg).astype(np.float64).sum(axis=(0, 2)), atol=1e-5)


@pytest.mark.parametrize("alias", [None, "a", "b"])
def test_eltwise_sum_pair_scales_both_inputs_in_place_or_not(alias):
    rng = np.random.default_rng(12)
    a, b = rng.standard_normal(1001).astype(np.float32), rng.standard_normal(1001).astype(np.float32)
    want = ref.eltwise_reference([a, b], "SUM", [0.5, -2.0])[0]
    out = {"a": a, "b": b}.get(alias, np.full_like(a, np.nan))
    ew.eltwise_sum_pair(a, 0.5, b, -2.0, out)
    close(out, want)


@pytest.mark.parametrize("alias", [None, "x0", "x1"])
@pytest.mark.parametrize("shape", [(2, 3, 5), pytest.param((1, 3, 40000), id="split-planes")])
def test_channel_sum_affine_relu(alias, shape):
    rng = np.random.default_rng(14)
    x0, x1 = rand(rng, *shape), rand(rng, *shape)
    x0.flat[0] = np.nan                  # the ReLU keeps NaN, as Caffe's does
    scale, shift = rand(rng, shape[1]), rand(rng, shape[1])
    s = (0.5 * x0.astype(np.float64) + 2.0 * x1) * scale[None, :, None] + shift[None, :, None]
    want = np.maximum(s, 0) + 0.1 * np.minimum(s, 0)
    out = {"x0": x0, "x1": x1}.get(alias, np.full(shape, np.nan, np.float32))
    normalization.channel_sum_affine_relu(x0, 0.5, x1, 2.0, scale, shift, 1, np.float32(0.1), out)
    close(out, want)


@pytest.mark.parametrize("planes,size", [(3, 1), (7, 49), pytest.param(1280, 64, id="parallel")])
def test_global_ave_pool_is_the_plane_mean(planes, size):
    x = np.random.default_rng(13).standard_normal((planes, size)).astype(np.float32)
    out = np.full(planes, np.nan, np.float32)
    pooling.global_ave_pool(x, out)
    close(out, x.astype(np.float64).mean(axis=1))


@pytest.mark.parametrize("n", [pytest.param(5, id="tiny"), 3001])
def test_eltwise_k_inputs(n):
    rng = np.random.default_rng(11)
    xs = [rng.integers(-2, 3, n).astype(np.float32) for _ in range(4)]  # ties on purpose
    coeff = [1.0, -0.5, 2.0, 0.25]
    out = np.zeros(n, np.float32)
    for x, c in zip(xs, coeff, strict=True):
        ew.eltwise_sum(out, x, c)
    close(out, ref.eltwise_reference(xs, "SUM", coeff)[0])

    out = xs[0].copy()
    for x in xs[1:]:
        ew.eltwise_prod(out, x)
    close(out, ref.eltwise_reference(xs, "PROD")[0])

    mask = np.empty(n, np.int64)
    ew.eltwise_max_pair(xs[0], xs[1], out, mask)
    for i, x in enumerate(xs[2:], start=2):
        ew.eltwise_max(out, x, mask, i)
    want, want_mask = ref.eltwise_reference(xs, "MAX")
    close(out, want)
    np.testing.assert_array_equal(mask, want_mask)
    dy, dx = rand(rng, n), np.empty(n, np.float32)
    ew.eltwise_max_backward(dy, mask, 2, dx)
    close(dx, np.where(want_mask == 2, dy, 0.0))


# ---------------------------------------------------------------- normalization, softmax


@pytest.mark.parametrize("shape", [pytest.param((2, 3, 4), id="tiny"), (4, 16, 49),
                                   pytest.param((4, 32, 300), id="parallel-path")])
def test_batchnorm_by_mean_var_and_affine(shape):
    rng = np.random.default_rng(12)
    x = rand(rng, *shape, scale=3.0) + np.float32(5.0)
    mean, var = np.empty(shape[1], np.float32), np.empty(shape[1], np.float32)
    normalization.channel_mean_var(x, mean, var)
    x64 = x.astype(np.float64)
    close(mean, x64.mean(axis=(0, 2)))
    close(var, x64.var(axis=(0, 2)))

    inv = (1.0 / np.sqrt(var.astype(np.float64) + 1e-5)).astype(np.float32)
    out = np.empty_like(x)
    normalization.channel_affine(x, inv, (-mean * inv).astype(np.float32), out)
    close(out, ref.batchnorm_reference(x, eps=1e-5), atol=1e-5)
    # inference with stored blobs scaled by the moving-average factor, in place
    normalization.channel_affine(x, inv, (-mean * inv).astype(np.float32), x)
    close(x, ref.batchnorm_reference(x64, mean * 4.0, var * 4.0, 1e-5, 4.0), atol=1e-5)


@pytest.mark.parametrize("slope", [None, 0.0, 0.2])
@pytest.mark.parametrize("shape", [(2, 3, 5), pytest.param((2, 16, 4096), id="parallel-path")])
def test_channel_affine_relu_is_relu_of_the_affine_map(shape, slope):
    rng = np.random.default_rng(13)
    x = rand(rng, *shape, scale=2.0)
    x[0, 0, :2] = [np.nan, -np.inf]
    scale, shift = rand(rng, shape[1]), rand(rng, shape[1])
    want = x.astype(np.float64) * scale[:, None] + shift[:, None]
    if slope is not None:       # std::max(v, 0) + slope * std::min(v, 0): NaN stays NaN
        with np.errstate(invalid="ignore"):     # and 0 * -inf is NaN, as in Caffe
            want = np.where(want < 0, 0, want) + slope * np.where(0 < want, 0, want)
    relu = 0 if slope is None else 1
    out = np.full_like(x, np.nan)
    normalization.channel_affine_relu(x, scale, shift, relu, np.float32(slope or 0), out)
    close(out, want, atol=1e-6)
    assert np.isnan(out[0, 0, 0])
    normalization.channel_affine_relu(x, scale, shift, relu, np.float32(slope or 0), x)  # in place
    close(x, want, atol=1e-6)


@pytest.mark.parametrize("eps", [1e-9, 0.5])  # 0.5 tells sqrt(var) + eps from sqrt(var + eps)
@pytest.mark.parametrize("normalize_variance", [1, 0])
@pytest.mark.parametrize("across", [False, True], ids=["per-channel", "across"])
@pytest.mark.parametrize("shape", [pytest.param((2, 3, 2, 2), id="tiny"), (3, 4, 7, 9),
                                   pytest.param((2, 8, 48, 48), id="parallel-path")])
def test_mvn(shape, across, normalize_variance, eps):
    rng = np.random.default_rng(13)
    x = rand(rng, *shape, scale=2.0) + np.float32(1.0)
    x[0, 0] = 3.0  # a constant plane: divides by eps only, stays 0
    rows = shape[0] if across else shape[0] * shape[1]
    out = np.empty_like(x)
    denom = np.empty(rows, np.float32)
    normalization.mvn_forward(x.reshape(rows, -1), normalize_variance, eps,
                              out.reshape(rows, -1), denom)
    want = ref.mvn_reference(x, bool(normalize_variance), across, eps)
    close(out, want, atol=1e-5)
    normalization.mvn_forward(x.reshape(rows, -1), normalize_variance, eps,
                              x.reshape(rows, -1), denom)  # in place
    close(x, want, atol=1e-5)


@pytest.mark.parametrize("shape", [pytest.param((2, 3, 1), id="tiny"), (3, 1000, 1),
                                   pytest.param((2, 21, 1100), id="parallel-path"), (1, 1, 5),
                                   # rows of SSD's per-prior softmax (inner axis 1): the
                                   # serial build, then several chunks on the parallel one
                                   pytest.param((700, 2, 1), id="rows"),
                                   pytest.param((1917, 21, 1), id="rows-parallel"),
                                   pytest.param((1, 7, 1), id="one-row")])
def test_softmax(shape):
    rng = np.random.default_rng(14)
    x = rand(rng, *shape, scale=5.0)
    x[0, 0, 0] = 1000.0  # no overflow: the max is subtracted first
    want = ref.softmax_reference(x, axis=1)
    out = np.empty_like(x)
    softmax.softmax(x, out)
    close(out, want)
    softmax.softmax(x, x)  # in place
    close(x, want)


# ---------------------------------------------------------------- detection (NMS)

def _nms_python(boxes, order, threshold, eta):
    """Greedy NMS straight from the fork's loop, with reference._iou."""
    keep = []
    for i in order:
        if all(ref._iou(boxes[i], boxes[j]) <= threshold for j in keep):
            keep.append(int(i))
            if eta < 1 and threshold > 0.5:
                threshold *= eta
    return keep


@pytest.mark.parametrize("n,threshold,eta", [(6, 0.45, 1.0), (40, 0.3, 1.0), (40, 0.7, 0.9),
                                            (30, 0.0, 1.0)],
                         ids=["tiny", "plain", "adaptive", "zero-threshold"])
def test_nms_keep(n, threshold, eta):
    rng = np.random.default_rng(n)
    xy = rng.uniform(0, 0.6, (n, 2))
    wh = rng.uniform(0.05, 0.5, (n, 2))
    boxes = np.ascontiguousarray(np.concatenate([xy, xy + wh], axis=1), dtype=np.float32)
    boxes[0] = boxes[0, [2, 3, 0, 1]]          # an inverted box has no area
    order = rng.permutation(n).astype(np.int64)
    keep = np.empty(n, np.int64)
    count = det.nms_keep(boxes, order, threshold, eta, keep)
    assert list(keep[:count]) == _nms_python(boxes.astype(np.float64), order, threshold, eta)
    assert 0 < count <= n


# ---------------------------------------------------------------- package contract


def _public_dispatchers(module):
    return sorted(n for n, f in vars(module).items()
                  if not n.startswith("_") and hasattr(f, "py_func"))


@pytest.mark.skipif(JIT_DISABLED, reason="dispatchers exist only with the JIT on")
def test_all_kernels_are_cached_njit_dispatchers():
    from numba.core.caching import FunctionCache
    from numba.core.registry import CPUDispatcher

    from netdef.kernels import _jit

    listed = {}
    for module, name in kernels.ALL_KERNELS:
        listed.setdefault(module, []).append(name)
    assert len(set(kernels.ALL_KERNELS)) == len(kernels.ALL_KERNELS)
    for module, names in listed.items():
        mod = importlib.import_module(f"netdef.kernels.{module}")
        assert sorted(names) == _public_dispatchers(mod), module
        for name in names:
            disp = getattr(mod, name)
            assert isinstance(disp, CPUDispatcher), name
            assert isinstance(disp._cache, FunctionCache), f"{name} lacks cache=True"
            # fastmath everywhere except the kernels that only copy and compare
            exact = {"im2col", "col2im", "max_pool_forward", "max_pool_forward_values",
                     "max_pool_3x3_values", "max_pool_backward"}
            want = False if name in exact else set(_jit.FASTMATH)
            assert disp.targetoptions["fastmath"] == want, name
            serial = getattr(disp, "serial", None)
            if serial is not None:
                assert serial.targetoptions["fastmath"] == want, name
            assert "prange" not in inspect.getsource(disp.py_func) or \
                disp.targetoptions.get("parallel"), f"{name} uses prange without parallel"
    kernel_files = {p.stem for p in (ROOT / "netdef" / "kernels").glob("*.py")
                    if not p.stem.startswith("_")}
    assert kernel_files == set(listed)


def test_import_netdef_kernels_does_not_import_numba():
    code = "import netdef.kernels, sys; print('numba' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.stdout.strip() == "False"


@pytest.mark.skipif(JIT_DISABLED, reason="already running without the JIT")
def test_tiny_cases_pass_with_jit_disabled():
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          str(pathlib.Path(__file__)), "-k", "tiny"],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]


def test_warmup_compiles_every_kernel_once():
    seen = []
    names, seconds = kernels.warmup(progress=seen.append)
    assert names == seen == [f"{m}.{n}" for m, n in kernels.ALL_KERNELS]
    assert seconds >= 0.0
    if not JIT_DISABLED:
        # every call in this file used the documented types: one signature each
        multi = {k: v for k, v in kernels.compiled_signatures().items() if len(v) != 1}
        assert not multi


def test_max_pool_values_3x3_fast_path_keeps_caffe_nan_rule():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 9, 9)).astype(np.float32)
    x[0, 0, ::2, 1::3] = np.nan
    x[0, 1, 2:5, 2:5] = np.nan                  # window (1, 1) is all NaN
    x[0, 1, 0, 0] = -np.inf
    out = np.empty((1, 2, 4, 4), np.float32)
    want = np.empty_like(out)
    pooling.max_pool_3x3_values(x, 2, 2, 0, 0, out)
    pooling.max_pool_forward(x, 3, 3, 2, 2, 0, 0, want, np.empty(out.shape, np.int64))
    np.testing.assert_array_equal(out, want)
    assert not np.isnan(out).any()
    assert out[0, 1, 1, 1] == np.float32(-3.4028234663852886e38)


def test_max_pool_values_only_keeps_caffe_nan_rule():
    # NaN never wins a window (Caffe's strict >); a window of only NaN gives -FLT_MAX.
    x = np.array([[[[np.nan, 1.0, np.nan], [2.0, np.nan, 0.5], [np.nan, np.nan, np.nan]]]],
                 np.float32)
    out = np.empty((1, 1, 2, 2), np.float32)
    arg = np.empty((1, 1, 2, 2), np.int64)
    pooling.max_pool_forward_values(x, 2, 2, 1, 1, 0, 0, out)
    want = np.empty_like(out)
    pooling.max_pool_forward(x, 2, 2, 1, 1, 0, 0, want, arg)
    np.testing.assert_array_equal(out, want)
    assert out[0, 0, 0, 0] == 2.0 and out[0, 0, 1, 1] == 0.5


def test_bias_relu_is_relu_of_the_biased_rows():
    rng = np.random.default_rng(9)
    y = rng.standard_normal((5, 37)).astype(np.float32)
    y[0, :3] = (np.nan, np.inf, -np.inf)
    b = rng.standard_normal(5).astype(np.float32)
    v = y + b[:, None]
    want = np.empty_like(v)
    ew.relu(v.reshape(-1), 0.2, want.reshape(-1))
    ew.bias_relu(y, b, 0.2)
    np.testing.assert_array_equal(y, want)


# ------------------------------------------------------------------ gemm ----
from netdef.kernels import gemm  # noqa: E402

# (a, b) builders: sizes chosen to take each path of gemm.matmul
_R = np.random.default_rng(21)


def _m(*shape):
    return _R.standard_normal(shape).astype(np.float32)


GEMM_CASES = {
    "tiny": lambda: (_m(8, 9), _m(9, 10)),                       # serial build
    "rows": lambda: (_m(300, 70), _m(70, 900)),                   # bands of rows
    "columns": lambda: (_m(20, 64), _m(64, 1500)),                # bands of columns
    "stack": lambda: (_m(36, 32, 24), _m(36, 24, 200)),           # one product per task
    "stack-of-one": lambda: (_m(1, 64, 80), _m(1, 80, 300)),
    "shared-a": lambda: (_m(48, 80), _m(3, 80, 200)),             # 2-D times a stack
    "transposed": lambda: (_m(90, 120).T, _m(300, 90).T),
    "row-vector": lambda: (_m(1, 900), _m(900, 700)),             # SGEMV over b
    "row-vector-bt": lambda: (_m(1, 900), _m(700, 900).T),        # InnerProduct's w.T
    "column-vector": lambda: (_m(700, 900), _m(900, 1)),
    "column-vector-at": lambda: (_m(900, 700).T, _m(1, 900).T),
    "short": lambda: (_m(3, 200), _m(200, 300)),                  # np.matmul's
    "strided": lambda: (_m(40, 100)[:, ::2], _m(50, 60)),          # no unit stride
}
# the cases np.matmul serves even where the pool can run products
NUMPY_CASES = {"short", "strided"}


@pytest.mark.parametrize("accumulate", [False, True], ids=["set", "accumulate"])
@pytest.mark.parametrize("case", list(GEMM_CASES))
def test_gemm_matches_float64_product(case, accumulate, monkeypatch):
    a, b = GEMM_CASES[case]()
    want = np.matmul(a.astype(np.float64), b.astype(np.float64))
    out = _m(*want.shape)
    if accumulate:
        want = want + out
    else:
        out[...] = np.nan          # beta = 0 must overwrite, not scale, what was there
    if gemm.available() and case not in NUMPY_CASES:
        # the pool must really serve it: numpy's fallback is not allowed here
        monkeypatch.setattr(gemm, "_numpy", lambda *args: pytest.fail("fell back to numpy"))
    gemm.matmul(a, b, out, accumulate=accumulate)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4 * np.sqrt(a.shape[-1]))


def test_gemm_writes_into_views_and_leaves_the_rest():
    big = np.full((3, 50, 40), 7.0, np.float32)
    a, b = _m(50, 30), _m(30, 20)
    gemm.matmul(a, b, big[1, :, 10:30])          # rows 40 floats apart
    np.testing.assert_allclose(big[1, :, 10:30], a.astype(np.float64) @ b, rtol=1e-4,
                               atol=1e-4)
    assert (big[0] == 7).all() and (big[2] == 7).all()
    assert (big[1, :, :10] == 7).all() and (big[1, :, 30:] == 7).all()
    column = np.full((60, 3), 7.0, np.float32)
    m, v = _m(60, 500), _m(500, 1)
    gemm.matmul(m, v, column[:, 1:2])            # SGEMV into a strided column
    np.testing.assert_allclose(column[:, 1], (m.astype(np.float64) @ v)[:, 0], rtol=1e-4,
                               atol=1e-3)
    assert (column[:, 0] == 7).all() and (column[:, 2] == 7).all()


def test_gemm_can_be_turned_off():
    code = ("import numpy as np, netdef\nfrom netdef.kernels import gemm, _jit\n"
            "a = np.ones((20, 30), np.float32); out = np.empty((20, 40), np.float32)\n"
            "gemm.matmul(a, np.ones((30, 40), np.float32), out)\n"
            "print(gemm.available(), _jit.POOL_GEMM, float(out[3, 4]))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={**os.environ, "NETDEF_GEMM": "numpy", "PYTHONPATH": str(ROOT)},
                         check=True)
    assert res.stdout.split() == ["False", "False", "30.0"]
