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


@parallel_kernel(fastmath=False)
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
def _max3(a, b, c, seed):
    """Caffe's running maximum over a, b, c from ``seed``: strict >, so a NaN
    never wins."""
    m = a if a > seed else seed
    m = b if b > m else m
    return c if c > m else m


@helper
def _window_max(src, start, size, width):
    """Caffe's maximum of src[start : start + size] clipped to [0, width)."""
    m = _FLT_LOWEST
    for w in range(max(start, 0), min(start + size, width)):
        v = src[w]
        m = v if v > m else m
    return m


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


@parallel_kernel(fastmath=False)
def max_pool_forward_values(x, kh, kw, sh, sw, ph, pw, out):
    """max_pool_forward without the argmax, for plans that never run backward."""
    n_ch = x.shape[1]
    planes = x.shape[0] * n_ch
    for p in prange(planes):
        _max_plane_values(x, p // n_ch, p % n_ch, kh, kw, sh, sw, ph, pw, out)


@helper
def _max_3x3_plane(x, n, c, sh, sw, ph, pw, out, rows):
    # _max_plane_values for 3x3 windows (AlexNet, GoogLeNet, ResNet, the
    # SSDs). Windows wholly inside the image read the row without checks and
    # keep the running maximum in registers over 1-D views indexed from 0:
    # Numba then knows the indices are not negative and emits no wrap-around
    # selects, and with a literal stride LLVM vectorises the strided reads
    # with shuffles (measured 4-9x faster than updating ``rows`` tap by tap).
    # Border windows take the clipped path.
    height, width = x.shape[2], x.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    # output columns whose windows lie inside the row: [inner_lo, inner_hi)
    inner_lo = min(out_w, (pw + sw - 1) // sw)
    inner_hi = max(inner_lo, min(out_w, (width - 3 + pw) // sw + 1))
    count = inner_hi - inner_lo
    for h in range(height):
        src, r = x[n, c, h], rows[h]
        seg, dst = src[inner_lo * sw - pw:], r[inner_lo:]
        if sw == 2:
            for k in range(count):
                dst[k] = _max3(seg[2 * k], seg[2 * k + 1], seg[2 * k + 2], _FLT_LOWEST)
        elif sw == 1:
            for k in range(count):
                dst[k] = _max3(seg[k], seg[k + 1], seg[k + 2], _FLT_LOWEST)
        else:
            for k in range(count):
                dst[k] = _window_max(seg, k * sw, 3, seg.shape[0])
        for ow in range(inner_lo):
            r[ow] = _window_max(src, ow * sw - pw, 3, width)
        for ow in range(inner_hi, out_w):
            r[ow] = _window_max(src, ow * sw - pw, 3, width)
    for oh in range(out_h):
        hs = oh * sh - ph
        o = out[n, c, oh]
        if hs >= 0 and hs + 3 <= height:
            r0, r1, r2 = rows[hs], rows[hs + 1], rows[hs + 2]
            for ow in range(out_w):
                o[ow] = _max3(r0[ow], r1[ow], r2[ow], _FLT_LOWEST)
            continue
        for ow in range(out_w):
            o[ow] = _FLT_LOWEST
        for h in range(max(hs, 0), min(hs + 3, height)):
            r = rows[h]
            for ow in range(out_w):
                v = r[ow]
                o[ow] = v if v > o[ow] else o[ow]


# Planes come in at most this many chunks, each allocating its row buffer
# once: one buffer per plane, allocated by both threads at once, made
# GoogLeNet's 832x7x7 inception_5a/pool no faster on two threads than on
# one (0.19 against 0.17 ms; chunked, 0.10).
_CHUNKS = 16


# Two passes of three compares per input element: two threads pay off from
# a quarter of PARALLEL_MIN_WORK (832x7x7 ran serially before)
@parallel_kernel(fastmath=False, work_per_element=4)
def max_pool_3x3_values(x, sh, sw, ph, pw, out):
    """max_pool_forward_values for a 3x3 window: its own kernel, so that
    nets without 3x3 pooling never compile its fast paths."""
    n_ch = x.shape[1]
    planes = x.shape[0] * n_ch
    size = max(1, -(-planes // _CHUNKS))
    for t in prange(-(-planes // size)):
        rows = np.empty((x.shape[2], out.shape[3]), np.float32)
        for p in range(t * size, min(planes, (t + 1) * size)):
            _max_3x3_plane(x, p // n_ch, p % n_ch, sh, sw, ph, pw, out, rows)


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


@parallel_kernel(fastmath=False)
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
            acc = 0.0  # float64: a window can sum thousands of values
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


@parallel_kernel
def global_ave_pool(x2, out):
    """out[p] = mean of row p of x2 (planes, H*W): global average pooling
    as one contiguous, vectorised sum per plane (MobileNet v2's 1280x7x7
    pool6 took 0.08 ms through ``ave_pool_forward``'s windows)."""
    size = x2.shape[1]
    for p in prange(x2.shape[0]):
        acc = 0.0  # float64: a plane can hold thousands of values
        for q in range(size):
            acc += x2[p, q]
        out[p] = acc / size


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
