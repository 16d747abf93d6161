"""Elementwise neuron and Eltwise kernels: flat loops over every element.

Calling convention (one compiled signature per kernel):
  * arrays are float32, C-contiguous; pass them flat, ``blob.reshape(-1)``.
    Any rank works (each kernel views its arguments as 1-D), but every new
    rank compiles another specialisation;
  * float parameters are Python floats (float64; converted to float32 once,
    so the loops run in float32 like Caffe), ints and indices Python ints
    (int64), masks int64 arrays;
  * ``out`` may be the same array as ``x``: every element is read before it
    is written, so in-place layers work.

Threads: every kernel here is serial.  The memory-bound ones (ReLU,
Eltwise, backward passes) would save tens of microseconds per blob on a
second core; the transcendental ones vectorise (exp, log, sqrt: 1-4 ns per
element), leaving only tanh and log1p at ~20 ns.  Neither repays the risk
described in _jit.py of a parallel region stalling on a busy machine.

Eltwise recipes for k inputs without temporaries (Caffe's semantics):
  SUM   ``out.fill(0)``, then ``eltwise_sum(out, x_i, coeff_i)`` for each i;
  PROD  ``out[...] = x_0``, then ``eltwise_prod(out, x_i)`` for i >= 1;
  MAX   ``eltwise_max_pair(x_0, x_1, out, mask)``, then
        ``eltwise_max(out, x_i, mask, i)`` for i >= 2.  Caffe gives a tie
        between the first two inputs to input 1 and later ties to the
        earlier input; the pair kernel exists to reproduce exactly that.
"""
from __future__ import annotations

import numpy as np

from netdef.kernels._jit import helper, kernel

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)


@helper
def _pos(v):
    """std::max(v, 0): NaN propagates, -0.0 is kept."""
    return _ZERO if v < _ZERO else v


@helper
def _neg(v):
    """std::min(v, 0): NaN propagates, -0.0 is kept."""
    return _ZERO if _ZERO < v else v


@kernel
def relu(x, negative_slope, out):
    """out = max(x, 0) + negative_slope * min(x, 0), exactly Caffe's expression.

    So NaN stays NaN and, as in Caffe, -inf with a zero slope gives NaN
    (0 * -inf).
    """
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    slope = np.float32(negative_slope)
    for i in range(xf.size):
        v = xf[i]
        of[i] = _pos(v) + slope * _neg(v)


@kernel
def bias_relu(y2, bias, negative_slope):
    """y2 (M, S) = relu(y2 + bias[m]) per row m, in place, with relu's
    expression: a convolution's bias and its fused ReLU in one pass over
    the output (bias float32 (M,))."""
    slope = np.float32(negative_slope)
    for m in range(y2.shape[0]):
        row, b = y2[m], bias[m]
        for i in range(row.shape[0]):
            v = row[i] + b
            row[i] = _pos(v) + slope * _neg(v)


@kernel
def relu_backward(x, top_diff, negative_slope, bottom_diff):
    """dx = dy * ((x > 0) + negative_slope * (x <= 0)); a NaN x passes no gradient.

    ``x`` may be the top data of an in-place ReLU: for a slope >= 0 the sign
    of y equals the sign of x.
    """
    xf = x.reshape(x.size)
    df = top_diff.reshape(top_diff.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    slope = np.float32(negative_slope)
    for i in range(xf.size):
        # Caffe's expression, branch-free so it vectorises (NaN: both tests false)
        v = xf[i]
        bf[i] = df[i] * (np.float32(v > _ZERO) + slope * np.float32(v <= _ZERO))


@kernel
def sigmoid(x, out):
    """out = 1 / (1 + exp(-x)).

    Caffe evaluates 0.5 tanh(0.5 x) + 0.5; the exp form is the same function
    up to rounding and vectorises where tanhf does not (measured 8x faster).
    exp(-x) overflowing to inf gives exactly 0, so nothing breaks for x << 0.
    """
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    for i in range(xf.size):
        of[i] = _ONE / (_ONE + np.exp(-xf[i]))


@kernel
def sigmoid_backward(y, top_diff, bottom_diff):
    """dx = dy * y * (1 - y), y the sigmoid output."""
    yf = y.reshape(y.size)
    df = top_diff.reshape(top_diff.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    for i in range(yf.size):
        v = yf[i]
        bf[i] = df[i] * v * (_ONE - v)


@kernel
def tanh(x, out):
    """out = tanh(x)."""
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    for i in range(xf.size):
        of[i] = np.tanh(xf[i])


@kernel
def tanh_backward(y, top_diff, bottom_diff):
    """dx = dy * (1 - y^2), y the tanh output."""
    yf = y.reshape(y.size)
    df = top_diff.reshape(top_diff.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    for i in range(yf.size):
        v = yf[i]
        bf[i] = df[i] * (_ONE - v * v)


@kernel
def elu(x, alpha, out):
    """out = max(x, 0) + alpha * (exp(min(x, 0)) - 1), Caffe's expression.

    Branch-free, so the exp vectorises (3x faster than an if/else).  Like
    Caffe it uses exp(x) - 1, not expm1: absolute error below 1e-7 * alpha.
    """
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    a = np.float32(alpha)
    for i in range(xf.size):
        v = xf[i]
        of[i] = _pos(v) + a * (np.exp(_neg(v)) - _ONE)


@kernel
def elu_backward(x, y, top_diff, alpha, bottom_diff):
    """dx = dy if x > 0 else dy * (y + alpha).  In place, x is y: same sign for alpha > 0."""
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    df = top_diff.reshape(top_diff.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    a = np.float32(alpha)
    for i in range(xf.size):
        bf[i] = df[i] if xf[i] > 0.0 else df[i] * (yf[i] + a)


@kernel
def absval(x, out):
    """out = |x|."""
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    for i in range(xf.size):
        of[i] = abs(xf[i])


@kernel
def absval_backward(x, top_diff, bottom_diff):
    """dx = sign(x) * dy with sign(0) = sign(NaN) = 0, as Caffe's caffe_cpu_sign."""
    xf = x.reshape(x.size)
    df = top_diff.reshape(top_diff.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    for i in range(xf.size):
        v = xf[i]
        if v > 0.0:
            bf[i] = df[i]
        elif v < 0.0:
            bf[i] = -df[i]
        else:
            bf[i] = _ZERO


@kernel
def power(x, power, scale, shift, out):
    """out = (shift + scale * x) ** power, Caffe's Power layer.

    When power * scale == 0 the result is the constant 1 (power == 0) or
    shift ** power, as in Caffe; a negative base with a non-integer power
    gives NaN (C pow).
    """
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    p = np.float32(power)
    a = np.float32(scale)
    b = np.float32(shift)
    if power * scale == 0.0:
        const = _ONE if power == 0.0 else b ** p
        for i in range(xf.size):
            of[i] = const
    elif power == 1.0:
        for i in range(xf.size):
            of[i] = a * xf[i] + b
    else:
        for i in range(xf.size):
            of[i] = (a * xf[i] + b) ** p


@kernel
def power_backward(x, top_diff, power, scale, shift, bottom_diff):
    """dx = dy * power * scale * (shift + scale * x) ** (power - 1).

    Caffe's cases: the constant power * scale when that is 0 or power is 1,
    and for power 2 the product 2 * scale * (shift + scale * x) (no pow).
    Otherwise Caffe divides y by (shift + scale * x), which gives 0/0 = NaN
    where the base is 0; the pow form used here gives the true limit there
    (0 for power > 1) and the same value everywhere else.
    """
    xf = x.reshape(x.size)
    df = top_diff.reshape(top_diff.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    a = np.float32(scale)
    b = np.float32(shift)
    k = np.float32(power * scale)
    if power * scale == 0.0 or power == 1.0:
        for i in range(xf.size):
            bf[i] = k * df[i]
    elif power == 2.0:
        ka = np.float32(power * scale * scale)
        kb = np.float32(power * scale * shift)
        for i in range(xf.size):
            bf[i] = df[i] * (ka * xf[i] + kb)
    else:
        q = np.float32(power - 1.0)
        for i in range(xf.size):
            bf[i] = df[i] * k * (a * xf[i] + b) ** q


@kernel
def exp_base(x, log_base, scale, shift, out):
    """out = base ** (shift + scale * x), given log_base = ln(base).

    Evaluated as Caffe does, exp(log_base*scale * x) * base**shift, so
    overflow happens where it happens in Caffe.
    """
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    inner = np.float32(log_base * scale)
    outer = np.float32(np.exp(log_base * shift))
    for i in range(xf.size):
        of[i] = outer * np.exp(inner * xf[i])


@kernel
def log_base(x, inv_log_base, scale, shift, out):
    """out = ln(shift + scale * x) * inv_log_base (= log_base(shift + scale * x))."""
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    a = np.float32(scale)
    b = np.float32(shift)
    m = np.float32(inv_log_base)
    for i in range(xf.size):
        of[i] = np.log(a * xf[i] + b) * m


@kernel
def log_backward(x, top_diff, inv_log_base, scale, shift, bottom_diff):
    """dx = dy * scale * inv_log_base / (shift + scale * x) (Caffe's Log backward)."""
    xf = x.reshape(x.size)
    df = top_diff.reshape(top_diff.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    a = np.float32(scale)
    b = np.float32(shift)
    k = np.float32(scale * inv_log_base)
    for i in range(xf.size):
        bf[i] = df[i] * k / (a * xf[i] + b)


@kernel
def bnll(x, out):
    """out = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): never overflows.

    Caffe's two branches (x + log(1 + exp(-x)) for x > 0) in one expression.
    """
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    for i in range(xf.size):
        v = xf[i]
        of[i] = _pos(v) + np.log1p(np.exp(-abs(v)))


@kernel
def bnll_backward(x, top_diff, bottom_diff):
    """dx = dy * e / (1 + e), e = exp(min(x, 50)): Caffe's form (the sigmoid of x,
    with x capped at Caffe's kBNLL_THRESHOLD so exp never overflows; NaN stays NaN)."""
    xf = x.reshape(x.size)
    df = top_diff.reshape(top_diff.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    cap = np.float32(50.0)
    for i in range(xf.size):
        v = xf[i]
        e = np.exp(cap if cap < v else v)
        bf[i] = df[i] * e / (e + _ONE)


@kernel
def threshold(x, t, out):
    """out = 1 if x > t else 0."""
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    tt = np.float32(t)
    for i in range(xf.size):
        of[i] = _ONE if xf[i] > tt else _ZERO


@kernel
def clip(x, lo, hi, out):
    """out = max(lo, min(x, hi)) with C++ std::min/max semantics (NaN -> lo)."""
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    a = np.float32(lo)
    b = np.float32(hi)
    for i in range(xf.size):
        v = xf[i]
        t = b if b < v else v
        of[i] = t if a < t else a


@kernel
def clip_backward(x, top_diff, lo, hi, bottom_diff):
    """dx = dy where lo <= x <= hi (both ends included, as in Caffe), else 0."""
    xf = x.reshape(x.size)
    df = top_diff.reshape(top_diff.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    a = np.float32(lo)
    b = np.float32(hi)
    for i in range(xf.size):
        v = xf[i]
        bf[i] = df[i] if (v >= a and v <= b) else _ZERO


@kernel
def swish(x, beta, out):
    """out = x * sigmoid(beta * x) (sigmoid in the exp form, see :func:`sigmoid`)."""
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    bb = np.float32(beta)
    for i in range(xf.size):
        v = xf[i]
        of[i] = v / (_ONE + np.exp(-bb * v))


@kernel
def swish_backward(x, top_diff, beta, bottom_diff):
    """dx = dy * (beta * y + s * (1 - beta * y)), s = sigmoid(beta * x), y = x * s.

    Caffe's expression, with y recomputed from x rather than read from the
    top (which a later in-place layer may have overwritten).
    """
    xf = x.reshape(x.size)
    df = top_diff.reshape(top_diff.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    bb = np.float32(beta)
    for i in range(xf.size):
        v = xf[i]
        s = _ONE / (_ONE + np.exp(-bb * v))
        by = bb * v * s
        bf[i] = df[i] * (by + s * (_ONE - by))


@kernel
def prelu(x3, slope, out3):
    """out = max(x, 0) + slope[c] * min(x, 0), over x3 (N, C, inner), slope (C,).

    For channel_shared the layer passes a C-vector filled with the one
    slope.
    """
    n_img, n_ch, inner = x3.shape
    for p in range(n_img * n_ch):
        n = p // n_ch
        c = p % n_ch
        a = slope[c]
        for i in range(inner):
            v = x3[n, c, i]
            out3[n, c, i] = _pos(v) + a * _neg(v)


@kernel
def prelu_backward(x3, top_diff3, slope, bottom_diff3, slope_diff):
    """bottom_diff3 (overwritten) = dy * ((x > 0) + slope[c] * (x <= 0));
    slope_diff[c] += sum of dy * x * (x <= 0) (parameter diffs accumulate).

    Caffe's expressions, branch-free so the loops vectorise.  ``x3`` must
    be the layer's input (an in-place PReLU keeps a copy); bottom_diff3 may
    be top_diff3.
    """
    n_img, n_ch, inner = x3.shape
    for c in range(n_ch):
        a = slope[c]
        acc = 0.0
        for n in range(n_img):
            for i in range(inner):
                v = x3[n, c, i]
                d = top_diff3[n, c, i]
                neg = np.float32(v <= _ZERO)
                bottom_diff3[n, c, i] = d * (np.float32(v > _ZERO) + a * neg)
                acc += d * v * neg
        slope_diff[c] += acc


@kernel
def eltwise_sum(out, x, coeff):
    """out += coeff * x."""
    of = out.reshape(out.size)
    xf = x.reshape(x.size)
    k = np.float32(coeff)
    for i in range(of.size):
        of[i] += k * xf[i]


@kernel
def eltwise_sum_pair(a, ca, b, cb, out):
    """out = ca * a + cb * b (out may be a or b): an Eltwise SUM of two
    bottoms in one pass instead of a scaled copy and an add."""
    af, bf, of = a.reshape(a.size), b.reshape(b.size), out.reshape(out.size)
    ka, kb = np.float32(ca), np.float32(cb)
    for i in range(of.size):
        of[i] = ka * af[i] + kb * bf[i]


@kernel
def eltwise_prod(out, x):
    """out *= x."""
    of = out.reshape(out.size)
    xf = x.reshape(x.size)
    for i in range(of.size):
        of[i] *= xf[i]


@kernel
def eltwise_max_pair(a, b, out, mask):
    """out = max(a, b), mask = 0 where a > b else 1 (a tie goes to b, as in Caffe)."""
    af = a.reshape(a.size)
    bf = b.reshape(b.size)
    of = out.reshape(out.size)
    mf = mask.reshape(mask.size)
    for i in range(of.size):
        u = af[i]
        v = bf[i]
        if u > v:
            of[i] = u
            mf[i] = 0
        else:
            of[i] = v
            mf[i] = 1


@kernel
def eltwise_max(out, x, mask, idx):
    """Where x > out: out = x and mask = idx (ties keep the earlier input)."""
    of = out.reshape(out.size)
    xf = x.reshape(x.size)
    mf = mask.reshape(mask.size)
    for i in range(of.size):
        v = xf[i]
        if v > of[i]:
            of[i] = v
            mf[i] = idx


@kernel
def eltwise_max_backward(top_diff, mask, idx, bottom_diff):
    """bottom_diff (overwritten) = top_diff where mask == idx, else 0."""
    df = top_diff.reshape(top_diff.size)
    mf = mask.reshape(mask.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    for i in range(df.size):
        bf[i] = df[i] if mf[i] == idx else _ZERO


_SIX = np.float32(6.0)


@kernel
def relu6(x, negative_slope, out):
    """out = min(max(x, 0) + negative_slope * min(x, 0), 6) (the ReLU6 fork's
    expression; NaN stays NaN)."""
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    slope = np.float32(negative_slope)
    for i in range(xf.size):
        v = xf[i]
        r = _pos(v) + slope * _neg(v)
        of[i] = _SIX if _SIX < r else r


@kernel
def relu6_backward(x, top_diff, negative_slope, bottom_diff):
    """dx = dy * ((x > 0) + negative_slope * (x <= 0)) * (x < 6): no gradient at
    or above 6, the slope's at and below 0. ``x`` may be the top data of an
    in-place ReLU6 when the slope is >= 0 (same signs, and y < 6 iff x < 6)."""
    xf = x.reshape(x.size)
    df = top_diff.reshape(top_diff.size)
    bf = bottom_diff.reshape(bottom_diff.size)
    slope = np.float32(negative_slope)
    for i in range(xf.size):
        v = xf[i]
        gate = np.float32(v > _ZERO) + slope * np.float32(v <= _ZERO)
        bf[i] = df[i] * gate * np.float32(v < _SIX)
