"""Per-channel affine maps and statistics: BatchNorm, Scale, Bias, MVN.

Blobs are viewed by the layer as ``x3`` (outer, C, inner): for an NCHW blob
normalised over axis 1 that is (N, C, H*W).  Statistics accumulate in
float64; results are written as float32.

Dtypes: arrays float32 C-contiguous (x3/out3 3-D, per-channel vectors 1-D,
x2/out2 2-D); eps a Python float; normalize_variance an int 0/1 (int64,
not bool, so it shares the one compiled signature).
"""
from __future__ import annotations

import numpy as np

from netdef.kernels._jit import helper, kernel, parallel_kernel, prange


@kernel
def channel_affine(x3, scale, shift, out3):
    """out3[o, c, i] = x3[o, c, i] * scale[c] + shift[c]; out3 may be x3.

    BatchNorm inference (scale = 1/sqrt(var+eps), shift = -mean*scale),
    Scale and Bias all reduce to this.  Serial: it is memory-bound (0.06 ms
    for 0.8 M elements), see elementwise.py.
    """
    outer, n_ch, inner = x3.shape
    for o in range(outer):
        for c in range(n_ch):
            a = scale[c]
            b = shift[c]
            for i in range(inner):
                out3[o, c, i] = x3[o, c, i] * a + b


@helper
def _affine_relu_plane(x3, o, c, lo, hi, scale, shift, relu, slope, out3):
    """Elements lo .. hi-1 of plane (o, c)."""
    a = scale[c]
    b = shift[c]
    zero = np.float32(0.0)
    src, dst = x3[o, c, lo:hi], out3[o, c, lo:hi]
    if relu != 0:       # Caffe's std::max(v, 0) + slope * std::min(v, 0): NaN stays NaN
        for i in range(hi - lo):
            v = src[i] * a + b
            dst[i] = (zero if v < zero else v) + slope * (zero if zero < v else v)
    else:
        for i in range(hi - lo):
            dst[i] = src[i] * a + b


# planes longer than this are split between tasks: the face detector's input
# BatchNorm has 3 planes of 90,000, which two threads split 2:1 when whole
_AFFINE_PART = 1 << 14


@helper
def _parts(inner):
    """Tasks per plane of ``inner`` values."""
    return max(1, -(-inner // _AFFINE_PART))


@helper
def _plane_part(t, parts, n_ch, inner):
    """(outer index, channel, lo, hi) of task t: part t % parts of plane t // parts."""
    plane, part = t // parts, t % parts
    size = -(-inner // parts)
    lo = part * size
    return plane // n_ch, plane % n_ch, lo, min(inner, lo + size)


@parallel_kernel
def channel_affine_relu(x3, scale, shift, relu, slope, out3):
    """out3 = x3 * scale[c] + shift[c], then, if ``relu`` (an int) is not 0,
    ReLU with negative slope ``slope`` (float32); out3 may be x3.

    Inference's standalone BatchNorm/Scale(/ReLU) chains in one pass
    (compile/fuse.py FusedAffine): a pre-activation ResNet's BN, Scale and
    ReLU after each sum. Parallel over the outer x C planes.
    """
    outer, n_ch, inner = x3.shape
    parts = _parts(inner)
    for t in prange(outer * n_ch * parts):
        o, c, lo, hi = _plane_part(t, parts, n_ch, inner)
        _affine_relu_plane(x3, o, c, lo, hi, scale, shift, relu, slope, out3)


@helper
def _sum_affine_relu_plane(x0, c0, x1, c1, o, c, lo, hi, scale, shift, relu, slope, out3):
    """Elements lo .. hi-1 of plane (o, c) of (c0 x0 + c1 x1) * scale + shift."""
    a = scale[c]
    b = shift[c]
    k0, k1 = np.float32(c0), np.float32(c1)
    zero = np.float32(0.0)
    s0, s1, dst = x0[o, c, lo:hi], x1[o, c, lo:hi], out3[o, c, lo:hi]
    if relu != 0:
        for i in range(hi - lo):
            v = (k0 * s0[i] + k1 * s1[i]) * a + b
            dst[i] = (zero if v < zero else v) + slope * (zero if zero < v else v)
    else:
        for i in range(hi - lo):
            dst[i] = (k0 * s0[i] + k1 * s1[i]) * a + b


@parallel_kernel
def channel_sum_affine_relu(x0, c0, x1, c1, scale, shift, relu, slope, out3):
    """out3 = (c0 * x0 + c1 * x1) * scale[c] + shift[c], then, if ``relu``
    (an int) is not 0, ReLU with negative slope ``slope`` (float32); out3
    may be x0 or x1. An Eltwise SUM and the BatchNorm/Scale/ReLU chain
    after it in one pass (compile/fuse.py FusedSumAffine): a pre-activation
    ResNet's sums and the activations after them, ResNet-50's sum + ReLU."""
    outer, n_ch, inner = x0.shape
    parts = _parts(inner)
    for t in prange(outer * n_ch * parts):
        o, c, lo, hi = _plane_part(t, parts, n_ch, inner)
        _sum_affine_relu_plane(x0, c0, x1, c1, o, c, lo, hi, scale, shift, relu, slope, out3)


@helper
def _mean_var_channel(x3, c, mean, var):
    outer, inner = x3.shape[0], x3.shape[2]
    count = outer * inner
    acc = 0.0
    for o in range(outer):
        for i in range(inner):
            acc += x3[o, c, i]
    m = acc / count
    acc2 = 0.0
    for o in range(outer):
        for i in range(inner):
            d = x3[o, c, i] - m
            acc2 += d * d
    mean[c] = m
    var[c] = acc2 / count


@parallel_kernel
def channel_mean_var(x3, mean, var):
    """Per-channel mean and biased variance over outer and inner (two passes, float64).

    mean and var are float32 (C,) outputs.  Parallel over channels.
    """
    for c in prange(x3.shape[1]):
        _mean_var_channel(x3, c, mean, var)


@helper
def _sums_channel(x3, dy3, c, dot, total):
    outer, inner = x3.shape[0], x3.shape[2]
    acc = 0.0
    acc_x = 0.0
    for o in range(outer):
        for i in range(inner):
            d = dy3[o, c, i]
            acc += d
            acc_x += d * x3[o, c, i]
    dot[c] = acc_x
    total[c] = acc


@parallel_kernel
def channel_sums(x3, dy3, dot, total):
    """Per channel, over outer and inner: dot[c] = sum(dy3 * x3), total[c] = sum(dy3).

    The reductions of every per-channel backward: Scale's scale gradient
    (dot) and bias gradient (total), Bias (total), BatchNorm's two means.
    Accumulates in float64; dot and total are float32 (C,) outputs, written
    (not added to).  Parallel over channels.
    """
    for c in prange(x3.shape[1]):
        _sums_channel(x3, dy3, c, dot, total)


@kernel
def channel_affine_pair(a3, scale_a, b3, scale_b, shift, out3):
    """out3 = a3 * scale_a[c] + b3 * scale_b[c] + shift[c]; out3 may be a3 or b3.

    BatchNorm's batch-statistics backward, with a = dy, b = the normalised
    output y: dx = (dy - mean(dy) - mean(dy * y) * y) / sqrt(var + eps).
    """
    outer, n_ch, inner = a3.shape
    for o in range(outer):
        for c in range(n_ch):
            sa = scale_a[c]
            sb = scale_b[c]
            t = shift[c]
            for i in range(inner):
                out3[o, c, i] = a3[o, c, i] * sa + b3[o, c, i] * sb + t


@helper
def _mvn_row(x2, r, normalize_variance, eps, out2, denom):
    cols = x2.shape[1]
    acc = 0.0
    for i in range(cols):
        acc += x2[r, i]
    m = acc / cols
    d_r = 1.0
    if normalize_variance != 0:
        acc2 = 0.0
        for i in range(cols):
            d = x2[r, i] - m
            acc2 += d * d
        d_r = np.sqrt(acc2 / cols) + eps
    denom[r] = d_r
    m32 = np.float32(m)
    inv = np.float32(1.0 / d_r)
    for i in range(cols):
        out2[r, i] = (x2[r, i] - m32) * inv


@parallel_kernel
def mvn_forward(x2, normalize_variance, eps, out2, denom):
    """Per row: out = x - mean, then if normalize_variance: / (sqrt(var) + eps).

    Caffe's MVN: biased variance E[(x - mean)^2] and eps added to the
    standard deviation, not to the variance.  Rows are N (across_channels)
    or N*C.  out2 may be x2.  denom (rows,) float32 receives each row's
    divisor, sqrt(var) + eps (1 without normalize_variance), which backward
    needs.  Parallel over rows.
    """
    for r in prange(x2.shape[0]):
        _mvn_row(x2, r, normalize_variance, eps, out2, denom)


@helper
def _mvn_backward_row(y2, dy2, denom, r, normalize_variance, dx2):
    cols = y2.shape[1]
    acc = 0.0
    acc_y = 0.0
    for i in range(cols):
        d = dy2[r, i]
        acc += d
        acc_y += d * y2[r, i]
    mean_d = np.float32(acc / cols)
    if normalize_variance != 0:
        mean_dy = np.float32(acc_y / cols)
        inv = np.float32(1.0 / denom[r])
        for i in range(cols):
            dx2[r, i] = (dy2[r, i] - mean_d - mean_dy * y2[r, i]) * inv
    else:
        for i in range(cols):
            dx2[r, i] = dy2[r, i] - mean_d


@parallel_kernel
def mvn_backward(y2, dy2, denom, normalize_variance, dx2):
    """Caffe's MVN backward per row, from the output y2 and forward's denom:
    dx = (dy - mean(dy) - mean(dy * y) * y) / denom with normalize_variance,
    else dx = dy - mean(dy).

    Exactly Caffe's formula, which is the true gradient only for eps = 0
    (it treats sqrt(var) + eps as sqrt(var)); for Caffe's eps of 1e-9 the
    difference is invisible.  dx2 may be dy2.  Parallel over rows.
    """
    for r in prange(y2.shape[0]):
        _mvn_backward_row(y2, dy2, denom, r, normalize_variance, dx2)
