"""im2col / col2im: unfold image patches into columns so convolution is a GEMM.

Column-buffer layout (Caffe's): row ``r = (c * kh + i) * kw + j`` holds
kernel tap ``(i, j)`` of channel ``c`` for every output position
``oh * out_w + ow``.  The tap reads the input pixel

    ih = oh * sh - ph + i * dh,    iw = ow * sw - pw + j * dw

and is zero where that pixel lies in the padding.  Because rows are ordered
channel-major, weights of shape (M, C/g, kh, kw) reshaped to (M, C/g*kh*kw)
multiply the row block ``gi*(C/g)*kh*kw : (gi+1)*(C/g)*kh*kw`` of group
``gi`` directly.

Dtypes (one compiled signature per kernel): arrays float32 C-contiguous,
every size/geometry argument a Python int (int64).  Both kernels run on the
calling thread below PARALLEL_MIN_WORK column entries.
"""
from __future__ import annotations

from netdef.kernels._jit import PARALLEL_MIN_WORK, kernel, parallel_kernel, prange


@kernel
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


@kernel
def _im2col_row(img, r, kh, kw, ph, pw, sh, sw, dh, dw, out_h, out_w, col):
    height, width = img.shape[1], img.shape[2]
    c = r // (kh * kw)
    i = (r // kw) % kh
    j = r % kw
    w_off = j * dw - pw
    lo, hi = _valid_range(w_off, sw, width, out_w)
    for oh in range(out_h):
        ih = oh * sh - ph + i * dh
        base = oh * out_w
        if ih < 0 or ih >= height:
            for ow in range(out_w):
                col[r, base + ow] = 0.0
            continue
        for ow in range(lo):
            col[r, base + ow] = 0.0
        if sw == 1:
            # unit stride is a straight copy; kept separate so it vectorises
            for ow in range(lo, hi):
                col[r, base + ow] = img[c, ih, w_off + ow]
        else:
            for ow in range(lo, hi):
                col[r, base + ow] = img[c, ih, w_off + ow * sw]
        for ow in range(hi, out_w):
            col[r, base + ow] = 0.0


@parallel_kernel
def im2col(img, kh, kw, ph, pw, sh, sw, dh, dw, out_h, out_w, col):
    """Unfold ``img`` (C, H, W) into ``col`` (C*kh*kw, out_h*out_w), float32.

    Every element of ``col`` is written (zeros for padding), so ``col`` may
    be an uninitialised buffer.  Parallel over the rows of ``col``.
    """
    rows = img.shape[0] * kh * kw
    if rows * out_h * out_w < PARALLEL_MIN_WORK:
        for r in range(rows):
            _im2col_row(img, r, kh, kw, ph, pw, sh, sw, dh, dw, out_h, out_w, col)
    else:
        for r in prange(rows):
            _im2col_row(img, r, kh, kw, ph, pw, sh, sw, dh, dw, out_h, out_w, col)


@kernel
def _col2im_channel(col, c, H, W, kh, kw, ph, pw, sh, sw, dh, dw, out_h, out_w, img):
    for y in range(H):
        for x in range(W):
            img[c, y, x] = 0.0
    for t in range(kh * kw):
        r = c * kh * kw + t
        i = t // kw
        j = t % kw
        w_off = j * dw - pw
        lo, hi = _valid_range(w_off, sw, W, out_w)
        for oh in range(out_h):
            ih = oh * sh - ph + i * dh
            if ih < 0 or ih >= H:
                continue
            base = oh * out_w
            for ow in range(lo, hi):
                img[c, ih, w_off + ow * sw] += col[r, base + ow]


@parallel_kernel
def col2im(col, C, H, W, kh, kw, ph, pw, sh, sw, dh, dw, out_h, out_w, img):
    """Adjoint of :func:`im2col`: fold ``col`` back into ``img`` (C, H, W).

    ``img`` is overwritten (zeroed, then every column entry that maps to a
    real pixel is added to it; entries that map to padding are dropped).
    Used by Deconvolution forward and Convolution backward.  Parallel over
    channels, since each channel's rows touch only that channel's plane.
    """
    if col.size < PARALLEL_MIN_WORK:
        for c in range(C):
            _col2im_channel(col, c, H, W, kh, kw, ph, pw, sh, sw, dh, dw, out_h, out_w, img)
    else:
        for c in prange(C):
            _col2im_channel(col, c, H, W, kh, kw, ph, pw, sh, sw, dh, dw, out_h, out_w, img)
