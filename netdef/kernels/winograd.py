"""Winograd F(4x4, 3x3): 3x3 stride-1 convolution with 2.25x fewer multiplies.

The output is cut into 4x4 tiles; tile t of image n reads the 6x6 input
patch whose corner is (4*ty - ph, 4*tx - pw) (zeros outside the image).
With the transforms of Lavin & Gray (2016), interpolation points
0, 1, -1, 2, -2 and infinity,

    Y_tile = A^T [ (G g G^T) (.) (B^T d B) ] A        (. the elementwise product)

so a layer becomes three passes:

    input transform    V[xi, c, t] = (B^T d_{c,t} B)[xi]          (this module)
    36 GEMMs           P[xi] = U[xi] (M x C) @ V[xi] (C x T)       (BLAS)
    output transform   y[n, m, tile] = A^T P[:, m, t] A + bias     (this module)

with U[xi] = (G g G^T)[xi] computed once per weight set (``transform_weights``,
in float64). xi = 6*r + s indexes the 6x6 transformed tile. The channel sum
happens inside the GEMMs, which is where the time goes; the transforms are
adds and a few scalings per element and are memory-bound.

Tiles are numbered t = (n - n0) * tiles_h * tiles_w + ty * tiles_w + tx over
the images n0 .. of a block. Dtypes: float32 C-contiguous arrays, Python
ints. Both kernels are parallel over channels (input) and output channels
(output) for calls of PARALLEL_MIN_WORK elements or more.
"""
from __future__ import annotations

import numpy as np

from netdef.kernels._jit import helper, parallel_kernel, prange

# The transform matrices of F(4x4, 3x3) for the points 0, 1, -1, 2, -2, inf.
BT = np.array([[4, 0, -5, 0, 1, 0],
               [0, -4, -4, 1, 1, 0],
               [0, 4, -4, -1, 1, 0],
               [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0],
               [0, 4, 0, -5, 0, 1]], np.float64)
G = np.array([[1 / 4, 0, 0],
              [-1 / 6, -1 / 6, -1 / 6],
              [-1 / 6, 1 / 6, -1 / 6],
              [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6],
              [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 2, -2, 0],
               [0, 1, 1, 4, 4, 0],
               [0, 1, -1, 8, -8, 1]], np.float64)


def transform_weights(w: np.ndarray) -> np.ndarray:
    """U (36, M, C) float32 from 3x3 weights w (M, C, 3, 3)."""
    u = np.einsum("ri,mcij,sj->rsmc", G, w.astype(np.float64), G)
    return np.ascontiguousarray(u.reshape(36, w.shape[0], w.shape[1]), dtype=np.float32)


# float32 constants keep the transforms in float32 arithmetic
_0, _2, _4, _5, _8 = (np.float32(v) for v in (0, 2, 4, 5, 8))


@helper
def _bt_rows(d0, d1, d2, d3, d4, d5):
    """The six entries of B^T d for a column (d0 .. d5) of a 6x6 patch."""
    return (_4 * d0 - _5 * d2 + d4,
            -_4 * (d1 + d2) + d3 + d4,
            _4 * (d1 - d2) - d3 + d4,
            -_2 * (d1 - d3) - d2 + d4,
            _2 * (d1 - d3) - d2 + d4,
            _4 * d1 - _5 * d3 + d5)


@helper
def _input_channel(x, n0, c, ph, pw, tiles_h, tiles_w, v, line, strip, rows):
    """V[:, c, tiles of images n0 ..] for channel c, a row of tiles at a time.

    Each of the 6 input rows the tile row reads is copied into ``line``
    (zero-filled outside the image) and de-interleaved by column phase into
    ``strip``: strip[i, f*(tw+1) + k] is column 4k + f, so that tile tx's
    six columns 4tx .. 4tx+5 are entries tx of the phases 0..3 and tx+1 of
    phases 0..1, each a contiguous run over tx. B^T then runs down the rows
    and B across the columns, both as loops over contiguous tiles.

    Every inner loop indexes 1-D views from 0, so Numba knows the indices
    are not negative and emits no wrap-around selects: that is what lets
    LLVM vectorise them (3-4x on the pooling kernels, measured)."""
    height = x.shape[2]
    per_image = tiles_h * tiles_w
    images = v.shape[2] // per_image
    stride = tiles_w + 1
    span = 4 * stride
    lo = min(pw, span)                                   # line columns left of the image
    hi = max(lo, min(span, x.shape[3] + pw))             # ... and from where it ends
    for b in range(images):
        for ty in range(tiles_h):
            for i in range(6):
                out = strip[i]
                yy = 4 * ty - ph + i
                if yy < 0 or yy >= height:
                    for q in range(span):
                        out[q] = 0
                    continue
                src, inside = x[n0 + b, c, yy], line[lo:]
                for q in range(lo):
                    line[q] = 0
                for q in range(hi - lo):
                    inside[q] = src[q]
                tail = line[hi:]
                for q in range(span - hi):
                    tail[q] = 0
                for f in range(4):
                    phase, dst = line[f:], out[f * stride:]
                    for k in range(stride):
                        dst[k] = phase[4 * k]
            d0, d1, d2, d3, d4, d5 = strip[0], strip[1], strip[2], strip[3], strip[4], strip[5]
            o0, o1, o2, o3, o4, o5 = rows[0], rows[1], rows[2], rows[3], rows[4], rows[5]
            for q in range(span):
                r0, r1, r2, r3, r4, r5 = _bt_rows(d0[q], d1[q], d2[q], d3[q], d4[q], d5[q])
                o0[q] = r0
                o1[q] = r1
                o2[q] = r2
                o3[q] = r3
                o4[q] = r4
                o5[q] = r5
            t0 = b * per_image + ty * tiles_w
            for k in range(6):
                row = rows[k]
                a0, a1, a2, a3 = row, row[stride:], row[2 * stride:], row[3 * stride:]
                a4, a5 = row[1:], row[stride + 1:]
                v0, v1, v2 = v[6 * k, c, t0:], v[6 * k + 1, c, t0:], v[6 * k + 2, c, t0:]
                v3, v4, v5 = v[6 * k + 3, c, t0:], v[6 * k + 4, c, t0:], v[6 * k + 5, c, t0:]
                for tx in range(tiles_w):
                    r0, r1, r2, r3, r4, r5 = _bt_rows(a0[tx], a1[tx], a2[tx], a3[tx], a4[tx],
                                                      a5[tx])
                    v0[tx] = r0
                    v1[tx] = r1
                    v2[tx] = r2
                    v3[tx] = r3
                    v4[tx] = r4
                    v5[tx] = r5


@parallel_kernel
def winograd_input(x, n0, ph, pw, tiles_h, tiles_w, v):
    """V (36, C, T) = B^T d B of every 6x6 patch of images n0 .. of x."""
    width = 4 * (tiles_w + 1)
    for c in prange(x.shape[1]):
        line = np.empty(width, np.float32)
        strip = np.empty((6, width), np.float32)
        rows = np.empty((6, width), np.float32)
        _input_channel(x, n0, c, ph, pw, tiles_h, tiles_w, v, line, strip, rows)


@helper
def _at_rows(p0, p1, p2, p3, p4, p5):
    """The four entries of A^T p for a column (p0 .. p5) of a 6x6 tile."""
    a, b = p1 + p2, p1 - p2
    c, d = p3 + p4, p3 - p4
    return p0 + a + c, b + _2 * d, a + _4 * c, b + _8 * d + p5


@helper
def _output_channel(p, pm, m, bias, relu, slope, n0, tiles_h, tiles_w, y, rows, cols):
    """Output channel m of images n0 .., from P's channel pm. Per row of tiles: A^T down the six
    transformed rows of every tile at once (contiguous over tiles), then A
    along each tile's rows into ``cols`` (cols[j, tx] is output column
    4tx + j), interleaved into y with bias and ReLU. Inner loops index 1-D
    views from 0, as in ``_input_channel``."""
    out_h, out_w = y.shape[2], y.shape[3]
    per_image = tiles_h * tiles_w
    images = p.shape[2] // per_image
    for b in range(images):
        for ty in range(tiles_h):
            t0 = b * per_image + ty * tiles_w
            for s in range(6):
                p0, p1, p2 = p[s, pm, t0:], p[6 + s, pm, t0:], p[12 + s, pm, t0:]
                p3, p4, p5 = p[18 + s, pm, t0:], p[24 + s, pm, t0:], p[30 + s, pm, t0:]
                w0, w1, w2, w3 = rows[0, s], rows[1, s], rows[2, s], rows[3, s]
                for tx in range(tiles_w):
                    r0, r1, r2, r3 = _at_rows(p0[tx], p1[tx], p2[tx], p3[tx], p4[tx], p5[tx])
                    w0[tx] = r0
                    w1[tx] = r1
                    w2[tx] = r2
                    w3[tx] = r3
            for i in range(min(4, out_h - 4 * ty)):
                e0, e1, e2 = rows[i, 0], rows[i, 1], rows[i, 2]
                e3, e4, e5 = rows[i, 3], rows[i, 4], rows[i, 5]
                c0, c1, c2, c3 = cols[0], cols[1], cols[2], cols[3]
                for tx in range(tiles_w):
                    r0, r1, r2, r3 = _at_rows(e0[tx], e1[tx], e2[tx], e3[tx], e4[tx], e5[tx])
                    c0[tx] = r0 + bias
                    c1[tx] = r1 + bias
                    c2[tx] = r2 + bias
                    c3[tx] = r3 + bias
                row = y[n0 + b, m, 4 * ty + i]
                for j in range(4):
                    dst, src = row[j:], cols[j]
                    for tx in range((out_w - j + 3) // 4):
                        val = src[tx]
                        if relu != 0:
                            val = (_0 if val < _0 else val) + slope * (_0 if _0 < val else val)
                        dst[4 * tx] = val


@parallel_kernel
def winograd_output(p, m0, bias, relu, slope, n0, tiles_h, tiles_w, y):
    """Images n0 .. of y (N, M, OH, OW) = A^T P A + bias[m] per tile, from
    P's channels m0 .. m0+M-1 (several convolutions can share one P); then,
    if ``relu`` (an int) is not 0, ReLU with negative slope ``slope``."""
    for m in prange(y.shape[1]):
        rows = np.empty((4, 6, tiles_w), np.float32)
        cols = np.empty((4, tiles_w), np.float32)
        _output_channel(p, m0 + m, m, np.float32(bias[m]), relu, np.float32(slope), n0,
                        tiles_h, tiles_w, y, rows, cols)
