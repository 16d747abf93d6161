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

from netdef.kernels._jit import PARALLEL_MIN_WORK, kernel, parallel_kernel, prange


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


@kernel
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
    if x3.size < PARALLEL_MIN_WORK:
        for c in range(x3.shape[1]):
            _mean_var_channel(x3, c, mean, var)
    else:
        for c in prange(x3.shape[1]):
            _mean_var_channel(x3, c, mean, var)


@kernel
def _mvn_row(x2, r, normalize_variance, eps, out2):
    cols = x2.shape[1]
    acc = 0.0
    for i in range(cols):
        acc += x2[r, i]
    m = acc / cols
    denom = 1.0
    if normalize_variance != 0:
        acc2 = 0.0
        for i in range(cols):
            d = x2[r, i] - m
            acc2 += d * d
        denom = np.sqrt(acc2 / cols) + eps
    m32 = np.float32(m)
    inv = np.float32(1.0 / denom)
    for i in range(cols):
        out2[r, i] = (x2[r, i] - m32) * inv


@parallel_kernel
def mvn_forward(x2, normalize_variance, eps, out2):
    """Per row: out = x - mean, then if normalize_variance: / (sqrt(var) + eps).

    Caffe's MVN: biased variance E[(x - mean)^2] and eps added to the
    standard deviation, not to the variance.  Rows are N (across_channels)
    or N*C.  out2 may be x2.  Parallel over rows.
    """
    if x2.size < PARALLEL_MIN_WORK:
        for r in range(x2.shape[0]):
            _mvn_row(x2, r, normalize_variance, eps, out2)
    else:
        for r in prange(x2.shape[0]):
            _mvn_row(x2, r, normalize_variance, eps, out2)
