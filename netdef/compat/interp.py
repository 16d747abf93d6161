"""Separable spline interpolation of images (NumPy only) for ``caffe.io.resize_image``.

pycaffe resizes with scikit-image (1- and 3-channel images) or
``scipy.ndimage.zoom`` (any other channel count), with ``interp_order``
0..5. Neither is a netdef dependency; this module gives the same
interpolants:

* order 0: nearest sample (``floor(x + 0.5)``, as scipy and skimage round);
* order 1: linear;
* orders 2..5: B-spline interpolation of that degree. The samples are first
  turned into spline coefficients by the recursive prefilter (Unser's
  poles; mirror-symmetric boundary, exact initial values), then the spline
  is evaluated with ``order + 1`` taps. This is what scipy.ndimage does.

Two coordinate mappings, one per pycaffe path:

* ``"half"`` (skimage's ``resize``): pixel centers, ``x = (o + 0.5) * in/out - 0.5``;
* ``"corners"`` (``ndimage.zoom``): the corner samples coincide,
  ``x = o * (in - 1)/(out - 1)``.

Coordinates are clamped to the image (edge samples repeat), as netdef's
bilinear resize does, instead of blending the border with zeros.
"""
from __future__ import annotations

import math

import numpy as np

MAX_ORDER = 5

# Poles of the B-spline prefilters (Unser 1999, "Splines: a perfect fit").
_POLES = {
    2: (math.sqrt(8.0) - 3.0,),
    3: (math.sqrt(3.0) - 2.0,),
    4: (math.sqrt(664.0 - math.sqrt(438976.0)) + math.sqrt(304.0) - 19.0,
        math.sqrt(664.0 + math.sqrt(438976.0)) - math.sqrt(304.0) - 19.0),
    5: (math.sqrt(67.5 - math.sqrt(4436.25)) + math.sqrt(26.25) - 6.5,
        math.sqrt(67.5 + math.sqrt(4436.25)) - math.sqrt(26.25) - 6.5),
}


def coordinates(n_out: int, n_in: int, mapping: str) -> np.ndarray:
    """Source coordinate of every output sample along one axis (clamped)."""
    o = np.arange(n_out, dtype=np.float64)
    if mapping == "half":
        x = (o + 0.5) * (n_in / n_out) - 0.5
    else:
        x = o * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    return np.clip(x, 0.0, n_in - 1)


def bspline(t: np.ndarray, order: int) -> np.ndarray:
    """The centered B-spline of degree ``order`` at ``t`` (truncated-power form)."""
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros_like(t)
    half = (order + 1) / 2.0
    for k in range(order + 2):
        out += (-1) ** k * math.comb(order + 1, k) * np.maximum(t + half - k, 0.0) ** order
    return out / math.factorial(order)


def _mirror(index: np.ndarray, n: int) -> np.ndarray:
    """Fold indices into [0, n) by whole-sample symmetry (d c b | a b c d | c b a)."""
    if n == 1:
        return np.zeros_like(index)
    period = 2 * n - 2
    index = np.abs(index) % period
    return np.where(index >= n, period - index, index)


def prefilter(values: np.ndarray, order: int) -> np.ndarray:
    """Spline coefficients along axis 0 (float64), mirror boundary."""
    c = np.array(values, dtype=np.float64)
    n = c.shape[0]
    if order < 2 or n == 1:
        return c
    poles = _POLES[order]
    c *= np.prod([(1.0 - z) * (1.0 - 1.0 / z) for z in poles])
    for z in poles:
        # causal init: the mirrored signal summed over one period, exactly
        k = np.arange(n)
        weights = z ** k
        if n > 2:
            weights[1:n - 1] += z ** (2 * n - 2 - k[1:n - 1])
        c[0] = np.tensordot(weights, c, axes=(0, 0)) / (1.0 - z ** (2 * n - 2))
        for i in range(1, n):
            c[i] += z * c[i - 1]
        c[n - 1] = (z / (z * z - 1.0)) * (c[n - 1] + z * c[n - 2])
        for i in range(n - 2, -1, -1):
            c[i] = z * (c[i + 1] - c[i])
    return c


def resize_axis(values: np.ndarray, axis: int, n_out: int, order: int,
                mapping: str) -> np.ndarray:
    """Interpolate ``values`` (float64) to ``n_out`` samples along ``axis``."""
    moved = np.moveaxis(np.asarray(values, dtype=np.float64), axis, 0)
    n_in = moved.shape[0]
    x = coordinates(n_out, n_in, mapping)
    if order == 0:
        out = moved[np.minimum(np.floor(x + 0.5).astype(np.intp), n_in - 1)]
    elif order == 1:
        lo = np.floor(x).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        w = (x - lo).reshape((-1,) + (1,) * (moved.ndim - 1))
        out = moved[lo] * (1.0 - w) + moved[hi] * w
    else:
        coeffs = prefilter(moved, order)
        start = (np.floor(x) if order % 2 else np.floor(x + 0.5)).astype(np.intp) - order // 2
        out = np.zeros((n_out,) + moved.shape[1:])
        shape = (-1,) + (1,) * (moved.ndim - 1)
        for tap in range(order + 1):
            index = start + tap
            w = bspline(x - index, order).reshape(shape)
            out += coeffs[_mirror(index, n_in)] * w
    return np.moveaxis(out, 0, axis)


def resize(image: np.ndarray, size, order: int, mapping: str) -> np.ndarray:
    """Resize the first two axes of ``image`` to ``size`` = (h, w), float64."""
    out = np.asarray(image, dtype=np.float64)
    for axis, n_out in ((0, int(size[0])), (1, int(size[1]))):
        if out.shape[axis] != n_out:
            out = resize_axis(out, axis, n_out, order, mapping)
    return out
