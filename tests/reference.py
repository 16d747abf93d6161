"""Slow, obvious NumPy implementations of Caffe's layers: the test oracle.

Written with explicit loops straight from the formulas, never calling
netdef's kernels.  Inputs may be any float dtype; results are float64.
Geometry arguments (kernel, stride, pad, dilation) take an int or an
(h, w) pair.  Import from layer tests as ``from reference import ...``
(pytest puts tests/ on sys.path).

The output-size rules are re-derived here on purpose, independently of
netdef.layers.geometry, so the two can check each other.
"""
from __future__ import annotations

import math

import numpy as np


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def conv_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """Caffe convolution output size: floor((size + 2p - (d(k-1)+1)) / s) + 1."""
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def pool_out(size: int, k: int, s: int, p: int, ceil_mode: bool = True) -> int:
    """Caffe pooling output size: ceil (or floor) of (size + 2p - k) / s, plus 1;
    with padding, a last window starting at or past size + p is dropped."""
    span = (size + 2 * p - k) / s
    out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def im2col_reference(img, kernel, stride=1, pad=0, dilation=1) -> np.ndarray:
    """(C, H, W) -> (C*kh*kw, OH*OW); row (c*kh + i)*kw + j, zero in the padding."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel, stride, pad, dilation))
    n_ch, height, width = img.shape
    oh_n, ow_n = conv_out(height, kh, sh, ph, dh), conv_out(width, kw, sw, pw, dw)
    col = np.zeros((n_ch * kh * kw, oh_n * ow_n))
    for c in range(n_ch):
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for oh in range(oh_n):
                    for ow in range(ow_n):
                        y = oh * sh - ph + i * dh
                        x = ow * sw - pw + j * dw
                        if 0 <= y < height and 0 <= x < width:
                            col[row, oh * ow_n + ow] = img[c, y, x]
    return col


def conv2d_reference(x, w, b=None, stride=1, pad=0, dilation=1, group=1) -> np.ndarray:
    """Caffe Convolution: x (N, C, H, W), w (M, C/group, kh, kw), b (M,) or None."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    (sh, sw), (ph, pw), (dh, dw) = map(_pair, (stride, pad, dilation))
    n_img, n_ch, height, width = x.shape
    n_out, cpg, kh, kw = w.shape
    mpg = n_out // group
    oh_n, ow_n = conv_out(height, kh, sh, ph, dh), conv_out(width, kw, sw, pw, dw)
    xp = np.zeros((n_img, n_ch, height + 2 * ph, width + 2 * pw))
    xp[:, :, ph:ph + height, pw:pw + width] = x
    y = np.zeros((n_img, n_out, oh_n, ow_n))
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    for n in range(n_img):
        for m in range(n_out):
            g = m // mpg
            for oh in range(oh_n):
                for ow in range(ow_n):
                    # the (C/group, kh, kw) input window under output (oh, ow), dilated
                    window = xp[n, g * cpg:(g + 1) * cpg,
                                oh * sh:oh * sh + ext_h:dh, ow * sw:ow * sw + ext_w:dw]
                    y[n, m, oh, ow] = np.sum(window * w[m]) + (0.0 if b is None else b[m])
    return y


def deconv2d_reference(x, w, b=None, stride=1, pad=0, dilation=1, group=1) -> np.ndarray:
    """Caffe Deconvolution: x (N, C, H, W), w (C, M/group, kh, kw), b (M,) or None.

    Each input pixel scatters ``x * w`` into the output; output size
    s*(H-1) + d*(k-1)+1 - 2p.
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    (sh, sw), (ph, pw), (dh, dw) = map(_pair, (stride, pad, dilation))
    n_img, n_ch, height, width = x.shape
    _, mpg, kh, kw = w.shape
    cpg = n_ch // group
    oh_n = sh * (height - 1) + dh * (kh - 1) + 1 - 2 * ph
    ow_n = sw * (width - 1) + dw * (kw - 1) + 1 - 2 * pw
    ext_h, ext_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    # scatter into the uncropped output, then cut the padding off
    full = np.zeros((n_img, mpg * group, oh_n + 2 * ph, ow_n + 2 * pw))
    for n in range(n_img):
        for c in range(n_ch):
            g = c // cpg
            for h in range(height):
                for v in range(width):
                    full[n, g * mpg:(g + 1) * mpg,
                         h * sh:h * sh + ext_h:dh, v * sw:v * sw + ext_w:dw] += x[n, c, h, v] * w[c]
    y = full[:, :, ph:ph + oh_n, pw:pw + ow_n]
    if b is not None:
        y = y + np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    return y


def pool_reference(x, method, kernel, stride=1, pad=0, ceil_mode=True,
                   return_argmax=False):
    """Caffe Pooling, method 'max' or 'ave', on x (N, C, H, W).

    Window rows: start oh*s - p, end min(start + k, H) (max) and start
    clipped to 0.  'ave' divides by (min(start + k, H + p) - start) per axis,
    measured before clipping.  'max' keeps the first maximum in row-major
    order; with return_argmax also returns h*W + w of each winner (-1 if none).
    """
    (kh, kw), (sh, sw), (ph, pw) = map(_pair, (kernel, stride, pad))
    n_img, n_ch, height, width = x.shape
    oh_n = pool_out(height, kh, sh, ph, ceil_mode)
    ow_n = pool_out(width, kw, sw, pw, ceil_mode)
    y = np.zeros((n_img, n_ch, oh_n, ow_n))
    arg = np.full((n_img, n_ch, oh_n, ow_n), -1, np.int64)
    for n in range(n_img):
        for c in range(n_ch):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    h0, w0 = oh * sh - ph, ow * sw - pw
                    if method == "max":
                        best = -np.finfo(np.float32).max
                        for h in range(max(h0, 0), min(h0 + kh, height)):
                            for v in range(max(w0, 0), min(w0 + kw, width)):
                                if x[n, c, h, v] > best:
                                    best = x[n, c, h, v]
                                    arg[n, c, oh, ow] = h * width + v
                        y[n, c, oh, ow] = best
                    elif method == "ave":
                        h1, w1 = min(h0 + kh, height + ph), min(w0 + kw, width + pw)
                        area = (h1 - h0) * (w1 - w0)
                        total = 0.0
                        for h in range(max(h0, 0), min(h1, height)):
                            for v in range(max(w0, 0), min(w1, width)):
                                total += x[n, c, h, v]
                        # an empty ceil-mode window (pad 0, stride > k) is 0/0 in Caffe
                        y[n, c, oh, ow] = total / area if area else np.nan
                    else:
                        raise ValueError(f"method must be 'max' or 'ave', got {method!r}")
    return (y, arg) if return_argmax else y


def lrn_reference(x, size=5, alpha=1.0, beta=0.75, k=1.0, region="across") -> np.ndarray:
    """Caffe LRN on x (N, C, H, W), region 'across' (channels) or 'within'.

    across: k + alpha/size * sum of x^2 over channels c - (size-1)//2 ..
    c + size-1 - (size-1)//2.  within: 1 + alpha * (x^2 averaged over the
    size x size window, pad (size-1)//2, Caffe's ave-pool divisor); k unused.
    Returns x * scale^-beta.
    """
    x = np.asarray(x, np.float64)
    n_img, n_ch, height, width = x.shape
    pre = (size - 1) // 2
    scale = np.zeros_like(x)
    if region == "across":
        for n in range(n_img):
            for c in range(n_ch):
                total = np.zeros((height, width))
                for cc in range(max(c - pre, 0), min(c + size - pre, n_ch)):
                    total += x[n, cc] ** 2
                scale[n, c] = k + alpha / size * total
    elif region == "within":
        scale = 1.0 + alpha * pool_reference(x ** 2, "ave", size, 1, pre)
    else:
        raise ValueError(f"region must be 'across' or 'within', got {region!r}")
    return x * scale ** -beta


def softmax_reference(x, axis=1) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along axis."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    y = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        e = np.exp(x[idx] - x[idx].max())
        y[idx] = e / e.sum()
    return np.moveaxis(y, -1, axis)


def batchnorm_reference(x, mean=None, var=None, eps=1e-5, scale_factor=1.0) -> np.ndarray:
    """Caffe BatchNorm on x (N, C, ...): (x - mean) / sqrt(var + eps) per channel.

    With mean/var None the batch statistics are used (biased variance over
    every axis but 1).  Otherwise the stored blobs are divided by Caffe's
    third blob, ``scale_factor`` (0 means "use 0").
    """
    x = np.asarray(x, np.float64)
    n_ch = x.shape[1]
    if mean is None:
        mean = np.zeros(n_ch)
        var = np.zeros(n_ch)
        for c in range(n_ch):
            vals = x[:, c].ravel()
            mean[c] = vals.mean()
            var[c] = ((vals - mean[c]) ** 2).mean()
    else:
        f = 0.0 if scale_factor == 0 else 1.0 / scale_factor
        mean = np.asarray(mean, np.float64) * f
        var = np.asarray(var, np.float64) * f
    shape = (1, n_ch) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)


def mvn_reference(x, normalize_variance=True, across_channels=False, eps=1e-9) -> np.ndarray:
    """Caffe MVN on x (N, C, H, W): subtract the mean of each image (or each
    image channel) and optionally divide by sqrt(biased variance) + eps."""
    x = np.asarray(x, np.float64)
    y = np.empty_like(x)
    groups = [(n,) for n in range(x.shape[0])] if across_channels else list(
        np.ndindex(*x.shape[:2]))
    for idx in groups:
        d = x[idx] - x[idx].mean()
        if normalize_variance:
            d = d / (np.sqrt((d ** 2).mean()) + eps)
        y[idx] = d
    return y


def sigmoid_reference(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def neuron_reference(kind: str, x, **p) -> np.ndarray:
    """Caffe neuron layers by type name with their prototxt parameters.

    ReLU(negative_slope), ELU(alpha), Sigmoid, TanH, AbsVal, BNLL,
    Power(power, scale, shift), Exp(base, scale, shift), Log(base, scale,
    shift), Threshold(threshold), Clip(min, max), Swish(beta).  A base of -1
    means e, as in Caffe.
    """
    x = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        if kind == "ReLU":
            # Caffe's expression: NaN for -inf with slope 0, like Caffe
            return np.maximum(x, 0) + p.get("negative_slope", 0.0) * np.minimum(x, 0)
        if kind == "ELU":
            return np.where(x > 0, x, p.get("alpha", 1.0) * (np.exp(x) - 1.0))
        if kind == "Sigmoid":
            return sigmoid_reference(x)
        if kind == "TanH":
            return np.tanh(x)
        if kind == "AbsVal":
            return np.abs(x)
        if kind == "BNLL":
            return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)
        if kind == "Power":
            return (p.get("shift", 0.0) + p.get("scale", 1.0) * x) ** p.get("power", 1.0)
        if kind in ("Exp", "Log"):
            base = p.get("base", -1.0)
            lnb = 1.0 if base == -1.0 else math.log(base)
            z = p.get("shift", 0.0) + p.get("scale", 1.0) * x
            return np.exp(lnb * z) if kind == "Exp" else np.log(z) / lnb
        if kind == "Threshold":
            return (x > p.get("threshold", 0.0)).astype(np.float64)
        if kind == "Clip":
            return np.minimum(np.maximum(x, p["min"]), p["max"])
        if kind == "Swish":
            return x * sigmoid_reference(p.get("beta", 1.0) * x)
    raise ValueError(f"unknown neuron kind {kind!r}")


def prelu_reference(x, slope) -> np.ndarray:
    """x (N, C, ...) with per-channel slope (C,) (or one slope for channel_shared)."""
    x = np.asarray(x, np.float64)
    a = np.broadcast_to(np.asarray(slope, np.float64).ravel(), (x.shape[1],))
    a = a.reshape((1, -1) + (1,) * (x.ndim - 2))
    return np.maximum(x, 0) + a * np.minimum(x, 0)


def eltwise_reference(inputs, operation="SUM", coeff=None):
    """Caffe Eltwise over a list of equal-shape arrays; returns (out, argmax).

    MAX's argmax follows Caffe: input 1 wins a tie with input 0, later inputs
    must be strictly greater.  argmax is None for SUM and PROD.
    """
    xs = [np.asarray(a, np.float64) for a in inputs]
    if operation == "SUM":
        coeff = [1.0] * len(xs) if coeff is None else coeff
        return sum(c * a for c, a in zip(coeff, xs, strict=True)), None
    if operation == "PROD":
        out = xs[0].copy()
        for a in xs[1:]:
            out = out * a
        return out, None
    if operation == "MAX":
        out = np.where(xs[0] > xs[1], xs[0], xs[1])
        arg = np.where(xs[0] > xs[1], 0, 1)
        for i, a in enumerate(xs[2:], start=2):
            arg = np.where(a > out, i, arg)
            out = np.where(a > out, a, out)
        return out, arg
    raise ValueError(f"operation must be SUM, PROD or MAX, got {operation!r}")
