"""Depthwise convolution: every output plane reads one input plane.

Output channel ``m`` of an (N, C, H, W) input convolves input channel
``m // k`` with its own (kh, kw) filter, ``k = M // C`` being the channel
multiplier (Caffe's Convolution with ``group == C`` and ``num_output = k*C``).
There is no channel sum, so an im2col + GEMM per group would be a GEMM of
depth kh*kw: these kernels loop over the taps directly instead. Output
(oh, ow), tap (i, j) reads the input pixel

    ih = oh * sh - ph + i * dh,    iw = ow * sw - pw + j * dw

(zero where that lies in the padding). Each output row is accumulated tap
by tap over the range of ``ow`` whose pixel is inside the image, so the
inner loop has no branch (and vectorises when sw == 1). The forward pass
pads each input plane into a work buffer first (split by stride phase, so
that strided taps read unit-stride rows), except for MobileNet's stride-1
3x3 layers on planes from 20 columns wide, which read the input in place.

Dtypes (one compiled signature per kernel): arrays float32 C-contiguous,
input/output 4-D, weights 3-D (M, kh, kw), bias 1-D (M,); geometry
arguments Python ints in im2col's order (kh, kw, ph, pw, sh, sw, dh, dw).
Each kernel runs on the calling thread below PARALLEL_MIN_WORK elements of
work and is parallel over planes above it.
"""
from __future__ import annotations

import numpy as np

from netdef.kernels._jit import helper, parallel_kernel, prange
from netdef.kernels.gemm import _NO_TRANS, _ROW_MAJOR, _sgemm, _threads_local
# _span: [lo, hi) of the output positions whose tap lands inside the image (im2col's)
from netdef.kernels.im2col import _add_bias_act
from netdef.kernels.im2col import _valid_range as _span

_ZERO = np.float32(0)       # keeps the fused ReLU's selects in float32


_U2 = np.uint64(2)


@helper
def _pair_row(xf, row, width, pw, dst0, phase_size, bf):
    """One image row xf[row : row + width] split into the two column phases of
    stride 2, whose rows start at bf[dst0] (phase 0) and bf[dst0 + phase_size]
    (phase 1): pixel iw is padded column iw + pw, so it goes to phase
    (iw + pw) % 2, column (iw + pw) // 2. Even pixels share one phase and odd
    ones the other; a loop over pixel pairs fills both rows together."""
    even = pw % 2                                   # the even pixels' phase
    d_even = np.uint64(dst0 + even * phase_size + pw // 2)          # pixel 2k: column k + pw // 2
    d_odd = np.uint64(dst0 + (1 - even) * phase_size + (pw + 1) // 2)  # 2k + 1: k + (pw + 1) // 2
    pairs = np.uint64(width // 2)
    for k in range(pairs):
        a = xf[row + _U2 * k]
        b = xf[row + _U2 * k + np.uint64(1)]
        bf[d_even + k] = a
        bf[d_odd + k] = b
    if width % 2:
        bf[d_even + pairs] = xf[row + np.uint64(width - 1)]


@helper
def _pad_plane(xf, plane0, height, width, ph, pw, row_phases, sw, buf, bf):
    """The plane of x whose first element is xf[plane0] (xf: x flattened),
    zero-padded and split by phase: by column phase for stride sw, and by
    row phase too when ``row_phases`` (1, or the row stride) is above 1:
    buf[a * sw + p, r, q] = padded[r * row_phases + a, q * sw + p]. Tap
    column ow*sw + t of the padded plane is then phase t % sw, column
    ow + t // sw: unit stride in ow (and likewise for rows). ``bf`` is buf
    flattened.

    Only the image's pixels are written: the padding is in the same places
    for every plane, so ``buf`` is zeroed once, when it is allocated.

    The copies index the flat arrays with unsigned offsets: Numba then
    emits no wrap-around select (so the loops vectorise) and no array view
    per row, which on MobileNet's 14x14 and 7x7 planes cost more than the
    copying (stride-2 planes of 14x14: 430 ns to pad each, before).

    Stride 2 reads each row once, a pair of pixels at a time, one to each
    column phase (``_pair_row``): with one strided pass per phase, padding
    a 144x56x56 input took 0.39 ms, now 0.12 ms, and MobileNet v2's
    144x56x56 stride-2 layer went from 0.35 to 0.24 ms on one thread.
    """
    rows, cols = buf.shape[1], buf.shape[2]
    lo0, hi0 = _span(-pw, sw, width, cols)          # phase 0 ...
    lo1, hi1 = _span(1 - pw, sw, width, cols)       # ... and 1 (when sw >= 2)
    for ih in range(height):
        r = ih + ph
        first = (r % row_phases) * sw
        row = np.uint64(plane0 + ih * width)
        if sw == 2:
            _pair_row(xf, row, width, pw, ((first * rows + r // row_phases) * cols),
                      rows * cols, bf)
            continue
        for p in range(sw):
            if p == 0:
                lo, hi = lo0, hi0
            elif p == 1:
                lo, hi = lo1, hi1
            else:
                lo, hi = _span(p - pw, sw, width, cols)
            dst = np.uint64(((first + p) * rows + r // row_phases) * cols + lo)
            src = row + np.uint64(lo * sw + p - pw)
            count = np.uint64(hi - lo)
            if sw == 1:
                for q in range(count):
                    bf[dst + q] = xf[src + q]
            else:
                step = np.uint64(sw)
                for q in range(count):
                    bf[dst + q] = xf[src + step * q]


@helper
def _tap(buf, i, j, sh, sw):
    """Tap (i, j) of a 3x3 kernel with strides (sh, sw) over a plane split
    by ``_pad_plane`` with row_phases = sh, read flat: output (oh, ow) at
    index oh * cols + ow."""
    rows, cols = buf.shape[1], buf.shape[2]
    flat = buf[(i % sh) * sw + j % sw].reshape(rows * cols)
    return flat[(i // sh) * cols + j // sw:]


@helper
def _forward_plane_flat(t0, t1, t2, t3, t4, t5, t6, t7, t8, cols, w, b, m, relu, slope,
                        out, wide):
    """``_forward_plane`` for a 3x3 kernel with dilation 1 (MobileNet's
    depthwise layers, strides 1 and 2), over the nine tap views of
    ``_tap``: output (oh, ow) is computed at wide[oh * cols + ow]. So one
    loop runs over the whole plane instead of one short loop per row (the
    planes are as small as 7x7), and the valid columns of each row are
    copied out afterwards, indexed in 2-D so that no view is made per row
    (on 7x7 planes the views cost as much as the arithmetic; a view per row
    for rows of 16 and more measured 25% slower on 56x56 -> 28x28)."""
    out_h, out_w = out.shape
    w0, w1, w2 = w[m, 0, 0], w[m, 0, 1], w[m, 0, 2]
    w3, w4, w5 = w[m, 1, 0], w[m, 1, 1], w[m, 1, 2]
    w6, w7, w8 = w[m, 2, 0], w[m, 2, 1], w[m, 2, 2]
    # the last row's junk columns would read past the plane: stop before them
    span = (out_h - 1) * cols + out_w
    if relu != 0:
        # the ReLU in this vectorised loop, where its selects are blends: in
        # the copy below they were branches, mispredicted on real activations
        # (384x28x28: 0.20 ms on a net's activations, 0.13 on positive ones)
        for q in range(span):
            v = (b + w0 * t0[q] + w1 * t1[q] + w2 * t2[q]
                 + w3 * t3[q] + w4 * t4[q] + w5 * t5[q]
                 + w6 * t6[q] + w7 * t7[q] + w8 * t8[q])
            wide[q] = (_ZERO if v < _ZERO else v) + slope * (_ZERO if _ZERO < v else v)
    else:
        for q in range(span):
            wide[q] = (b + w0 * t0[q] + w1 * t1[q] + w2 * t2[q]
                       + w3 * t3[q] + w4 * t4[q] + w5 * t5[q]
                       + w6 * t6[q] + w7 * t7[q] + w8 * t8[q])
    grid = wide[:out_h * cols].reshape(out_h, cols)
    for oh in range(out_h):
        for ow in range(out_w):
            out[oh, ow] = grid[oh, ow]


@helper
def _forward_plane(buf, w, b, m, kh, kw, sh, sw, dh, dw, relu, slope, out):
    """out (OH, OW) = b + the taps of w[m] over the phase-split plane buf,
    then (relu != 0) max(v, 0) + slope * min(v, 0). Every read is a
    unit-stride view (indices start at 0), which is what vectorises."""
    out_h, out_w = out.shape
    if kh == 3 and kw == 3:
        # MobileNet's case written out: nine multiply-adds per output
        w0, w1, w2 = w[m, 0, 0], w[m, 0, 1], w[m, 0, 2]
        w3, w4, w5 = w[m, 1, 0], w[m, 1, 1], w[m, 1, 2]
        w6, w7, w8 = w[m, 2, 0], w[m, 2, 1], w[m, 2, 2]
        p1, q1 = dw % sw, dw // sw
        p2, q2 = (2 * dw) % sw, (2 * dw) // sw
        for oh in range(out_h):
            # rows first, then 1-D slices: Numba types those as contiguous
            r = oh * sh
            a0, a1, a2 = buf[0, r], buf[p1, r][q1:], buf[p2, r][q2:]
            r += dh
            b0, b1, b2 = buf[0, r], buf[p1, r][q1:], buf[p2, r][q2:]
            r += dh
            c0, c1, c2 = buf[0, r], buf[p1, r][q1:], buf[p2, r][q2:]
            row = out[oh]
            if relu != 0:       # the ReLU in the same pass: y is written once
                for ow in range(out_w):
                    v = (b + w0 * a0[ow] + w1 * a1[ow] + w2 * a2[ow]
                         + w3 * b0[ow] + w4 * b1[ow] + w5 * b2[ow]
                         + w6 * c0[ow] + w7 * c1[ow] + w8 * c2[ow])
                    row[ow] = (_ZERO if v < _ZERO else v) + slope * (_ZERO if _ZERO < v else v)
            else:
                for ow in range(out_w):
                    row[ow] = (b + w0 * a0[ow] + w1 * a1[ow] + w2 * a2[ow]
                               + w3 * b0[ow] + w4 * b1[ow] + w5 * b2[ow]
                               + w6 * c0[ow] + w7 * c1[ow] + w8 * c2[ow])
        return
    else:
        for oh in range(out_h):
            row = out[oh]
            for ow in range(out_w):
                row[ow] = b
            for i in range(kh):
                for j in range(kw):
                    tap = w[m, i, j]
                    src = buf[(j * dw) % sw, oh * sh + i * dh][(j * dw) // sw:]
                    for ow in range(out_w):
                        row[ow] += tap * src[ow]
    if relu != 0:
        for oh in range(out_h):
            row = out[oh]
            for ow in range(out_w):
                v = row[ow]
                row[ow] = (_ZERO if v < _ZERO else v) + slope * (_ZERO if _ZERO < v else v)


# From this width, stride-1 3x3 planes are read in place (_forward_plane_direct)
# instead of through a padded copy and a wide buffer: three passes over each
# plane become one. Measured back to back on 2 threads: 32x112x112 0.125 to
# 0.098 ms, 144x56x56 0.145 to 0.114, 384x28x28 0.132 to 0.107; 14x14 planes,
# whose edge columns are a seventh of each row, gained nothing.
_DIRECT_MIN_WIDTH = 20


@helper
def _act(v, relu, slope):
    """v, or (relu != 0) max(v, 0) + slope * min(v, 0), for single values."""
    if relu != 0:
        return (_ZERO if v < _ZERO else v) + slope * (_ZERO if _ZERO < v else v)
    return v


@helper
def _direct_row(above, ao, row, ro, below, bo, width, w0, w1, w2, w3, w4, w5, w6, w7, w8,
                b, relu, slope, out, d):
    """Output row out[d : d + width] of a 3x3, stride-1, pad-1 depthwise
    convolution, straight from the input rows above[ao:], row[ro:] and
    below[bo:] (a row of zeros stands in for a padding row): the interior
    columns in one vectorised loop, the two edge columns, whose outer taps
    fall in the padding, apart. Offsets are unsigned, as in ``_pad_plane``,
    so that the loop vectorises."""
    n = np.uint64(width - 2)
    one, two = np.uint64(1), np.uint64(2)
    d1 = d + one
    if relu != 0:
        for q in range(n):
            v = (b + w0 * above[ao + q] + w1 * above[ao + q + one] + w2 * above[ao + q + two]
                 + w3 * row[ro + q] + w4 * row[ro + q + one] + w5 * row[ro + q + two]
                 + w6 * below[bo + q] + w7 * below[bo + q + one] + w8 * below[bo + q + two])
            out[d1 + q] = (_ZERO if v < _ZERO else v) + slope * (_ZERO if _ZERO < v else v)
    else:
        for q in range(n):
            out[d1 + q] = (b + w0 * above[ao + q] + w1 * above[ao + q + one]
                           + w2 * above[ao + q + two]
                           + w3 * row[ro + q] + w4 * row[ro + q + one] + w5 * row[ro + q + two]
                           + w6 * below[bo + q] + w7 * below[bo + q + one]
                           + w8 * below[bo + q + two])
    last, pre = np.uint64(width - 1), np.uint64(width - 2)
    v = (b + w1 * above[ao] + w2 * above[ao + one] + w4 * row[ro] + w5 * row[ro + one]
         + w7 * below[bo] + w8 * below[bo + one])
    out[d] = _act(v, relu, slope)
    v = (b + w0 * above[ao + pre] + w1 * above[ao + last] + w3 * row[ro + pre]
         + w4 * row[ro + last] + w6 * below[bo + pre] + w7 * below[bo + last])
    out[d + last] = _act(v, relu, slope)


@helper
def _forward_plane_direct(xf, p0, height, width, zero, w, b, m, relu, slope, of, o0):
    """``_forward_plane`` for a 3x3, stride-1, pad-1 kernel (MobileNet's
    stride-1 depthwise layers) without the padded copy: the input plane
    starts at xf[p0], the output plane at of[o0], both (height, width).

    One call per case of padding rows rather than a call on rows chosen
    per row: choosing the arrays in the loop made the kernel 5-20% slower
    (32x112x112, 384x28x28)."""
    w0, w1, w2 = w[m, 0, 0], w[m, 0, 1], w[m, 0, 2]
    w3, w4, w5 = w[m, 1, 0], w[m, 1, 1], w[m, 1, 2]
    w6, w7, w8 = w[m, 2, 0], w[m, 2, 1], w[m, 2, 2]
    z = np.uint64(0)
    wd = np.uint64(width)
    for oh in range(height):
        r = np.uint64(p0) + np.uint64(oh) * wd
        d = np.uint64(o0) + np.uint64(oh) * wd
        if oh == 0 and height == 1:
            _direct_row(zero, z, xf, r, zero, z, width, w0, w1, w2, w3, w4, w5, w6, w7, w8,
                        b, relu, slope, of, d)
        elif oh == 0:
            _direct_row(zero, z, xf, r, xf, r + wd, width, w0, w1, w2, w3, w4, w5, w6, w7, w8,
                        b, relu, slope, of, d)
        elif oh == height - 1:
            _direct_row(xf, r - wd, xf, r, zero, z, width, w0, w1, w2, w3, w4, w5, w6, w7, w8,
                        b, relu, slope, of, d)
        else:
            _direct_row(xf, r - wd, xf, r, xf, r + wd, width, w0, w1, w2, w3, w4, w5, w6, w7,
                        w8, b, relu, slope, of, d)


@helper
def _forward_planes(x, w, bias, first, last, kh, kw, ph, pw, sh, sw, dh, dw, relu, slope, y):
    """Output planes first .. last-1 (numbered n*M + m); each input plane is
    padded once into a work buffer and serves its k output planes (or, for
    wide stride-1 3x3 planes, is read in place)."""
    n_out = y.shape[1]
    k = n_out // x.shape[1]
    height, width = x.shape[2], x.shape[3]
    if (kh == 3 and kw == 3 and ph == 1 and pw == 1 and sh == 1 and sw == 1 and dh == 1
            and dw == 1 and width >= _DIRECT_MIN_WIDTH):
        xf, yf = x.reshape(x.size), y.reshape(y.size)
        zero = np.zeros(width, np.float32)
        for t in range(first, last):
            n, m = t // n_out, t % n_out
            _forward_plane_direct(xf, (n * x.shape[1] + m // k) * height * width, height,
                                  width, zero, w, bias[m], m, relu, np.float32(slope), yf,
                                  t * height * width)
        return
    flat = kh == 3 and kw == 3 and dh == 1 and dw == 1
    row_phases = sh if flat else 1
    cols = (x.shape[3] + 2 * pw + sw - 1) // sw
    rows = (x.shape[2] + 2 * ph + row_phases - 1) // row_phases
    buf = np.zeros((row_phases * sw, rows, cols), np.float32)
    bf, xf = buf.reshape(buf.size), x.reshape(x.size)
    wide = np.empty(y.shape[2] * cols if flat else 0, np.float32)
    # the nine tap views of the flat path, the same for every plane of buf
    # (made on the other paths too, unused there: row_phases keeps them in bounds)
    rp = row_phases
    t0, t1, t2 = _tap(buf, 0, 0, rp, sw), _tap(buf, 0, 1, rp, sw), _tap(buf, 0, 2, rp, sw)
    t3, t4, t5 = _tap(buf, 1, 0, rp, sw), _tap(buf, 1, 1, rp, sw), _tap(buf, 1, 2, rp, sw)
    t6, t7, t8 = _tap(buf, 2, 0, rp, sw), _tap(buf, 2, 1, rp, sw), _tap(buf, 2, 2, rp, sw)
    padded = -1
    for t in range(first, last):
        n, m = t // n_out, t % n_out
        src = n * x.shape[1] + m // k
        if src != padded:
            _pad_plane(xf, src * height * width, height, width, ph, pw, row_phases, sw,
                       buf, bf)
            padded = src
        if flat:
            _forward_plane_flat(t0, t1, t2, t3, t4, t5, t6, t7, t8, cols, w, bias[m], m,
                                relu, np.float32(slope), y[n, m], wide)
        else:
            _forward_plane(buf, w, bias[m], m, kh, kw, sh, sw, dh, dw, relu,
                           np.float32(slope), y[n, m])


# Output planes come in at most this many chunks: each chunk allocates and
# zeroes its work buffers once, so few chunks keep that cost small (a chunk
# per plane made MobileNet's 56x56 and 112x112 layers 8-10% slower), and
# 16 still spread over the threads.
_CHUNKS = 16


# Nine multiply-adds and two copies per element: with the pool's threads
# spinning, two threads beat one from about 6K input elements (960x7x7
# planes 0.135 to 0.100 ms, 128x14x14 0.044 to 0.033, measured back to back).
@parallel_kernel(work_per_element=4)
def depthwise_forward(x, w, bias, kh, kw, ph, pw, sh, sw, dh, dw, relu, slope, y):
    """y (N, M, OH, OW) = depthwise convolution of x (N, C, H, W) with w
    (M, kh, kw), plus bias (M,) per output channel (pass zeros for none);
    then, if ``relu`` (an int) is not 0, ReLU with negative slope ``slope``
    (a float), so that a fused ReLU costs no second pass over y.

    Every element of y is written. Parallel over blocks of output planes.
    """
    planes = y.shape[0] * y.shape[1]
    size = max(1, -(-planes // _CHUNKS))
    chunks = (planes + size - 1) // size
    for t in prange(chunks):
        _forward_planes(x, w, bias, t * size, min(planes, (t + 1) * size),
                        kh, kw, ph, pw, sh, sw, dh, dw, relu, slope, y)


@parallel_kernel(work_per_element=4)
def pointwise_depthwise(x, we, be, relu1, slope1, wd, bd, kh, kw, ph, pw, sh, sw, dh, dw,
                        relu2, slope2, band, y):
    """A 1x1 convolution and the depthwise convolution that reads its output,
    in one pass: h = act1(we (E, C) @ x[n] (C, H*W) + be), then y (N, E, OH,
    OW) = act2(depthwise(h) with wd (E, kh, kw) + bd), act being ``relu``
    (int) / ``slope`` (float32) as in ``depthwise_forward``. MobileNet v2's
    expand + depthwise pairs.

    One task per (image, band of ``band`` channels): a single-threaded
    SGEMM makes that band's planes of h in a buffer of the task's own,
    the bias and activation pass over it, and the depthwise taps read it
    while it is still in the core's cache. Run as two layers, h (up to
    144x56x56 floats) was written out whole and read back.

    x, y C-contiguous; the depthwise channel multiplier is 1 (wd has E
    filters). Needs the BLAS of kernels.gemm (``gemm.available()``)."""
    n_img, chans, height, width = x.shape
    plane = height * width
    e_all = we.shape[0]
    bands = -(-e_all // band)
    we_addr, x_addr = we.ctypes.data, x.ctypes.data
    for t in prange(n_img * bands):
        n, m0 = t // bands, (t % bands) * band
        m1 = min(e_all, m0 + band)
        h = np.empty((1, m1 - m0, height, width), np.float32)
        before = _threads_local(1)
        _sgemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, m1 - m0, plane, chans, np.float32(1.0),
               we_addr + m0 * chans * 4, chans, x_addr + n * chans * plane * 4, plane,
               np.float32(0.0), h.ctypes.data, plane)
        _threads_local(before)
        hf = h.reshape(h.size)
        size = np.uint64(plane)
        for m in range(m1 - m0):
            _add_bias_act(hf, np.uint64(m) * size, size, be[m0 + m], relu1, slope1)
        # this band's output channels: a C-contiguous block of y
        out = y[n, m0:m1]
        _forward_planes(h, wd[m0:m1], bd[m0:m1], 0, m1 - m0, kh, kw, ph, pw, sh, sw, dh, dw,
                        relu2, slope2, out.reshape((1,) + out.shape))


@helper
def _data_plane(dy, w, n, c, kh, kw, ph, pw, sh, sw, dh, dw, dx):
    width = dx.shape[3]
    height = dx.shape[2]
    out_h, out_w = dy.shape[2], dy.shape[3]
    k = dy.shape[1] // dx.shape[1]
    plane = dx[n, c]
    for ih in range(height):
        for iw in range(width):
            plane[ih, iw] = 0.0
    for m in range(c * k, (c + 1) * k):
        for oh in range(out_h):
            grad = dy[n, m, oh]
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= height:
                    continue
                dst = plane[ih]
                for j in range(kw):
                    tap = w[m, i, j]
                    off = j * dw - pw
                    lo, hi = _span(off, sw, width, out_w)
                    if sw == 1:
                        for ow in range(lo, hi):
                            dst[off + ow] += tap * grad[ow]
                    else:
                        for ow in range(lo, hi):
                            dst[off + ow * sw] += tap * grad[ow]


@parallel_kernel
def depthwise_backward_data(dy, w, kh, kw, ph, pw, sh, sw, dh, dw, dx):
    """dx (N, C, H, W) = gradient of the loss w.r.t. the input, from dy
    (N, M, OH, OW) and w (M, kh, kw). dx is overwritten (taps that fell in
    the padding are dropped). Parallel over the N*C input planes.
    """
    planes = dx.shape[0] * dx.shape[1]
    for t in prange(planes):
        _data_plane(dy, w, t // dx.shape[1], t % dx.shape[1],
                    kh, kw, ph, pw, sh, sw, dh, dw, dx)


@helper
def _weight_channel(x, dy, m, kh, kw, ph, pw, sh, sw, dh, dw, dw_out):
    height, width = x.shape[2], x.shape[3]
    out_h, out_w = dy.shape[2], dy.shape[3]
    c = m // (dy.shape[1] // x.shape[1])
    for i in range(kh):
        for j in range(kw):
            off = j * dw - pw
            lo, hi = _span(off, sw, width, out_w)
            acc = 0.0                       # float64: long sums over images and rows
            for n in range(x.shape[0]):
                for oh in range(out_h):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= height:
                        continue
                    src = x[n, c, ih]
                    grad = dy[n, m, oh]
                    part = np.float32(0.0)
                    if sw == 1:
                        for ow in range(lo, hi):
                            part += grad[ow] * src[off + ow]
                    else:
                        for ow in range(lo, hi):
                            part += grad[ow] * src[off + ow * sw]
                    acc += part
            dw_out[m, i, j] += acc


@parallel_kernel
def depthwise_backward_weights(x, dy, kh, kw, ph, pw, sh, sw, dh, dw, dw_out):
    """dw_out (M, kh, kw) += gradient of the loss w.r.t. the weights, from the
    input x (N, C, H, W) and dy (N, M, OH, OW), summed over images
    (Caffe's rule: parameter gradients accumulate). Parallel over channels.
    """
    channels = dw_out.shape[0]
    for m in prange(channels):
        _weight_channel(x, dy, m, kh, kw, ph, pw, sh, sw, dh, dw, dw_out)
