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
ints. The two transform kernels are parallel over rows of tiles for calls
of PARALLEL_MIN_WORK elements or more.

Run as three passes over a whole map, V and P (36/16 = 2.25 times the
input and output) go out to memory and back: on a 32-channel 75x75 map
after the caches were flushed (as between the frames of a video) the
layer took 0.74-0.91 ms, against 0.38 ms warm. ``winograd_conv`` runs all
three steps one chunk of rows of tiles at a time, each chunk's V and P
in the core's cache: 0.44-0.47 ms cold, 0.35-0.38 warm. It reads U once
per chunk, so it is for layers whose U is small (layers/winograd.py).
"""
from __future__ import annotations

import numpy as np

from netdef.kernels._jit import helper, kernel, parallel_kernel, prange
from netdef.kernels.gemm import _NO_TRANS, _ROW_MAJOR, _sgemm, _threads_local

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
# unsigned multiples for flat offsets (an int times a uint64 is a float in Numba)
_U2, _U3, _U4, _U5 = (np.uint64(v) for v in (2, 3, 4, 5))


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
def _bt_flat(src, base, step, dst, out, out_step, chans):
    """dst[out + k * out_step + c] = (B^T d)_k for the six channel vectors
    d_j = src[base + j * step :][:chans] (both passes of the input
    transform). Flat arrays and unsigned offsets instead of a view per
    vector: with 32 channels, making the twelve views of each call cost
    more than its arithmetic."""
    for c in range(chans):
        r0, r1, r2, r3, r4, r5 = _bt_rows(
            src[base + c], src[base + step + c], src[base + _U2 * step + c],
            src[base + _U3 * step + c], src[base + _U4 * step + c], src[base + _U5 * step + c])
        dst[out + c] = r0
        dst[out + out_step + c] = r1
        dst[out + _U2 * out_step + c] = r2
        dst[out + _U3 * out_step + c] = r3
        dst[out + _U4 * out_step + c] = r4
        dst[out + _U5 * out_step + c] = r5


@kernel
def _input_row(x, image, ty, ph, pw, tiles_w, v, t0, strip, tmp):
    """V[:, t0 .. t0 + tiles_w - 1, :]: the tiles of row ty of tiles of x[image].

    The six input rows the tiles read are first copied channel-last into
    ``strip`` (6, 4 * tiles_w + 2, C), zeros outside the image; then every
    tile is B^T down its rows into ``tmp`` (6, 6, C) and B across them into
    V, each step a loop over contiguous channels. Vectorising over the
    channels rather than over the tiles of a row keeps the vectors full on
    small maps (a 19x19 map has 5 tiles per row, a 5x5 map 2), and V's rows
    (one per tile) are written whole: 256 channels on 19x19 took 0.14 ms
    against 0.35 ms with the tile-vectorised transform and V (36, C, T).
    Both B passes index flat views with unsigned offsets (``_bt_flat``)."""
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
                src = x[image, :, yy, ix]
                for c in range(chans):
                    dst[c] = src[c]
    strip_flat, tmp_flat, v_flat = strip.reshape(-1), tmp.reshape(-1), v.reshape(-1)
    nc = np.uint64(chans)
    row_step, col6 = np.uint64(span) * nc, np.uint64(6) * nc
    xi_step = np.uint64(v.shape[1]) * nc
    for tx in range(tiles_w):
        for s in range(6):
            _bt_flat(strip_flat, np.uint64(4 * tx + s) * nc, row_step,
                     tmp_flat, np.uint64(s) * nc, col6, nc)
        t = np.uint64(t0 + tx) * nc
        for i in range(6):
            _bt_flat(tmp_flat, np.uint64(i) * col6, nc,
                     v_flat, np.uint64(6 * i) * xi_step + t, xi_step, nc)


@parallel_kernel
def winograd_input(x, n0, ph, pw, tiles_h, tiles_w, v):
    """V (36, T, C) = B^T d B of every 6x6 patch of images n0 .. of x."""
    images = v.shape[1] // (tiles_h * tiles_w)
    chans = x.shape[1]
    for task in prange(images * tiles_h):
        strip = np.empty((6, 4 * tiles_w + 2, chans), np.float32)
        tmp = np.empty((6, 6, chans), np.float32)
        _input_row(x, n0 + task // tiles_h, task % tiles_h, ph, pw, tiles_w, v,
                   task * tiles_w, strip, tmp)


@helper
def _at_rows(p0, p1, p2, p3, p4, p5):
    """The four entries of A^T p for a column (p0 .. p5) of a 6x6 tile."""
    a, b = p1 + p2, p1 - p2
    c, d = p3 + p4, p3 - p4
    return p0 + a + c, b + _2 * d, a + _4 * c, b + _8 * d + p5


@helper
def _at_flat(src, base, step, dst, out, out_step, chans, bias, b0):
    """dst[out + k * out_step + c] = (A^T p)_k + bias[b0 + c] for the six
    channel vectors p_j = src[base + j * step :][:chans] (``_bt_flat``'s
    counterpart; the first pass gives a zero bias)."""
    for c in range(chans):
        r0, r1, r2, r3 = _at_rows(
            src[base + c], src[base + step + c], src[base + _U2 * step + c],
            src[base + _U3 * step + c], src[base + _U4 * step + c], src[base + _U5 * step + c])
        bc = bias[b0 + c]
        dst[out + c] = r0 + bc
        dst[out + out_step + c] = r1 + bc
        dst[out + _U2 * out_step + c] = r2 + bc
        dst[out + _U3 * out_step + c] = r3 + bc


@kernel
def _output_row(p, m0, bias, zeros, relu, slope, image, ty, tiles_w, y, t0, tmp, strip):
    """Row ty of tiles of y[image] from P's tiles t0 .. t0 + tiles_w - 1,
    channels m0 ..: per tile, A^T down the transformed rows into ``tmp``
    (4, 6, M), then A across them plus the bias into ``strip`` (4, 4 *
    tiles_w, M), channel-last as P is; then the strip's valid rows go to
    y, channel by channel, with the ReLU. ``zeros`` is M zeros (the first
    pass's bias). Loops over channels as in ``_input_row``."""
    chans, out_h, out_w = y.shape[1], y.shape[2], y.shape[3]
    p_flat, tmp_flat, strip_flat = p.reshape(-1), tmp.reshape(-1), strip.reshape(-1)
    nc, p_chans = np.uint64(chans), np.uint64(p.shape[2])
    xi_step = np.uint64(p.shape[1]) * p_chans
    col6 = np.uint64(6) * nc
    row_step = np.uint64(4 * tiles_w) * nc
    zero = np.uint64(0)
    for tx in range(tiles_w):
        t = np.uint64(t0 + tx) * p_chans + np.uint64(m0)
        for s in range(6):
            _at_flat(p_flat, np.uint64(s) * xi_step + t, np.uint64(6) * xi_step,
                     tmp_flat, np.uint64(s) * nc, col6, nc, zeros, zero)
        for i in range(4):
            _at_flat(tmp_flat, np.uint64(i) * col6, nc,
                     strip_flat, np.uint64(i) * row_step + np.uint64(4 * tx) * nc, nc, nc,
                     bias, zero)
    for i in range(min(4, out_h - 4 * ty)):
        for c in range(chans):
            dst, src = y[image, c, 4 * ty + i], strip[i, :, c]
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
    zeros = np.zeros(chans, np.float32)
    for task in prange(images * tiles_h):
        tmp = np.empty((4, 6, chans), np.float32)
        strip = np.empty((4, 4 * tiles_w, chans), np.float32)
        _output_row(p, m0, bias, zeros, relu, np.float32(slope), n0 + task // tiles_h,
                    task % tiles_h, tiles_w, y, task * tiles_w, tmp, strip)


@parallel_kernel
def winograd_conv(x, n0, images, ph, pw, tiles_h, tiles_w, rows, u, bias, relu, slope, y,
                  v, p):
    """y[n0 : n0 + images] = the whole convolution, one chunk of ``rows``
    rows of tiles at a time: its V, its 36 GEMMs (single-threaded SGEMM
    on V's rows) and its output transform, before the next chunk, so that
    V and P stay in the core's cache instead of going to memory and back
    between three passes over the whole map (for layers whose U, read
    again by every chunk, is small). u (36, C, M) contiguous; v (workers,
    36, rows * tiles_w, C) and p (workers, 36, rows * tiles_w, M) are the
    scratch of each worker, which takes chunks w, w + workers, ...
    (chunks are of equal size, so the static split balances). The BLAS
    symbols must be registered (``gemm.available()``) before the first call."""
    workers, chans, outs = v.shape[0], u.shape[1], u.shape[2]
    per_image = -(-tiles_h // rows)
    chunks = images * per_image
    ua = u.ctypes.data
    v_step, p_step = v.shape[2] * chans * 4, p.shape[2] * outs * 4
    zeros = np.zeros(outs, np.float32)
    for w in prange(workers):
        v_own, p_own = v[w], p[w]
        va, pa = v_own.ctypes.data, p_own.ctypes.data
        strip = np.empty((6, 4 * tiles_w + 2, chans), np.float32)
        tmp = np.empty((6, 6, chans), np.float32)
        out_tmp = np.empty((4, 6, outs), np.float32)
        out_strip = np.empty((4, 4 * tiles_w, outs), np.float32)
        for chunk in range(w, chunks, workers):
            image = n0 + chunk // per_image
            first = (chunk % per_image) * rows
            last = min(tiles_h, first + rows)
            for ty in range(first, last):
                _input_row(x, image, ty, ph, pw, tiles_w, v_own, (ty - first) * tiles_w,
                           strip, tmp)
            before = _threads_local(1)
            for xi in range(36):
                _sgemm(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, (last - first) * tiles_w, outs, chans,
                       np.float32(1.0), va + xi * v_step, chans, ua + xi * chans * outs * 4,
                       outs, np.float32(0.0), pa + xi * p_step, outs)
            _threads_local(before)
            for ty in range(first, last):
                _output_row(p_own, 0, bias, zeros, relu, np.float32(slope), image, ty, tiles_w, y,
                            (ty - first) * tiles_w, out_tmp, out_strip)
