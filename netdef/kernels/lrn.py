"""Local response normalisation, Caffe's two regions.

ACROSS_CHANNELS: the window of channel c is channels
``c - pre .. c + size - 1 - pre`` with ``pre = (size - 1) // 2``, clipped to
[0, C), and

    scale = k + alpha / size * sum(x^2 over the window),  out = x * scale^-beta

WITHIN_CHANNEL (Caffe builds it from square -> average pooling with kernel
``size``, stride 1, pad ``pre`` -> power -> product): scale is
``1 + alpha * avepool(x^2)`` with pooling's ``pool_size`` divisor, and k is
not used.  For odd sizes (the only sizes Caffe's LRN accepts) the divisor is
``size*size`` everywhere, borders included: a window ends at h + pre + 1,
never past ``H + pre``, so the padding counts as zeros.  An even size would
make Caffe's pooling output one row and column short (Caffe rejects it), so
the layer must reject it too.

``scale`` is an output, kept for the backward pass.  ``out`` must not alias
``x`` (neighbours are read after the centre is written).

Dtypes: x/out/scale/top_diff/bottom_diff float32 4-D C-contiguous; size an
int (int64); alpha, beta, k Python floats (float64).  Parallel (from
PARALLEL_MIN_WORK elements) over N*H rows across channels, over N*C planes
within.
"""
from __future__ import annotations

import numpy as np

from netdef.kernels._jit import helper, parallel_kernel, prange


@helper
def _pow_neg_beta(s, nb, three_quarters):
    """s ** nb (nb = -beta).  beta = 0.75, the default and the value in every
    published LRN net, is 1/sqrt(s*sqrt(s)): ~35x faster than powf because
    sqrt vectorises, and within 2 ulp."""
    if three_quarters:
        return np.float32(1.0) / np.sqrt(s * np.sqrt(s))
    return s ** nb


@helper
def _across_span(x, n, lo, hi, size, alpha, beta, k, out, scale, acc):
    """Positions lo .. hi-1 of image n's flattened planes, every channel;
    x, out and scale are (N, C, H*W) views. The window's sum of squares
    slides along the channels, as in Caffe's CPU LRN: the channel entering
    the window is added and the one leaving it subtracted, two operations
    per element instead of ``size``. ``acc`` is a work array (hi - lo,).

    A task takes a long run of each plane rather than one image row: with
    rows (27 values on AlexNet's conv2 output) the kernel touched every
    channel's plane once per short row, and at batch 10 took 13 ms serial
    for norm2 where one image took 0.46 ms."""
    n_ch = x.shape[1]
    count = hi - lo
    pre = (size - 1) // 2
    post = size - pre - 1          # channels after c in c's window
    a = np.float32(alpha / size)
    kk = np.float32(k)
    nb = np.float32(-beta)
    fast = beta == 0.75
    for q in range(count):
        acc[q] = 0.0
    for cc in range(min(post, n_ch)):
        src = x[n, cc, lo:]
        for q in range(count):
            acc[q] += src[q] * src[q]
    for c in range(n_ch):
        enter, leave = c + post, c - pre - 1
        if enter < n_ch:
            src = x[n, enter, lo:]
            for q in range(count):
                acc[q] += src[q] * src[q]
        if leave >= 0:
            src = x[n, leave, lo:]
            for q in range(count):
                acc[q] -= src[q] * src[q]
        src, dst, sc = x[n, c, lo:], out[n, c, lo:], scale[n, c, lo:]
        for q in range(count):
            s = kk + a * acc[q]
            sc[q] = s
            dst[q] = src[q] * _pow_neg_beta(s, nb, fast)


# Cross-channel tasks are runs of at least this many positions of a plane
# (and at most 8 runs per image): long enough for the loops to vectorise and
# the prefetchers to follow each channel, enough tasks for two threads.
_SPAN = 1024


@helper
def _runs(plane):
    """(runs per image, positions per run) for planes of ``plane`` positions."""
    parts = max(1, min(8, plane // _SPAN))
    return parts, -(-plane // parts)


@parallel_kernel
def lrn_across_forward(x, size, alpha, beta, k, out, scale):
    """Cross-channel LRN of x (N, C, H, W) into out and scale."""
    n_img, n_ch = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    parts, span = _runs(plane)
    xf = x.reshape((n_img, n_ch, plane))
    of = out.reshape((n_img, n_ch, plane))
    sf = scale.reshape((n_img, n_ch, plane))
    for t in prange(n_img * parts):
        lo = (t % parts) * span
        hi = min(plane, lo + span)
        acc = np.empty(span, np.float32)
        _across_span(xf, t // parts, lo, hi, size, alpha, beta, k, of, sf, acc)


@helper
def _across_back_span(x, out, scale, top_diff, n, lo, hi, size, alpha, beta, bottom_diff,
                      acc):
    """Positions lo .. hi-1 of image n's planes (all arrays (N, C, H*W)
    views), as ``_across_span``: the sum over the windows holding c slides
    along the channels."""
    n_ch = x.shape[1]
    count = hi - lo
    pre = (size - 1) // 2
    post = size - pre - 1
    coef = np.float32(2.0 * alpha * beta / size)
    nb = np.float32(-beta)
    fast = beta == 0.75
    # c lies in the window of c' for c' in [c - post, c + pre]
    for q in range(count):
        acc[q] = 0.0
    for cc in range(min(pre, n_ch)):
        dy, y, sc = top_diff[n, cc, lo:], out[n, cc, lo:], scale[n, cc, lo:]
        for q in range(count):
            acc[q] += dy[q] * y[q] / sc[q]
    for c in range(n_ch):
        enter, leave = c + pre, c - post - 1
        if enter < n_ch:
            dy, y, sc = top_diff[n, enter, lo:], out[n, enter, lo:], scale[n, enter, lo:]
            for q in range(count):
                acc[q] += dy[q] * y[q] / sc[q]
        if leave >= 0:
            dy, y, sc = top_diff[n, leave, lo:], out[n, leave, lo:], scale[n, leave, lo:]
            for q in range(count):
                acc[q] -= dy[q] * y[q] / sc[q]
        dy, sc, src = top_diff[n, c, lo:], scale[n, c, lo:], x[n, c, lo:]
        dst = bottom_diff[n, c, lo:]
        for q in range(count):
            dst[q] = dy[q] * _pow_neg_beta(sc[q], nb, fast) - coef * src[q] * acc[q]


@parallel_kernel
def lrn_across_backward(x, out, scale, top_diff, size, alpha, beta, bottom_diff):
    """Gradient of :func:`lrn_across_forward` (bottom_diff overwritten).

    dx_c = dy_c * scale_c^-beta
           - 2 alpha beta / size * x_c * sum_{c' whose window holds c} dy_c' * y_c' / scale_c'
    """
    n_img, n_ch = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    parts, span = _runs(plane)
    shape = (n_img, n_ch, plane)
    xf, of, sf = x.reshape(shape), out.reshape(shape), scale.reshape(shape)
    df, bf = top_diff.reshape(shape), bottom_diff.reshape(shape)
    for t in prange(n_img * parts):
        lo = (t % parts) * span
        hi = min(plane, lo + span)
        acc = np.empty(span, np.float32)
        _across_back_span(xf, of, sf, df, t // parts, lo, hi, size, alpha, beta, bf, acc)


@helper
def _within_plane(x, n, c, size, alpha, beta, out, scale):
    height, width = x.shape[2], x.shape[3]
    pad = (size - 1) // 2
    a = np.float32(alpha)
    nb = np.float32(-beta)
    fast = beta == 0.75
    for h in range(height):
        hs = h - pad
        he = min(hs + size, height + pad)
        rows = he - hs
        hs = max(hs, 0)
        he = min(he, height)
        for w in range(width):
            ws = w - pad
            we = min(ws + size, width + pad)
            pool_size = np.float32(rows * (we - ws))
            ws = max(ws, 0)
            we = min(we, width)
            acc = np.float32(0.0)
            for hh in range(hs, he):
                for ww in range(ws, we):
                    v = x[n, c, hh, ww]
                    acc += v * v
            s = np.float32(1.0) + a * (acc / pool_size)
            scale[n, c, h, w] = s
            out[n, c, h, w] = x[n, c, h, w] * _pow_neg_beta(s, nb, fast)


@parallel_kernel
def lrn_within_forward(x, size, alpha, beta, out, scale):
    """Within-channel LRN of x (N, C, H, W); ``size`` must be odd."""
    n_ch = x.shape[1]
    planes = x.shape[0] * n_ch
    for p in prange(planes):
        _within_plane(x, p // n_ch, p % n_ch, size, alpha, beta, out, scale)


@helper
def _within_back_plane(x, out, scale, top_diff, n, c, size, alpha, beta, bottom_diff):
    height, width = x.shape[2], x.shape[3]
    pad = (size - 1) // 2
    nb = np.float32(-beta)
    fast = beta == 0.75
    # t_i = dy_i * y_i / (s_i * pool_size_i) for every output i of the plane
    t = np.empty((height, width), np.float32)
    for h in range(height):
        hs = h - pad
        rows = min(hs + size, height + pad) - hs
        for w in range(width):
            ws = w - pad
            pool_size = np.float32(rows * (min(ws + size, width + pad) - ws))
            t[h, w] = top_diff[n, c, h, w] * out[n, c, h, w] / (scale[n, c, h, w] * pool_size)
    coef = np.float32(2.0 * alpha * beta)
    # pixel j lies in the window of output i iff i lies in the window
    # [j - (size - 1 - pad), j + pad] (clipped to the plane)
    back = size - 1 - pad
    for h in range(height):
        hs = max(h - back, 0)
        he = min(h + pad + 1, height)
        for w in range(width):
            ws = max(w - back, 0)
            we = min(w + pad + 1, width)
            acc = np.float32(0.0)
            for hh in range(hs, he):
                for ww in range(ws, we):
                    acc += t[hh, ww]
            bottom_diff[n, c, h, w] = (
                top_diff[n, c, h, w] * _pow_neg_beta(scale[n, c, h, w], nb, fast)
                - coef * x[n, c, h, w] * acc)


@parallel_kernel
def lrn_within_backward(x, out, scale, top_diff, size, alpha, beta, bottom_diff):
    """Gradient of :func:`lrn_within_forward` (bottom_diff overwritten).

    With s = 1 + alpha * avepool(x^2) and y = x * s^-beta,

        dx_j = dy_j * s_j^-beta
               - 2 alpha beta * x_j * sum_{i whose window holds j} dy_i * y_i / (s_i * pool_size_i)

    ``bottom_diff`` must not alias ``top_diff``.
    """
    n_ch = x.shape[1]
    planes = x.shape[0] * n_ch
    for p in prange(planes):
        _within_back_plane(x, out, scale, top_diff, p // n_ch, p % n_ch, size, alpha, beta,
                           bottom_diff)
