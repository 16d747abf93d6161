"""Max and average pooling over (N, C, H, W) float32 blobs, Caffe's windows.

Window of output (oh, ow): rows ``hstart = oh*sh - ph`` to
``hend = min(hstart + kh, H)`` with ``hstart`` clipped to >= 0 (columns
likewise).  The layer chooses the output size (Caffe's ceil rule with the
last-window clip).  One corner remains, as in Caffe: with pad 0, ceil
mode and stride > kernel the last window can start at H and be empty;
max pooling then gives -FLT_MAX with argmax -1 and average pooling
0/0 = NaN.

Average pooling divides by Caffe's ``pool_size``: the window area measured
after clipping the end to ``H + ph`` but before clipping to the image, so
windows on the border count padding cells up to the pad width but not the
overhang of a ceil-mode window beyond it.

Dtypes: x/out/top_diff/bottom_diff float32 4-D C-contiguous, argmax int64
4-D C-contiguous, geometry arguments Python ints (int64).  Every kernel is
parallel over the N*C planes (for blobs of PARALLEL_MIN_WORK elements or more).
"""
from __future__ import annotations

import numpy as np

from netdef.kernels._jit import helper, parallel_kernel, prange

# Caffe seeds the running maximum with -FLT_MAX (not -inf), so a window of
# only -inf or NaN yields -FLT_MAX with argmax -1.
_FLT_LOWEST = np.float32(-3.4028234663852886e38)


@helper
def _max_plane(x, n, c, kh, kw, sh, sw, ph, pw, out, argmax):
    height, width = x.shape[2], x.shape[3]
    for oh in range(out.shape[2]):
        hs = oh * sh - ph
        he = min(hs + kh, height)
        hs = max(hs, 0)
        for ow in range(out.shape[3]):
            ws = ow * sw - pw
            we = min(ws + kw, width)
            ws = max(ws, 0)
            best = _FLT_LOWEST
            where = -1
            for h in range(hs, he):
                for w in range(ws, we):
                    v = x[n, c, h, w]
                    if v > best:
                        best = v
                        where = h * width + w
            out[n, c, oh, ow] = best
            argmax[n, c, oh, ow] = where


@parallel_kernel
def max_pool_forward(x, kh, kw, sh, sw, ph, pw, out, argmax):
    """out[n,c,oh,ow] = max of the window; argmax = h*W + w of the winner.

    Ties keep the first maximum in row-major scan order (strict ``>``).
    """
    n_ch = x.shape[1]
    planes = x.shape[0] * n_ch
    for p in prange(planes):
        _max_plane(x, p // n_ch, p % n_ch, kh, kw, sh, sw, ph, pw, out, argmax)


@helper
def _valid_range(size, out_size, stride, pad, offset):
    """Outputs o in [lo, hi) whose tap o*stride - pad + offset is in [0, size)."""
    lo = max(0, -((offset - pad) // stride))        # ceil((pad - offset) / stride)
    hi = min(out_size, (size - 1 + pad - offset) // stride + 1)
    return lo, max(lo, hi)


@helper
def _max_plane_values(x, n, c, kh, kw, sh, sw, ph, pw, out):
    # Max is separable: a pass along rows into ``rows`` and one down columns.
    # Each pass loops over one window offset at a time with the output index
    # innermost, so the inner loops are contiguous (stride 1) and vectorise.
    # Windows clip exactly as Caffe's (taps in the padding are skipped), and
    # the select keeps Caffe's strict > (NaN never wins).
    height, width = x.shape[2], x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    rows = np.empty((height, out_w), np.float32)
    for h in range(height):
        for ow in range(out_w):
            rows[h, ow] = _FLT_LOWEST
        for j in range(kw):
            lo, hi = _valid_range(width, out_w, sw, pw, j)
            start = lo * sw - pw + j
            for ow in range(lo, hi):
                v = x[n, c, h, start + (ow - lo) * sw]
                rows[h, ow] = v if v > rows[h, ow] else rows[h, ow]
    for oh in range(out_h):
        for ow in range(out_w):
            out[n, c, oh, ow] = _FLT_LOWEST
    for i in range(kh):
        lo, hi = _valid_range(height, out_h, sh, ph, i)
        for oh in range(lo, hi):
            h = oh * sh - ph + i
            for ow in range(out_w):
                v = rows[h, ow]
                out[n, c, oh, ow] = v if v > out[n, c, oh, ow] else out[n, c, oh, ow]


@parallel_kernel
def max_pool_forward_values(x, kh, kw, sh, sw, ph, pw, out):
    """max_pool_forward without the argmax, for plans that never run backward."""
    n_ch = x.shape[1]
    planes = x.shape[0] * n_ch
    for p in prange(planes):
        _max_plane_values(x, p // n_ch, p % n_ch, kh, kw, sh, sw, ph, pw, out)


@helper
def _max_back_plane(top_diff, argmax, n, c, bottom_diff):
    width = bottom_diff.shape[3]
    for h in range(bottom_diff.shape[2]):
        for w in range(width):
            bottom_diff[n, c, h, w] = 0.0
    for oh in range(top_diff.shape[2]):
        for ow in range(top_diff.shape[3]):
            where = argmax[n, c, oh, ow]
            if where >= 0:
                bottom_diff[n, c, where // width, where % width] += top_diff[n, c, oh, ow]


@parallel_kernel
def max_pool_backward(top_diff, argmax, bottom_diff):
    """bottom_diff (overwritten) = top_diff routed to each window's argmax.

    An argmax of -1 (a window without any number above -FLT_MAX) routes
    nothing; Caffe would index out of bounds there.
    """
    n_ch = bottom_diff.shape[1]
    planes = bottom_diff.shape[0] * n_ch
    for p in prange(planes):
        _max_back_plane(top_diff, argmax, p // n_ch, p % n_ch, bottom_diff)


@helper
def _ave_plane(x, n, c, kh, kw, sh, sw, ph, pw, out):
    height, width = x.shape[2], x.shape[3]
    for oh in range(out.shape[2]):
        hs = oh * sh - ph
        he = min(hs + kh, height + ph)
        rows = he - hs
        hs = max(hs, 0)
        he = min(he, height)
        for ow in range(out.shape[3]):
            ws = ow * sw - pw
            we = min(ws + kw, width + pw)
            pool_size = rows * (we - ws)
            ws = max(ws, 0)
            we = min(we, width)
            acc = 0.0  # float64: global pooling sums thousands of values
            for h in range(hs, he):
                for w in range(ws, we):
                    acc += x[n, c, h, w]
            out[n, c, oh, ow] = acc / pool_size


@parallel_kernel
def ave_pool_forward(x, kh, kw, sh, sw, ph, pw, out):
    """out[n,c,oh,ow] = sum of the clipped window / Caffe's pool_size."""
    n_ch = x.shape[1]
    planes = x.shape[0] * n_ch
    for p in prange(planes):
        _ave_plane(x, p // n_ch, p % n_ch, kh, kw, sh, sw, ph, pw, out)


@helper
def _ave_back_plane(top_diff, n, c, kh, kw, sh, sw, ph, pw, bottom_diff):
    height, width = bottom_diff.shape[2], bottom_diff.shape[3]
    for h in range(height):
        for w in range(width):
            bottom_diff[n, c, h, w] = 0.0
    for oh in range(top_diff.shape[2]):
        hs = oh * sh - ph
        he = min(hs + kh, height + ph)
        rows = he - hs
        hs = max(hs, 0)
        he = min(he, height)
        for ow in range(top_diff.shape[3]):
            ws = ow * sw - pw
            we = min(ws + kw, width + pw)
            share = top_diff[n, c, oh, ow] / np.float32(rows * (we - ws))
            ws = max(ws, 0)
            we = min(we, width)
            for h in range(hs, he):
                for w in range(ws, we):
                    bottom_diff[n, c, h, w] += share


@parallel_kernel
def ave_pool_backward(top_diff, kh, kw, sh, sw, ph, pw, bottom_diff):
    """bottom_diff (overwritten): each top gradient / pool_size spread over its window."""
    n_ch = bottom_diff.shape[1]
    planes = bottom_diff.shape[0] * n_ch
    for p in prange(planes):
        _ave_back_plane(top_diff, p // n_ch, p % n_ch, kh, kw, sh, sw, ph, pw, bottom_diff)
