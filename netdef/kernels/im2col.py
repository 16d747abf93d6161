"""im2col / col2im: unfold image patches into columns so convolution is a GEMM.

Column-buffer layout (Caffe's, extended to a block of images): row
``r = (c * kh + i) * kw + j`` holds kernel tap ``(i, j)`` of channel ``c``;
column ``b * out_h * out_w + oh * out_w + ow`` is output position (oh, ow)
of the b-th image of the block.  The images of a block lie side by side,
so one GEMM ``W @ col`` convolves all of them.  The tap reads the pixel

    ih = oh * sh - ph + i * dh,    iw = ow * sw - pw + j * dw

and is zero where that pixel lies in the padding.  Because rows are ordered
channel-major, weights of shape (M, C/g, kh, kw) reshaped to (M, C/g*kh*kw)
multiply the row block ``gi*(C/g)*kh*kw : (gi+1)*(C/g)*kh*kw`` of group
``gi`` directly.

A block is images ``n0 .. n0 + B - 1`` of a 4-D (N, C, H, W) array, with
``B = col.shape[1] // (out_h * out_w)``: the column matrix's width says how
many images it holds.

Dtypes (one compiled signature per kernel): arrays float32 C-contiguous,
every index/size/geometry argument a Python int (int64).  Both kernels run
on the calling thread below PARALLEL_MIN_WORK column entries.
"""
from __future__ import annotations

import numpy as np

from netdef.kernels._jit import helper, parallel_kernel, prange
from netdef.kernels.gemm import _NO_TRANS, _ROW_MAJOR, _sgemm, _threads_local

_ZERO = np.float32(0.0)


@helper
def _valid_range(offset, stride, size, out):
    """[lo, hi): the output positions o with 0 <= offset + o*stride < size."""
    lo = 0
    if offset < 0:
        lo = (-offset + stride - 1) // stride
    hi = 0
    if size - 1 - offset >= 0:
        hi = (size - 1 - offset) // stride + 1
    lo = min(lo, out)
    hi = min(max(hi, lo), out)
    return lo, hi


@helper
def _copy_strided(src, dst, count, sw):
    """dst[k] = src[k * sw] for k < count. Both are views indexed from 0, so
    Numba knows the indices are not negative and emits no wrap-around
    selects, and strides 1, 2 and 4 are literals, which LLVM vectorises
    (with shuffles for 2 and 4): 1.5-2x faster than computed indices,
    measured on AlexNet's and the face detector's first layers."""
    if sw == 1:
        for k in range(count):
            dst[k] = src[k]
    elif sw == 2:
        for k in range(count):
            dst[k] = src[2 * k]
    elif sw == 4:
        for k in range(count):
            dst[k] = src[4 * k]
    else:
        for k in range(count):
            dst[k] = src[k * sw]


# Outputs at most this wide unfold element by element (_im2col_row_narrow)
_NARROW = 8


@helper
def _im2col_row_narrow(x, n, c, h_off, w_off, sh, sw, oh0, oh1, out_w, out):
    """``_im2col_row`` for narrow outputs (the 5x5 and 3x3 maps of SSD's
    last layers): every value indexed directly, no view per output row,
    whose cost is most of the time when a row has 3 to 8 values."""
    height, width = x.shape[2], x.shape[3]
    for oh in range(oh0, oh1):
        iy = oh * sh + h_off
        base = (oh - oh0) * out_w
        if iy < 0 or iy >= height:
            for ow in range(out_w):
                out[base + ow] = 0.0
            continue
        for ow in range(out_w):
            ix = ow * sw + w_off
            out[base + ow] = x[n, c, iy, ix] if 0 <= ix < width else np.float32(0.0)


@helper
def _im2col_row(x, n, r, kh, kw, ph, pw, sh, sw, dh, dw, oh0, oh1, out_w, out):
    """Row r of image n's columns for output rows oh0 .. oh1-1, written to
    the 1-D view ``out`` ((oh1 - oh0) * out_w values).

    The output rows whose input row is padding are zeroed first; each of
    the others is one strided copy, with zeros either side where the tap
    falls in the horizontal padding. Each output row costs a couple of
    array views and one short loop: the rows are short (27 values on
    AlexNet's conv2), so per-row overhead is most of the time (a version
    that also tested and sliced per row for the padding took 2.2x as long)."""
    height, width = x.shape[2], x.shape[3]
    c = r // (kh * kw)
    i = (r // kw) % kh
    j = r % kw
    w_off = j * dw - pw
    if out_w <= _NARROW:
        _im2col_row_narrow(x, n, c, i * dh - ph, w_off, sh, sw, oh0, oh1, out_w, out)
        return
    lo, hi = _valid_range(w_off, sw, width, out_w)
    top, bottom = _valid_range(i * dh - ph, sh, height, oh1)
    top, bottom = max(top, oh0), max(bottom, oh0)
    top = min(top, bottom)
    for q in range((top - oh0) * out_w):
        out[q] = 0.0
    tail = out[(bottom - oh0) * out_w:]
    for q in range((oh1 - bottom) * out_w):
        tail[q] = 0.0
    plane = x[n, c]
    # lo * sw + w_off >= 0 and (oh * sh + i * dh - ph) >= 0 for oh >= top,
    # by the definitions of lo and top
    if lo == 0 and hi == out_w:
        for oh in range(top, bottom):
            _copy_strided(plane[oh * sh + i * dh - ph][w_off:], out[(oh - oh0) * out_w:],
                          out_w, sw)
        return
    for oh in range(top, bottom):
        dst = out[(oh - oh0) * out_w:]
        for q in range(lo):
            dst[q] = 0.0
        _copy_strided(plane[oh * sh + i * dh - ph][lo * sw + w_off:], dst[lo:], hi - lo, sw)
        for q in range(hi, out_w):
            dst[q] = 0.0


@parallel_kernel(fastmath=False)
def im2col(x, n0, kh, kw, ph, pw, sh, sw, dh, dw, out_h, out_w, col):
    """Unfold images ``n0 ..`` of ``x`` (N, C, H, W) into ``col``
    (C*kh*kw, B*out_h*out_w), float32, image b in columns b*out_h*out_w...

    Every element of ``col`` is written (zeros for padding), so ``col`` may
    be an uninitialised buffer.  Parallel over (image, row) pairs.
    """
    rows = x.shape[1] * kh * kw
    plane = out_h * out_w
    tasks = (col.shape[1] // plane) * rows
    for t in prange(tasks):
        b, r = t // rows, t % rows
        _im2col_row(x, n0 + b, r, kh, kw, ph, pw, sh, sw, dh, dw, 0, out_h, out_w,
                    col[r, b * plane:(b + 1) * plane])


@helper
def _col2im_channel(col, first, n, c, kh, kw, ph, pw, sh, sw, dh, dw, out_h, out_w, img):
    """Image n's channel c from its kh*kw column rows; the loops run over
    the rows that land inside the image only, through zero-based views, as
    in ``_im2col_row``."""
    height, width = img.shape[2], img.shape[3]
    plane = img[n, c]
    for y in range(height):
        for x in range(width):
            plane[y, x] = 0.0
    for t in range(kh * kw):
        r = c * kh * kw + t
        i = t // kw
        j = t % kw
        w_off = j * dw - pw
        lo, hi = _valid_range(w_off, sw, width, out_w)
        top, bottom = _valid_range(i * dh - ph, sh, height, out_h)
        count = hi - lo
        src_row = col[r, first:]
        for oh in range(top, bottom):
            # both offsets are >= 0 by the definitions of lo and top
            dst = plane[oh * sh + i * dh - ph][lo * sw + w_off:]
            src = src_row[oh * out_w + lo:]
            if sw == 1:
                for k in range(count):
                    dst[k] += src[k]
            elif sw == 2:
                for k in range(count):
                    dst[2 * k] += src[k]
            else:
                for k in range(count):
                    dst[k * sw] += src[k]


@parallel_kernel(fastmath=False)
def col2im(col, n0, kh, kw, ph, pw, sh, sw, dh, dw, out_h, out_w, img):
    """Adjoint of :func:`im2col`: fold ``col`` back into images ``n0 ..`` of
    ``img`` (N, C, H, W).

    Those images are overwritten (zeroed, then every column entry that maps
    to a real pixel is added; entries that map to padding are dropped).
    Used by Deconvolution forward and Convolution backward.  Parallel over
    (image, channel) pairs: each touches only its own plane.
    """
    n_ch = img.shape[1]
    plane = out_h * out_w
    tasks = (col.shape[1] // plane) * n_ch
    for t in prange(tasks):
        b = t // n_ch
        _col2im_channel(col, b * plane, n0 + b, t % n_ch, kh, kw, ph, pw, sh, sw, dh, dw,
                        out_h, out_w, img)


@helper
def _out_size(size, k, stride, pad, dilation):
    return (size + 2 * pad - (dilation * (k - 1) + 1)) // stride + 1


# Each element of y costs C*kh*kw multiply-adds, and plans only send layers
# with large column matrices here: parallel from a 64th of the usual work
# (GoogLeNet's inception_3a/5x5, 32 outputs of 16x5x5 on 28x28, ran serially:
# 0.16 ms slower)
@parallel_kernel(work_per_element=64)
def conv_bands(x, w, bias, relu, slope, kh, kw, ph, pw, sh, sw, dh, dw, group, band, y):
    """y (N, M, OH*OW) = the convolution of x (N, C, H, W) with w (M, C/group*kh*kw)
    plus bias (M,), then, if ``relu`` (an int) is not 0, ReLU with negative
    slope ``slope`` (float32). OW follows from the geometry, OH from y.

    One task per (image, group, band of ``band`` output rows): im2col of
    the band into a buffer of the task's own, small enough to stay in
    cache, one single-threaded SGEMM from it into the band of y (leading
    dimension OH*OW), then bias and ReLU over what the SGEMM just wrote.
    A whole-image column matrix (3.3M values for the face detector's 7x7
    first layer) would be written to memory and read back instead.
    Needs the BLAS of kernels.gemm (``gemm.available()``)."""
    n_img = x.shape[0]
    m_all, plane = y.shape[1], y.shape[2]
    out_w = _out_size(x.shape[3], kw, sw, pw, dw)
    out_h = plane // out_w
    kdim = x.shape[1] // group * kh * kw
    m_g = m_all // group
    bands = -(-out_h // band)
    tasks = n_img * group * bands
    w_addr, y_addr = w.ctypes.data, y.ctypes.data
    for t in prange(tasks):
        n, gi, bi = t // (group * bands), (t // bands) % group, t % bands
        oh0 = bi * band
        oh1 = min(out_h, oh0 + band)
        cols = (oh1 - oh0) * out_w
        col = np.empty((kdim, cols), np.float32)
        for r in range(kdim):
            _im2col_row(x, n, gi * kdim + r, kh, kw, ph, pw, sh, sw, dh, dw, oh0, oh1, out_w,
                        col[r])
        first = (n * m_all + gi * m_g) * plane + oh0 * out_w
        before = _threads_local(1)
        _sgemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, m_g, cols, kdim, np.float32(1.0),
               w_addr + gi * m_g * kdim * 4, kdim, col.ctypes.data, cols, np.float32(0.0),
               y_addr + first * 4, plane)
        _threads_local(before)
        for m in range(gi * m_g, (gi + 1) * m_g):
            b = bias[m]
            seg = y[n, m, oh0 * out_w:oh1 * out_w]
            if relu != 0:       # Caffe's std::max(v, 0) + slope * std::min(v, 0): NaN stays NaN
                for q in range(cols):
                    v = seg[q] + b
                    seg[q] = (_ZERO if v < _ZERO else v) + slope * (_ZERO if _ZERO < v else v)
            else:
                for q in range(cols):
                    seg[q] += b


@helper
def _add_bias_act(flat, start, count, b, relu, slope):
    """flat[start : start + count] += b, then, if ``relu`` is not 0, Caffe's
    max(v, 0) + slope * min(v, 0) (NaN stays NaN). ``start`` and ``count``
    unsigned, so that the loops vectorise."""
    if relu != 0:
        for q in range(count):
            v = flat[start + q] + b
            flat[start + q] = (_ZERO if v < _ZERO else v) + slope * (_ZERO if _ZERO < v else v)
    else:
        for q in range(count):
            flat[start + q] += b


@parallel_kernel
def pointwise_bands(x, w, bias, relu, slope, rows, cols, y):
    """y (N, M, P) = w (M, C) @ x[n] (C, P) + bias (M,) per image, then, if
    ``relu`` (an int) is not 0, ReLU with negative slope ``slope``
    (float32): a 1x1 stride-1 convolution, ``conv_bands`` without columns
    to build (the input planes are the columns). One task per (image, band
    of ``rows`` output channels, band of ``cols`` positions): one
    single-threaded SGEMM into that block of y, then the bias and ReLU over
    the block while it is still in cache. A GEMM over the whole map and
    then a pass for the bias would write y to memory and read it back
    (MobileNet v2's 36 pointwise layers spent 1.6 ms of a 12 ms pass in
    that second pass). x and y C-contiguous; needs the BLAS of
    kernels.gemm (``gemm.available()``)."""
    n_img, chans, plane = x.shape[0], x.shape[1], x.shape[2]
    m_all = y.shape[1]
    row_bands, col_bands = -(-m_all // rows), -(-plane // cols)
    tasks = n_img * row_bands * col_bands
    w_addr, x_addr, y_addr = w.ctypes.data, x.ctypes.data, y.ctypes.data
    yf = y.reshape(y.size)
    for t in prange(tasks):
        n, rb, cb = t // (row_bands * col_bands), (t // col_bands) % row_bands, t % col_bands
        m0, c0 = rb * rows, cb * cols
        m1, c1 = min(m_all, m0 + rows), min(plane, c0 + cols)
        first = (n * m_all + m0) * plane + c0
        before = _threads_local(1)
        _sgemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, m1 - m0, c1 - c0, chans, np.float32(1.0),
               w_addr + m0 * chans * 4, chans, x_addr + (n * chans * plane + c0) * 4, plane,
               np.float32(0.0), y_addr + first * 4, plane)
        _threads_local(before)
        width = np.uint64(c1 - c0)
        for m in range(m0, m1):
            _add_bias_act(yf, np.uint64((n * m_all + m) * plane + c0), width, bias[m], relu,
                          slope)
