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


# ---- structure layers: backward ------------------------------------------------------
def concat_backward_reference(dy, shapes, axis) -> list[np.ndarray]:
    """Concat's backward: bottom i's diff is its stretch of dy along axis
    (also Slice's forward). Element by element."""
    dy = np.asarray(dy, np.float64)
    starts = np.cumsum([0] + [s[axis] for s in shapes])
    out = [np.zeros(s) for s in shapes]
    for idx in np.ndindex(*dy.shape):
        i = int(np.searchsorted(starts, idx[axis], side="right")) - 1
        local = idx[:axis] + (idx[axis] - starts[i],) + idx[axis + 1:]
        out[i][local] = dy[idx]
    return out


def crop_backward_reference(dy, big_shape, offsets) -> np.ndarray:
    """Crop's backward: dy placed at ``offsets`` (one per axis) in zeros."""
    dy = np.asarray(dy, np.float64)
    dx = np.zeros(big_shape)
    for idx in np.ndindex(*dy.shape):
        dx[tuple(i + o for i, o in zip(idx, offsets))] += dy[idx]
    return dx


def tile_backward_reference(dy, bottom_shape, axis) -> np.ndarray:
    """Tile's backward: every top element adds its diff to the bottom element
    it copies (top index along axis, modulo the bottom's size there)."""
    dy = np.asarray(dy, np.float64)
    dx = np.zeros(bottom_shape)
    for idx in np.ndindex(*dy.shape):
        src = idx[:axis] + (idx[axis] % bottom_shape[axis],) + idx[axis + 1:]
        dx[src] += dy[idx]
    return dx


def eltwise_backward_reference(inputs, dy, operation="SUM", coeff=None,
                               stable_prod_grad=True) -> list[np.ndarray]:
    """Caffe Eltwise backward, per element: SUM coeff_i * dy; PROD dy times
    the other inputs (or dy * out / x_i without stable_prod_grad); MAX dy to
    the winning input (Caffe's tie rule, see eltwise_reference)."""
    xs = [np.asarray(a, np.float64).ravel() for a in inputs]
    g = np.asarray(dy, np.float64).ravel()
    out, arg = eltwise_reference(xs, operation, coeff)
    grads = [np.zeros_like(x) for x in xs]
    for e in range(g.size):
        for i in range(len(xs)):
            if operation == "SUM":
                grads[i][e] = (1.0 if coeff is None else coeff[i]) * g[e]
            elif operation == "MAX":
                grads[i][e] = g[e] if arg[e] == i else 0.0
            elif stable_prod_grad:
                p = 1.0
                for j in range(len(xs)):
                    if j != i:
                        p *= xs[j][e]
                grads[i][e] = g[e] * p
            else:
                with np.errstate(all="ignore"):
                    grads[i][e] = g[e] * out[e] / xs[i][e]
    shape = np.shape(inputs[0])
    return [d.reshape(shape) for d in grads]


def reduction_reference(x, operation="SUM", axis=0, coeff=1.0) -> np.ndarray:
    """Caffe Reduction: each item of the first ``axis`` axes reduced to one number."""
    x = np.asarray(x, np.float64)
    out = np.zeros(x.shape[:axis])
    for idx in np.ndindex(*x.shape[:axis]):
        row = x[idx].ravel()
        total = 0.0
        for v in row:
            total += {"SUM": v, "MEAN": v, "ASUM": abs(v), "SUMSQ": v * v}[operation]
        if operation == "MEAN":
            total /= row.size
        out[idx] = coeff * total
    return out


def reduction_backward_reference(x, dy, operation="SUM", axis=0, coeff=1.0) -> np.ndarray:
    """d(reduction)/dx times dy: coeff * dy * (1, sign(x) with sign(0) = 0, 2x, 1/dim)."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64).reshape(x.shape[:axis])
    dim = math.prod(x.shape[axis:])
    dx = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        v, g = x[idx], coeff * dy[idx[:axis]]
        dx[idx] = {"SUM": g, "MEAN": g / dim, "ASUM": g * (float(v > 0) - float(v < 0)),
                   "SUMSQ": 2.0 * v * g}[operation]
    return dx


def softmax_backward_reference(y, dy, axis=1) -> np.ndarray:
    """Softmax's backward from its output y: dx_c = y_c * (dy_c - sum_k dy_k y_k)."""
    y = np.moveaxis(np.asarray(y, np.float64), axis, -1)
    dy = np.moveaxis(np.asarray(dy, np.float64), axis, -1)
    dx = np.empty_like(y)
    for idx in np.ndindex(*y.shape[:-1]):
        dot = sum(a * b for a, b in zip(dy[idx], y[idx]))
        for c in range(y.shape[-1]):
            dx[idx + (c,)] = y[idx + (c,)] * (dy[idx + (c,)] - dot)
    return np.moveaxis(dx, -1, axis)


# ---- losses and Accuracy (Caffe's forward and backward, weight 1) -----------------------
FLT_MIN = float(np.finfo(np.float32).tiny)


def loss_normalizer(mode, valid, outer, inner) -> float:
    """Caffe's loss divisor: FULL outer*inner, VALID the valid count,
    BATCH_SIZE outer, NONE 1; never below 1."""
    n = {"FULL": outer * inner, "VALID": valid, "BATCH_SIZE": outer, "NONE": 1}[mode]
    return float(max(1, n))


def _positions(shape, axis):
    """(outer, classes, inner) around axis, as plain ints."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def softmax_loss_reference(x, labels, axis=1, ignore=None, normalization="VALID"):
    """SoftmaxWithLoss: (loss, dloss/dx, probabilities) with loops over every
    (outer, inner) position."""
    x = np.asarray(x, np.float64)
    prob = softmax_reference(x, axis)
    outer, classes, inner = _positions(x.shape, axis)
    p3 = prob.reshape(outer, classes, inner)
    lab = np.asarray(labels).reshape(outer, inner)
    dx = np.zeros((outer, classes, inner))
    total, count = 0.0, 0
    for o in range(outer):
        for i in range(inner):
            label = int(lab[o, i])
            if ignore is not None and label == ignore:
                continue
            total -= math.log(max(p3[o, label, i], FLT_MIN))
            for c in range(classes):
                dx[o, c, i] = p3[o, c, i] - (1.0 if c == label else 0.0)
            count += 1
    norm = loss_normalizer(normalization, count, outer, inner)
    return total / norm, (dx / norm).reshape(x.shape), prob


def infogain_loss_reference(x, labels, h, axis=1, ignore=None, normalization="VALID"):
    """InfogainLoss on logits x: (loss, dloss/dx)."""
    x = np.asarray(x, np.float64)
    h = np.asarray(h, np.float64)
    prob = softmax_reference(x, axis)
    outer, classes, inner = _positions(x.shape, axis)
    h = h.reshape(classes, classes)
    p3 = prob.reshape(outer, classes, inner)
    lab = np.asarray(labels).reshape(outer, inner)
    dx = np.zeros((outer, classes, inner))
    total, count = 0.0, 0
    for o in range(outer):
        for i in range(inner):
            label = int(lab[o, i])
            if ignore is not None and label == ignore:
                continue
            row_sum = sum(h[label, k] for k in range(classes))
            for k in range(classes):
                total -= h[label, k] * math.log(max(p3[o, k, i], 1e-20))
                dx[o, k, i] = p3[o, k, i] * row_sum - h[label, k]
            count += 1
    norm = loss_normalizer(normalization, count, outer, inner)
    return total / norm, (dx / norm).reshape(x.shape)


def sigmoid_cross_entropy_reference(x, t, ignore=None, normalization="BATCH_SIZE"):
    """SigmoidCrossEntropyLoss: (loss, dloss/dx), the log terms written plainly
    (keep |x| moderate)."""
    x = np.asarray(x, np.float64)
    t = np.asarray(t, np.float64).reshape(x.shape)
    dx = np.zeros_like(x)
    total, count = 0.0, 0
    for idx in np.ndindex(*x.shape):
        if ignore is not None and int(t[idx]) == ignore:
            continue
        s = 1.0 / (1.0 + math.exp(-x[idx]))
        total -= t[idx] * math.log(s) + (1.0 - t[idx]) * math.log(1.0 - s)
        dx[idx] = s - t[idx]
        count += 1
    outer = x.shape[0]
    norm = loss_normalizer(normalization, count, outer, x.size // outer)
    return total / norm, dx / norm


def euclidean_loss_reference(a, b):
    """EuclideanLoss: (loss, dloss/da, dloss/db) with b shaped like itself."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    n = a.shape[0]
    fa, fb = a.reshape(n, -1), b.reshape(n, -1)
    total = 0.0
    da = np.zeros_like(fa)
    for i in range(n):
        for j in range(fa.shape[1]):
            d = fa[i, j] - fb[i, j]
            total += d * d
            da[i, j] = d / n
    return total / n / 2.0, da.reshape(a.shape), (-da).reshape(b.shape)


def contrastive_loss_reference(a, b, similar, margin=1.0, legacy=False):
    """ContrastiveLoss: (loss, dloss/da, dloss/db), Caffe's gradient rule
    (distance + 1e-4 in the non-legacy denominator)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    n = a.shape[0]
    fa, fb = a.reshape(n, -1), b.reshape(n, -1)
    sim = np.asarray(similar).reshape(n)
    total = 0.0
    da = np.zeros_like(fa)
    for i in range(n):
        diff = fa[i] - fb[i]
        d2 = sum(v * v for v in diff)
        if int(sim[i]):
            total += d2
            da[i] = diff / n
        elif legacy:
            total += max(margin - d2, 0.0)
            da[i] = -diff / n if margin - d2 > 0 else 0.0
        else:
            d = math.sqrt(d2)
            total += max(margin - d, 0.0) ** 2
            da[i] = -(margin - d) / (d + 1e-4) * diff / n if margin - d > 0 else 0.0
    return total / n / 2.0, da.reshape(a.shape), (-da).reshape(b.shape)


def hinge_loss_reference(x, labels, norm="L1"):
    """HingeLoss (one-vs-all): (loss, dloss/dx)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    f = x.reshape(n, -1)
    lab = np.asarray(labels).reshape(n)
    total = 0.0
    dx = np.zeros_like(f)
    for i in range(n):
        for k in range(f.shape[1]):
            sign = -1.0 if k == int(lab[i]) else 1.0
            m = max(0.0, 1.0 + sign * f[i, k])
            if norm == "L2":
                total += m * m
                dx[i, k] = 2.0 * m * sign / n
            else:
                total += m
                dx[i, k] = (sign if m > 0 else 0.0) / n
    return total / n, dx.reshape(x.shape)


def multinomial_logistic_reference(p, labels):
    """MultinomialLogisticLoss on probabilities: (loss, dloss/dp)."""
    p = np.asarray(p, np.float64)
    n = p.shape[0]
    f = p.reshape(n, -1)
    lab = np.asarray(labels).reshape(n)
    total = 0.0
    dp = np.zeros_like(f)
    for i in range(n):
        q = max(f[i, int(lab[i])], 1e-20)
        total -= math.log(q)
        dp[i, int(lab[i])] = -1.0 / q / n
    return total / n, dp.reshape(p.shape)


def accuracy_reference(x, labels, top_k=1, axis=1, ignore=None):
    """Accuracy: (accuracy, per-class accuracy). The true class is in the top k
    when fewer than k other classes score at least as high (ties count against)."""
    x = np.asarray(x, np.float64)
    outer, classes, inner = _positions(x.shape, axis)
    x3 = x.reshape(outer, classes, inner)
    lab = np.asarray(labels).reshape(outer, inner)
    hits, count = 0, 0
    seen, class_hits = np.zeros(classes), np.zeros(classes)
    for o in range(outer):
        for i in range(inner):
            label = int(lab[o, i])
            if ignore is not None and label == ignore:
                continue
            better = sum(1 for c in range(classes) if c != label and x3[o, c, i] >= x3[o, label, i])
            seen[label] += 1
            count += 1
            if better < top_k:
                hits += 1
                class_hits[label] += 1
    per_class = np.array([class_hits[c] / seen[c] if seen[c] else 0.0 for c in range(classes)])
    return (hits / count if count else 0.0), per_class


# ---- backward of the neuron, normalisation and dense families ---------------
def neuron_backward_reference(kind: str, x, dy, **p) -> np.ndarray:
    """dL/dx = dy * f'(x) for the neuron layers of ``neuron_reference``, element
    by element from the textbook derivative (Caffe's conventions at kinks:
    ReLU's slope at 0, sign(0) = 0, Clip passes both ends)."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    dx = np.empty_like(x)
    for i in np.ndindex(*x.shape):
        v = float(x[i])
        if kind == "ReLU":
            d = 1.0 if v > 0 else p.get("negative_slope", 0.0)
        elif kind == "ELU":
            d = 1.0 if v > 0 else p.get("alpha", 1.0) * math.exp(v)
        elif kind == "Sigmoid":
            s = 1.0 / (1.0 + math.exp(-v))
            d = s * (1.0 - s)
        elif kind == "TanH":
            d = 1.0 - math.tanh(v) ** 2
        elif kind == "AbsVal":
            d = 1.0 if v > 0 else (-1.0 if v < 0 else 0.0)
        elif kind == "BNLL":
            d = 1.0 / (1.0 + math.exp(-v))
        elif kind == "Power":
            power, scale, shift = p.get("power", 1.0), p.get("scale", 1.0), p.get("shift", 0.0)
            d = 0.0 if power == 0 else power * scale * (shift + scale * v) ** (power - 1)
        elif kind in ("Exp", "Log"):
            base = p.get("base", -1.0)
            lnb = 1.0 if base == -1.0 else math.log(base)
            scale, shift = p.get("scale", 1.0), p.get("shift", 0.0)
            z = shift + scale * v
            d = lnb * scale * math.exp(lnb * z) if kind == "Exp" else scale / (lnb * z)
        elif kind == "Clip":
            d = 1.0 if p["min"] <= v <= p["max"] else 0.0
        elif kind == "Swish":
            beta = p.get("beta", 1.0)
            s = 1.0 / (1.0 + math.exp(-beta * v))
            d = s + beta * v * s * (1.0 - s)
        else:
            raise ValueError(f"no backward reference for {kind!r}")
        dx[i] = dy[i] * d
    return dx


def prelu_backward_reference(x, slope, dy):
    """(dx, dslope) of PReLU; ``slope`` (C,) or a single (channel_shared) value,
    whose gradient then sums over every channel."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    slope = np.asarray(slope, np.float64).ravel()
    shared = slope.size == 1
    dx = np.empty_like(x)
    dslope = np.zeros(slope.size)
    for i in np.ndindex(*x.shape):
        c = 0 if shared else i[1]
        if x[i] > 0:
            dx[i] = dy[i]
        else:
            dx[i] = slope[c] * dy[i]
            dslope[c] += dy[i] * x[i]
    return dx, dslope


def batchnorm_backward_reference(x, dy, eps=1e-5, var=None) -> np.ndarray:
    """BatchNorm's dL/dx on x (N, C, ...). With ``var`` (the statistics in use,
    already divided by the scale factor) the statistics are constants:
    dx = dy / sqrt(var + eps). Without, the batch's own mean and biased
    variance, differentiated term by term in x (not through y):
    dx = s * (dy - mean(dy)) - s^3 * (x - mu) * mean(dy * (x - mu))."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    dx = np.empty_like(x)
    for c in range(x.shape[1]):
        xc, dc = x[:, c], dy[:, c]
        if var is not None:
            dx[:, c] = dc / math.sqrt(float(var[c]) + eps)
            continue
        mu = xc.mean()
        s = 1.0 / math.sqrt(((xc - mu) ** 2).mean() + eps)
        dx[:, c] = s * (dc - dc.mean()) - s ** 3 * (xc - mu) * (dc * (xc - mu)).mean()
    return dx


def mvn_backward_reference(x, dy, normalize_variance=True, across_channels=False,
                           eps=1e-9) -> np.ndarray:
    """Caffe's MVN backward per image (or image channel): dy - mean(dy), and with
    normalize_variance (dy - mean(dy) - mean(dy * y) * y) / (std + eps),
    y the layer's output (Caffe's formula, exact for eps = 0)."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    y = mvn_reference(x, normalize_variance, across_channels, eps)
    dx = np.empty_like(x)
    groups = [(n,) for n in range(x.shape[0])] if across_channels else list(
        np.ndindex(*x.shape[:2]))
    for idx in groups:
        g = dy[idx] - dy[idx].mean()
        if normalize_variance:
            std = math.sqrt(((x[idx] - x[idx].mean()) ** 2).mean())
            g = (g - (dy[idx] * y[idx]).mean() * y[idx]) / (std + eps)
        dx[idx] = g
    return dx


def affine_backward_reference(x, s, dy, axis):
    """Scale/Bias (y = x * s + b, s and b aligned to x's axes from ``axis``):
    returns (dx, ds, db) with ds and db summed over the broadcast axes."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    s = np.asarray(s, np.float64)
    ds = np.zeros(s.shape)
    db = np.zeros(s.shape)
    dx = np.empty_like(x)
    for i in np.ndindex(*x.shape):
        j = i[axis:axis + s.ndim]
        dx[i] = dy[i] * s[j]
        ds[j] += dy[i] * x[i]
        db[j] += dy[i]
    return dx, ds, db


def embed_backward_reference(index, dy, input_dim):
    """Embed's (dW, db): row index[n] of dW sums dy[n] over every n."""
    index = np.asarray(index).ravel().astype(int)
    dy = np.asarray(dy, np.float64).reshape(index.size, -1)
    dw = np.zeros((input_dim, dy.shape[1]))
    for n, k in enumerate(index):
        dw[k] += dy[n]
    return dw, dy.sum(axis=0)


def conv2d_backward_reference(x, w, dy, stride=1, pad=0, dilation=1, group=1):
    """Gradients of Caffe Convolution (conv2d_reference) for top gradient dy:
    (dx, dw, db), by scattering every output's gradient over its window."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    (sh, sw), (ph, pw), (dh, dw_) = map(_pair, (stride, pad, dilation))
    n_img, n_ch, height, width = x.shape
    n_out, cpg, kh, kw = w.shape
    mpg = n_out // group
    oh_n, ow_n = dy.shape[2:]
    xp = np.zeros((n_img, n_ch, height + 2 * ph, width + 2 * pw))
    xp[:, :, ph:ph + height, pw:pw + width] = x
    dxp = np.zeros_like(xp)
    dwt = np.zeros_like(w)
    ext_h, ext_w = dh * (kh - 1) + 1, dw_ * (kw - 1) + 1
    for n in range(n_img):
        for m in range(n_out):
            g = m // mpg
            for oh in range(oh_n):
                for ow in range(ow_n):
                    rows = slice(oh * sh, oh * sh + ext_h, dh)
                    cols = slice(ow * sw, ow * sw + ext_w, dw_)
                    chans = slice(g * cpg, (g + 1) * cpg)
                    dwt[m] += dy[n, m, oh, ow] * xp[n, chans, rows, cols]
                    dxp[n, chans, rows, cols] += dy[n, m, oh, ow] * w[m]
    return dxp[:, :, ph:ph + height, pw:pw + width], dwt, dy.sum(axis=(0, 2, 3))


def pool_backward_reference(x, dy, method, kernel, stride=1, pad=0, ceil_mode=True):
    """Gradient of Caffe Pooling ('max' or 'ave') for top gradient dy: max
    routes each gradient to its window's first maximum, ave spreads it over
    the clipped window divided by pool_reference's divisor."""
    (kh, kw), (sh, sw), (ph, pw) = map(_pair, (kernel, stride, pad))
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    _, arg = pool_reference(x, "max", kernel, stride, pad, ceil_mode, return_argmax=True)
    n_img, n_ch, height, width = x.shape
    dx = np.zeros_like(x)
    for n in range(n_img):
        for c in range(n_ch):
            for oh in range(dy.shape[2]):
                for ow in range(dy.shape[3]):
                    g = dy[n, c, oh, ow]
                    if method == "max":
                        if arg[n, c, oh, ow] >= 0:
                            h, v = divmod(int(arg[n, c, oh, ow]), width)
                            dx[n, c, h, v] += g
                        continue
                    h0, w0 = oh * sh - ph, ow * sw - pw
                    h1, w1 = min(h0 + kh, height + ph), min(w0 + kw, width + pw)
                    area = (h1 - h0) * (w1 - w0)
                    for h in range(max(h0, 0), min(h1, height)):
                        for v in range(max(w0, 0), min(w1, width)):
                            dx[n, c, h, v] += g / area
    return dx


def transform_reference(item, rng, *, train, crop=0, mirror=False, mean=None, scale=1.0):
    """Caffe's DataTransformer on one C x H x W item, element by element:
    out[c, y, x'] = (item[c, oy+y, ox+x] - mean[...]) * scale, x' mirrored.
    Draws from ``rng`` in Caffe's order: the mirror coin, then the crop
    offsets (TRAIN; centred in TEST). ``mean`` is None, C values or C x H x W."""
    item = np.asarray(item)
    channels, height, width = item.shape
    flip = mirror and bool(rng.integers(2))
    oh, ow = (crop, crop) if crop else (height, width)
    oy = ox = 0
    if crop:
        if train:
            oy, ox = int(rng.integers(height - crop + 1)), int(rng.integers(width - crop + 1))
        else:
            oy, ox = (height - crop) // 2, (width - crop) // 2
    out = np.zeros((channels, oh, ow), np.float32)
    for c in range(channels):
        for y in range(oh):
            for x in range(ow):
                v = np.float32(item[c, oy + y, ox + x])
                if mean is not None:
                    m = np.asarray(mean, np.float32)
                    v = v - (m[c, oy + y, ox + x] if m.ndim == 3 else m[c if m.size > 1 else 0])
                out[c, y, ow - 1 - x if flip else x] = np.float32(v * np.float32(scale))
    return out


# ---------------------------------------------------------- mobile nets ----

def depthwise_conv2d_reference(x, w, b=None, stride=1, pad=0, dilation=1) -> np.ndarray:
    """Depthwise convolution written out pixel by pixel: x (N, C, H, W), w
    (C*k, 1, kh, kw); output channel m reads input channel m // k only."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    (sh, sw), (ph, pw), (dh, dw) = map(_pair, (stride, pad, dilation))
    n_img, n_ch, height, width = x.shape
    n_out, _, kh, kw = w.shape
    mult = n_out // n_ch
    oh_n, ow_n = conv_out(height, kh, sh, ph, dh), conv_out(width, kw, sw, pw, dw)
    y = np.zeros((n_img, n_out, oh_n, ow_n))
    for n in range(n_img):
        for m in range(n_out):
            for oh in range(oh_n):
                for ow in range(ow_n):
                    acc = 0.0 if b is None else float(b[m])
                    for i in range(kh):
                        for j in range(kw):
                            ih, iw = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                            if 0 <= ih < height and 0 <= iw < width:
                                acc += w[m, 0, i, j] * x[n, m // mult, ih, iw]
                    y[n, m, oh, ow] = acc
    return y


def relu6_reference(x, negative_slope=0.0) -> np.ndarray:
    """The ReLU6 fork: min(max(x, 0) + slope * min(x, 0), 6), element by element."""
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    for i in np.ndindex(*x.shape):
        v = float(x[i])
        out[i] = min(max(v, 0.0) + negative_slope * min(v, 0.0), 6.0)
    return out


def relu6_backward_reference(x, dy, negative_slope=0.0) -> np.ndarray:
    """dx = dy * (1 for 0 < x < 6, slope for x <= 0, 0 for x >= 6)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    dx = np.empty_like(x)
    for i in np.ndindex(*x.shape):
        v = float(x[i])
        d = 0.0 if v >= 6.0 else (1.0 if v > 0.0 else negative_slope)
        dx[i] = dy[i] * d
    return dx


def shuffle_channel_reference(x, group) -> np.ndarray:
    """ShuffleNet's channel shuffle, channel by channel: with C = group * r,
    output channel j*group + i is input channel i*r + j."""
    x = np.asarray(x)
    out = np.empty_like(x)
    rows = x.shape[1] // group
    for i in range(group):
        for j in range(rows):
            out[:, j * group + i] = x[:, i * rows + j]
    return out


# ------------------------------------------------------------ SSD layers ----

def normalize_reference(x, scale, across_spatial=True, eps=1e-10) -> np.ndarray:
    """SSD Normalize: x / sqrt(sum x^2 + eps) per sample (across_spatial) or per
    position over channels, times scale (one value, or one per channel)."""
    x = np.asarray(x, np.float64)
    n_img, n_ch = x.shape[:2]
    flat = x.reshape(n_img, n_ch, -1)
    scale = np.asarray(scale, np.float64).reshape(-1)
    out = np.empty_like(flat)
    for n in range(n_img):
        if across_spatial:
            total = sum(float(v) ** 2 for v in flat[n].ravel())
            norms = [math.sqrt(total + eps)] * flat.shape[2]
        else:
            norms = [math.sqrt(sum(float(flat[n, c, i]) ** 2 for c in range(n_ch)) + eps)
                     for i in range(flat.shape[2])]
        for c in range(n_ch):
            s = scale[0] if len(scale) == 1 else scale[c]
            for i in range(flat.shape[2]):
                out[n, c, i] = s * flat[n, c, i] / norms[i]
    return out.reshape(x.shape)


def permute_reference(x, order) -> np.ndarray:
    """Top axis i is bottom axis order[i] (order complete), element by element."""
    x = np.asarray(x)
    out = np.empty(tuple(x.shape[a] for a in order), x.dtype)
    for idx in np.ndindex(*x.shape):
        out[tuple(idx[a] for a in order)] = x[idx]
    return out


def prior_box_reference(feat_hw, img_hw, min_sizes, max_sizes=(), aspect_ratios=(), flip=True,
                        clip=False, variance=(), step_hw=None, offset=0.5) -> np.ndarray:
    """SSD PriorBox, (1, 2, H*W*num_priors*4), straight from the fork's loops."""
    ratios = [1.0]
    for r in aspect_ratios:
        if any(abs(r - q) < 1e-6 for q in ratios):
            continue
        ratios.append(r)
        if flip:
            ratios.append(1.0 / r)
    lh, lw = feat_hw
    ih, iw = img_hw
    sh, sw = step_hw if step_hw else (ih / lh, iw / lw)
    boxes = []
    for h in range(lh):
        for w in range(lw):
            cx, cy = (w + offset) * sw, (h + offset) * sh
            for k, m in enumerate(min_sizes):
                sizes = [(m, m)]
                if max_sizes:
                    sizes.append((math.sqrt(m * max_sizes[k]),) * 2)
                sizes += [(m * math.sqrt(r), m / math.sqrt(r)) for r in ratios if r != 1.0]
                for bw, bh in sizes:
                    box = [(cx - bw / 2) / iw, (cy - bh / 2) / ih,
                           (cx + bw / 2) / iw, (cy + bh / 2) / ih]
                    if clip:
                        box = [min(max(v, 0.0), 1.0) for v in box]
                    boxes += box
    var = list(variance) * (4 if len(variance) == 1 else 1) if variance else [0.1] * 4
    variances = var * (len(boxes) // 4)
    return np.array([boxes, variances], np.float64)[None]


def _box_area(b) -> float:
    if b[2] < b[0] or b[3] < b[1]:
        return 0.0
    return (b[2] - b[0]) * (b[3] - b[1])


def _iou(a, b) -> float:
    inter = _box_area([max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])])
    if inter <= 0:
        return 0.0
    return inter / (_box_area(a) + _box_area(b) - inter)


def _decode(loc, prior, var, code_type) -> list[float]:
    d = [loc[k] * (var[k] if var is not None else 1.0) for k in range(4)]
    pw, ph = prior[2] - prior[0], prior[3] - prior[1]
    if code_type == "CORNER":
        return [prior[k] + d[k] for k in range(4)]
    if code_type == "CORNER_SIZE":
        return [prior[0] + d[0] * pw, prior[1] + d[1] * ph, prior[2] + d[2] * pw,
                prior[3] + d[3] * ph]
    cx, cy = d[0] * pw + (prior[0] + prior[2]) / 2, d[1] * ph + (prior[1] + prior[3]) / 2
    w, h = math.exp(d[2]) * pw, math.exp(d[3]) * ph
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def detection_output_reference(loc, conf, prior, num_classes, share_location=True,
                               background=0, nms_threshold=0.3, top_k=-1, eta=1.0,
                               confidence_threshold=None, keep_top_k=-1,
                               code_type="CORNER", variance_encoded=False,
                               clip=False) -> np.ndarray:
    """The SSD fork's DetectionOutput, one Python loop per step: (D, 7) rows
    [image, label, score, xmin, ymin, xmax, ymax], grouped by image and label;
    with no detection at all, one row [i, -1, ..., -1] per image."""
    loc, conf, prior = (np.asarray(a, np.float64) for a in (loc, conf, prior))
    num = loc.shape[0]
    n_p = prior.shape[2] // 4
    n_loc = 1 if share_location else num_classes
    loc = loc.reshape(num, n_p, n_loc, 4)
    conf = conf.reshape(num, n_p, num_classes)
    priors = prior[0, 0].reshape(n_p, 4)
    variances = None if variance_encoded else prior[0, 1].reshape(n_p, 4)
    rows = []
    for i in range(num):
        boxes = {}
        for c in range(n_loc):
            label = -1 if share_location else c
            boxes[label] = []
            for p in range(n_p):
                b = _decode(loc[i, p, c], priors[p], None if variances is None
                            else variances[p], code_type)
                if clip:
                    b = [min(max(v, 0.0), 1.0) for v in b]
                boxes[label].append(b)
        kept = {}
        for c in range(num_classes):
            if c == background:
                continue
            bx = boxes[-1 if share_location else c]
            cands = [(conf[i, p, c], p) for p in range(n_p)
                     if confidence_threshold is None or conf[i, p, c] > confidence_threshold]
            cands.sort(key=lambda t: -t[0])            # stable: ties keep prior order
            if top_k > -1:
                cands = cands[:top_k]
            threshold, keep = nms_threshold, []
            for _, p in cands:
                if all(_iou(bx[p], bx[q]) <= threshold for q in keep):
                    keep.append(p)
                    if eta < 1 and threshold > 0.5:
                        threshold *= eta
            kept[c] = keep
        total = sum(len(k) for k in kept.values())
        if -1 < keep_top_k < total:
            pairs = [(conf[i, p, c], c, p) for c, keep in kept.items() for p in keep]
            pairs.sort(key=lambda t: -t[0])
            pairs = pairs[:keep_top_k]
            kept = {c: [p for _, cc, p in pairs if cc == c] for c in kept}
        for c in sorted(kept):
            for p in kept[c]:
                rows.append([i, c, conf[i, p, c]] + boxes[-1 if share_location else c][p])
    if not rows:
        return np.array([[i, -1, -1, -1, -1, -1, -1] for i in range(num)], np.float64)
    return np.array(rows, np.float64)
