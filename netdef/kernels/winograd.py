"""Winograd F(4x4, 3x3): 3x3 stride-1 convolution with 2.25x fewer multiplies.

The output is cut into 4x4 tiles; tile t of image n reads the 6x6 input
patch whose corner is (4*ty - ph, 4*tx - pw) (zeros outside the image).
With the transforms of Lavin & Gray (2016), interpolation points
0, 1, -1, 2, -2 and infinity,

    Y_tile = A^T [ (G g G^T) (.) (B^T d B) ] A        (. the elementwise product)

so a layer becomes three passes:

    input transform    V[xi, t, c] = (B^T d_{c,t} B)[xi]          (this module)
    36 GEMMs           P[xi] = V[xi] (T x C) @ U[xi] (C x M)       (BLAS)
    output transform   y[n, m, tile] = A^T P[:, t, m] A + bias     (this module)

with U[xi] = (G g G^T)[xi]^T computed once per weight set
(``transform_weights``, in float64). xi = 6*r + s indexes the 6x6
transformed tile. The channel sum happens inside the GEMMs, which is where
the time goes; the transforms are adds and a few scalings per element.

V and P are channel-last (a tile's channels contiguous) so that both
transforms vectorise over channels: the tiles of a row are too few for
vectors on the small maps of detectors and ResNets (5 per row on 19x19).
The GEMMs in this orientation (tiles as rows) measured as fast as or
faster than the transposed ones (36 of 256x256x25: 0.87 against 0.94 ms).

Tiles are numbered t = (n - n0) * tiles_h * tiles_w + ty * tiles_w + tx over
the images n0 .. of a block. Dtypes: float32 C-contiguous arrays, Python
ints. Both kernels are parallel over rows of tiles for calls of
PARALLEL_MIN_WORK elements or more.
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
    """U (36, C, M) float32 from 3x3 weights w (M, C, 3, 3)."""
    u = np.einsum("ri,mcij,sj->rscm", G, w.astype(np.float64), G)
    return np.ascontiguousarray(u.reshape(36, w.shape[1], w.shape[0]), dtype=np.float32)


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
def _bt_channels(d0, d1, d2, d3, d4, d5, o0, o1, o2, o3, o4, o5):
    """o_k[c] = (B^T d)_k for six channel vectors d_0..d_5 (both passes use it)."""
    for c in range(d0.shape[0]):
        r0, r1, r2, r3, r4, r5 = _bt_rows(d0[c], d1[c], d2[c], d3[c], d4[c], d5[c])
        o0[c] = r0
        o1[c] = r1
        o2[c] = r2
        o3[c] = r3
        o4[c] = r4
        o5[c] = r5


@helper
def _input_row(x, n0, ph, pw, tiles_h, tiles_w, v, task, strip, tmp):
    """V[:, tiles of one row of tiles, :] for task = image * tiles_h + ty.

    The six input rows the tiles read are first copied channel-last into
    ``strip`` (6, 4 * tiles_w + 2, C), zeros outside the image; then every
    tile is B^T down its rows into ``tmp`` (6, 6, C) and B across them into
    V, each step a loop over contiguous channels. Vectorising over the
    channels rather than over the tiles of a row keeps the vectors full on
    small maps (a 19x19 map has 5 tiles per row, a 5x5 map 2), and V's rows
    (one per tile) are written whole: 256 channels on 19x19 took 0.14 ms
    against 0.35 ms with the tile-vectorised transform and V (36, C, T).

    Inner loops index 1-D views from 0, so Numba knows the indices are not
    negative and emits no wrap-around selects, which lets LLVM vectorise
    them."""
    b, ty = task // tiles_h, task % tiles_h
    chans, height, width = x.shape[1], x.shape[2], x.shape[3]
    span = 4 * tiles_w + 2
    for r in range(6):
        yy = 4 * ty - ph + r
        row = strip[r]
        if yy < 0 or yy >= height:
            flat = row.reshape(-1)
            for q in range(flat.size):
                flat[q] = 0
            continue
        for xx in range(span):
            ix = xx - pw
            dst = row[xx]
            if ix < 0 or ix >= width:
                for c in range(chans):
                    dst[c] = 0
            else:
                # a gather over channels; copying channel by channel instead
                # (contiguous reads, strided writes) measured slower
                src = x[n0 + b, :, yy, ix]
                for c in range(chans):
                    dst[c] = src[c]
    t0 = (b * tiles_h + ty) * tiles_w
    for tx in range(tiles_w):
        for s in range(6):
            col = 4 * tx + s
            d0, d1, d2 = strip[0, col], strip[1, col], strip[2, col]
            d3, d4, d5 = strip[3, col], strip[4, col], strip[5, col]
            _bt_channels(d0, d1, d2, d3, d4, d5,
                         tmp[0, s], tmp[1, s], tmp[2, s], tmp[3, s], tmp[4, s], tmp[5, s])
        t = t0 + tx
        for i in range(6):
            e0, e1, e2 = tmp[i, 0], tmp[i, 1], tmp[i, 2]
            e3, e4, e5 = tmp[i, 3], tmp[i, 4], tmp[i, 5]
            _bt_channels(e0, e1, e2, e3, e4, e5,
                         v[6 * i, t], v[6 * i + 1, t], v[6 * i + 2, t],
                         v[6 * i + 3, t], v[6 * i + 4, t], v[6 * i + 5, t])


@parallel_kernel
def winograd_input(x, n0, ph, pw, tiles_h, tiles_w, v):
    """V (36, T, C) = B^T d B of every 6x6 patch of images n0 .. of x."""
    images = v.shape[1] // (tiles_h * tiles_w)
    chans = x.shape[1]
    for task in prange(images * tiles_h):
        strip = np.empty((6, 4 * tiles_w + 2, chans), np.float32)
        tmp = np.empty((6, 6, chans), np.float32)
        _input_row(x, n0, ph, pw, tiles_h, tiles_w, v, task, strip, tmp)


@helper
def _at_rows(p0, p1, p2, p3, p4, p5):
    """The four entries of A^T p for a column (p0 .. p5) of a 6x6 tile."""
    a, b = p1 + p2, p1 - p2
    c, d = p3 + p4, p3 - p4
    return p0 + a + c, b + _2 * d, a + _4 * c, b + _8 * d + p5


@helper
def _output_row(p, m0, bias, relu, slope, n0, tiles_h, tiles_w, y, task, tmp, strip):
    """One row of tiles of y (task = image * tiles_h + ty) from P's
    channels m0 ..: per tile, A^T down the transformed rows into ``tmp``
    (4, 6, M), then A across them plus the bias into ``strip`` (4, 4 *
    tiles_w, M), channel-last as P is; then the strip's valid rows go to
    y, channel by channel, with the ReLU. Loops over channels as in
    ``_input_row``."""
    b, ty = task // tiles_h, task % tiles_h
    chans, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    t0 = (b * tiles_h + ty) * tiles_w
    for tx in range(tiles_w):
        t = t0 + tx
        for s in range(6):
            p0, p1, p2 = p[s, t, m0:], p[6 + s, t, m0:], p[12 + s, t, m0:]
            p3, p4, p5 = p[18 + s, t, m0:], p[24 + s, t, m0:], p[30 + s, t, m0:]
            w0, w1, w2, w3 = tmp[0, s], tmp[1, s], tmp[2, s], tmp[3, s]
            for c in range(chans):
                r0, r1, r2, r3 = _at_rows(p0[c], p1[c], p2[c], p3[c], p4[c], p5[c])
                w0[c] = r0
                w1[c] = r1
                w2[c] = r2
                w3[c] = r3
        for i in range(4):
            e0, e1, e2 = tmp[i, 0], tmp[i, 1], tmp[i, 2]
            e3, e4, e5 = tmp[i, 3], tmp[i, 4], tmp[i, 5]
            c0, c1 = strip[i, 4 * tx], strip[i, 4 * tx + 1]
            c2, c3 = strip[i, 4 * tx + 2], strip[i, 4 * tx + 3]
            for c in range(chans):
                r0, r1, r2, r3 = _at_rows(e0[c], e1[c], e2[c], e3[c], e4[c], e5[c])
                bc = bias[c]
                c0[c] = r0 + bc
                c1[c] = r1 + bc
                c2[c] = r2 + bc
                c3[c] = r3 + bc
    for i in range(min(4, out_h - 4 * ty)):
        for c in range(chans):
            dst, src = y[n0 + b, c, 4 * ty + i], strip[i, :, c]
            if relu != 0:
                for xx in range(out_w):
                    val = src[xx]
                    dst[xx] = (_0 if val < _0 else val) + slope * (_0 if _0 < val else val)
            else:
                for xx in range(out_w):
                    dst[xx] = src[xx]


@parallel_kernel
def winograd_output(p, m0, bias, relu, slope, n0, tiles_h, tiles_w, y):
    """Images n0 .. of y (N, M, OH, OW) = A^T P A + bias[m] per tile, from
    P's (36, T, M_total) channels m0 .. m0+M-1 (several convolutions can
    share one P); then, if ``relu`` (an int) is not 0, ReLU with negative
    slope ``slope``."""
    images = p.shape[1] // (tiles_h * tiles_w)
    chans = y.shape[1]
    for task in prange(images * tiles_h):
        tmp = np.empty((4, 6, chans), np.float32)
        strip = np.empty((4, 4 * tiles_w, chans), np.float32)
        _output_row(p, m0, bias, relu, np.float32(slope), n0, tiles_h, tiles_w, y, task,
                    tmp, strip)
