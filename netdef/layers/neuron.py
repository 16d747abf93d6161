"""Neuron layers: one bottom, one top of the same shape, elementwise.

Every leaf is a ``NeuronLayer``: the base gives the 1 -> 1 arity, the
"top shaped like bottom" shape rule, a forward that runs one kernel of
``netdef.kernels.elementwise`` over the flattened arrays and a backward that
runs its gradient kernel. A leaf only reads its ``*_param`` in ``setup`` and
names its kernels, the arrays its gradient kernel reads and the kernels'
scalar arguments. All of them may run in place (top == bottom in the
prototxt); the kernels read each element before writing it.

In place, the top's data and diff are the bottom's. A gradient that needs
the bottom's values (AbsVal, Clip, Power, ... ; see ``reads_input``) would
find them overwritten, so an in-place forward of such a layer keeps a copy
(Caffe reads the overwritten values instead). Gradients written from the
top (ReLU, Sigmoid, TanH, ELU, Exp) need no copy, as in Caffe.
"""
from __future__ import annotations

import math
import zlib

import numpy as np

from netdef.layers.base import Layer, register
from netdef.frontend.schema import pb


def _apply(kernel, x: np.ndarray, out: np.ndarray, *args) -> None:
    """Run ``kernel(x_flat, *args, out_flat)``; kernels take flat C-contiguous arrays
    (one compiled signature whatever the blob's rank)."""
    _apply_many(kernel, (x,), out, *args)


def _apply_many(kernel, arrays, out: np.ndarray, *args) -> None:
    """Run ``kernel(*flat arrays, *args, out_flat)`` (the gradient kernels' form)."""
    target = _writable(out)
    kernel(*(np.ascontiguousarray(a).reshape(-1) for a in arrays), *args, target.reshape(-1))
    if target is not out:
        out[...] = target


def _writable(out: np.ndarray) -> np.ndarray:
    """``out`` itself, or a contiguous scratch array when ``out`` is a strided view
    (a user-set array) that a flat kernel could not write through."""
    return out if out.flags.c_contiguous else np.empty(out.shape, np.float32)


def no_gradient(layer: Layer, propagate_down, why: str) -> None:
    """Backward of a layer Caffe does not differentiate: nothing to do unless a
    gradient is asked for, and then an error naming the layer."""
    for i, wanted in enumerate(propagate_down):
        if wanted:
            names = layer._bottom_names
            name = names[i] if i < len(names) else f"bottom{i}"
            raise layer.config_error(
                f"cannot back-propagate to bottom {i} ('{name}'): {why}",
                hint="add 'propagate_down: false' for that bottom, or keep the layer out of "
                     "the path to the loss")


def layer_rng(name: str, seed: int = 0) -> np.random.Generator:
    """A layer's own random generator: reproducible for a seed, and different for
    every layer name (so two Dropout layers never draw the same mask)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8"))])


class NeuronLayer(Layer):
    """Base: top shaped like the bottom; forward = one elementwise kernel,
    backward = one gradient kernel.

    Subclasses set ``kernel_name`` (a function of ``netdef.kernels.elementwise``
    with signature ``f(x, *args, out)``) and override ``kernel_args``; for
    backward, ``grad_kernel`` with signature ``g(*arrays, *args, bottom_diff)``
    where ``grad_arrays`` names the arrays: "x" (bottom data), "y" (top data),
    "dy" (top diff). ``grad_args`` defaults to ``kernel_args``.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "activation"
    kernel_name = ""
    grad_kernel = ""
    grad_arrays: tuple[str, ...] = ("x", "dy")
    # A copy of the bottom made by an in-place forward (see reads_input).
    bottom_copy: np.ndarray | None = None

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape)

    def kernel_args(self) -> tuple:
        return ()

    def grad_args(self) -> tuple:
        return self.kernel_args()

    def reads_input(self) -> bool:
        """True when backward needs the bottom's values and cannot use the top's."""
        return "x" in self.grad_arrays

    def forward(self, bottoms, tops):
        from netdef.kernels import elementwise

        self.keep_input(bottoms, tops)
        _apply(getattr(elementwise, self.kernel_name), bottoms[0].data, tops[0].data,
               *self.kernel_args())

    def keep_input(self, bottoms, tops) -> None:
        """In place, copy the bottom before forward overwrites it, if backward reads it."""
        if tops[0] is bottoms[0] and self.reads_input():
            x = bottoms[0].data
            if self.bottom_copy is None or self.bottom_copy.shape != x.shape:
                self.bottom_copy = np.empty(x.shape, np.float32)
            np.copyto(self.bottom_copy, x)

    def layer_input(self, bottoms, tops) -> np.ndarray:
        """The bottom's values as forward saw them."""
        if tops[0] is bottoms[0] and self.reads_input():
            return self.bottom_copy
        return bottoms[0].data

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        from netdef.kernels import elementwise

        source = {"dy": tops[0].diff, "y": tops[0].data}
        if "x" in self.grad_arrays:
            source["x"] = self.layer_input(bottoms, tops)
        self.input_gradient(elementwise, [source[k] for k in self.grad_arrays],
                            bottoms[0].diff)

    def input_gradient(self, elementwise, arrays, dx) -> None:
        """Write dL/dx into ``dx`` (may be the top diff itself) from ``arrays``."""
        _apply_many(getattr(elementwise, self.grad_kernel), arrays, dx, *self.grad_args())


@register("ReLU")
class ReLU(NeuronLayer):
    """y = x for x > 0, else negative_slope * x (leaky ReLU when the slope is non-zero).

    dx = dy where x > 0, negative_slope * dy where x <= 0 (Caffe's rule: the
    kink at 0 takes the slope). In place the sign of x is read from y, which
    has the same sign for a slope >= 0; a negative slope keeps a copy of x.
    """

    kernel_name = "relu"
    grad_kernel = "relu_backward"

    def setup(self, bottoms, tops):
        self.negative_slope = float(self.param.relu_param.negative_slope)

    def kernel_args(self):
        return (self.negative_slope,)

    def reads_input(self):
        return self.negative_slope < 0


@register("ReLU6")
class ReLU6(NeuronLayer):
    """y = min(max(x, 0) + negative_slope * min(x, 0), 6): ReLU capped at 6
    (MobileNet v2), the ReLU6 fork's layer; relu6_param { negative_slope }
    defaults to 0.

    dx = dy * ((x > 0) + negative_slope * (x <= 0)) * (x < 6), the fork's
    rule: the kink at 0 takes the slope, the kink at 6 passes nothing. As
    for ReLU, in place the gate is read from y unless the slope is negative.
    """

    kernel_name = "relu6"
    grad_kernel = "relu6_backward"

    def setup(self, bottoms, tops):
        self.negative_slope = float(self.param.relu6_param.negative_slope)

    def kernel_args(self):
        return (self.negative_slope,)

    def reads_input(self):
        return self.negative_slope < 0


@register("ELU")
class ELU(NeuronLayer):
    """y = x for x > 0, else alpha * (exp(x) - 1).

    dx = dy for x > 0, else dy * (y + alpha) (Caffe's form, from the top).
    In place x's sign is read from y: the same sign unless alpha < 0, when
    forward keeps a copy of x.
    """

    kernel_name = "elu"
    grad_kernel = "elu_backward"
    grad_arrays = ("x", "y", "dy")

    def reads_input(self):
        return self.alpha < 0

    def setup(self, bottoms, tops):
        self.alpha = float(self.param.elu_param.alpha)

    def kernel_args(self):
        return (self.alpha,)


@register("Sigmoid")
class Sigmoid(NeuronLayer):
    """y = 1 / (1 + exp(-x)); dx = dy * y * (1 - y), from the top."""

    kernel_name = "sigmoid"
    grad_kernel = "sigmoid_backward"
    grad_arrays = ("y", "dy")


@register("TanH")
class TanH(NeuronLayer):
    """y = tanh(x); dx = dy * (1 - y^2), from the top."""

    kernel_name = "tanh"
    grad_kernel = "tanh_backward"
    grad_arrays = ("y", "dy")


@register("AbsVal")
class AbsVal(NeuronLayer):
    """y = |x|; dx = sign(x) * dy, with sign(0) = 0 as in Caffe."""

    kernel_name = "absval"
    grad_kernel = "absval_backward"


@register("BNLL")
class BNLL(NeuronLayer):
    """y = log(1 + exp(x)) (binomial normal log likelihood), overflow-free.

    dx = dy * sigmoid(x), as Caffe computes it: e / (1 + e), e = exp(min(x, 50)).
    """

    kernel_name = "bnll"
    grad_kernel = "bnll_backward"


@register("Power")
class Power(NeuronLayer):
    """y = (shift + scale * x) ** power; power_param {power scale shift}, defaults 1, 1, 0.

    dx = dy * power * scale * (shift + scale * x) ** (power - 1): the
    constant power * scale when that is 0 or power is 1 (Caffe's special
    cases; the bottom is then not read).
    """

    kernel_name = "power"
    grad_kernel = "power_backward"

    def setup(self, bottoms, tops):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)

    def kernel_args(self):
        return (self.power, self.scale, self.shift)

    def reads_input(self):
        return self.power * self.scale != 0 and self.power != 1


def _log_of_base(layer: Layer, base: float, field: str) -> float:
    """ln(base), with Caffe's convention that base -1 means e."""
    if base == -1:
        return 1.0
    if not base > 0:
        raise layer.config_error(f"{field}.base must be strictly positive (or -1 for e), "
                                 f"got {base:g}")
    return math.log(base)


@register("Exp")
class Exp(NeuronLayer):
    """y = base ** (shift + scale * x); exp_param {base (-1 = e) scale shift}.

    dx = dy * y * ln(base) * scale, from the top, as in Caffe.
    """

    kernel_name = "exp_base"
    grad_arrays = ("y", "dy")

    def setup(self, bottoms, tops):
        p = self.param.exp_param
        self.log_base = _log_of_base(self, float(p.base), "exp_param")
        self.scale, self.shift = float(p.scale), float(p.shift)

    def kernel_args(self):
        return (self.log_base, self.scale, self.shift)

    def input_gradient(self, elementwise, arrays, dx):
        y, dy = arrays
        # two ufuncs, no kernel: elementwise with out= is safe when dx is dy
        np.multiply(dy, y, out=dx)
        dx *= np.float32(self.log_base * self.scale)


@register("Log")
class Log(NeuronLayer):
    """y = log_base(shift + scale * x); log_param {base (-1 = e) scale shift}.

    dx = dy * scale / (ln(base) * (shift + scale * x)).
    """

    kernel_name = "log_base"
    grad_kernel = "log_backward"

    def setup(self, bottoms, tops):
        p = self.param.log_param
        self.inv_log_base = 1.0 / _log_of_base(self, float(p.base), "log_param")
        self.scale, self.shift = float(p.scale), float(p.shift)

    def kernel_args(self):
        return (self.inv_log_base, self.scale, self.shift)


@register("Threshold")
class Threshold(NeuronLayer):
    """y = 1 if x > threshold else 0. Caffe gives it no gradient: backward is
    an error when a gradient is asked for, and nothing otherwise."""

    kernel_name = "threshold"

    def setup(self, bottoms, tops):
        self.threshold = float(self.param.threshold_param.threshold)

    def kernel_args(self):
        return (self.threshold,)

    def reads_input(self):
        return False

    def backward(self, tops, propagate_down, bottoms):
        no_gradient(self, propagate_down, "Threshold is a step function and has no gradient")


@register("Clip")
class Clip(NeuronLayer):
    """y = min(max(x, min), max); clip_param's min and max are both required.

    dx = dy where min <= x <= max (both ends pass the gradient, as in Caffe), else 0.
    """

    kernel_name = "clip"
    grad_kernel = "clip_backward"

    def setup(self, bottoms, tops):
        p = self.param.clip_param
        missing = [f for f in ("min", "max") if not p.HasField(f)]
        if missing:
            raise self.config_error(f"clip_param.{' and '.join(missing)} must be given",
                                    hint="e.g. clip_param { min: -1 max: 1 }")
        self.lo, self.hi = float(p.min), float(p.max)
        if self.lo > self.hi:
            raise self.config_error(f"clip_param.min ({self.lo:g}) is above max ({self.hi:g})")

    def kernel_args(self):
        return (self.lo, self.hi)


@register("Swish")
class Swish(NeuronLayer):
    """y = x * sigmoid(beta * x).

    dx = dy * (beta * y + s * (1 - beta * y)), s = sigmoid(beta * x) (Caffe's
    form; y and s are recomputed from x).
    """

    kernel_name = "swish"
    grad_kernel = "swish_backward"

    def setup(self, bottoms, tops):
        self.beta = float(self.param.swish_param.beta)

    def kernel_args(self):
        return (self.beta,)


@register("PReLU")
class PReLU(NeuronLayer):
    """y = x for x > 0, else a_c * x with a learned slope per channel (axis 1).

    prelu_param: ``channel_shared`` (one slope for all channels; Caffe
    stores it as a 0-axis blob, shape ()), ``filler`` (default constant
    0.25). In place, forward keeps a copy of the input for backward, as
    Caffe does.

    Backward: dx = dy where x > 0, else a_c * dy; the slope's diff gains
    sum(dy * x) over the elements with x <= 0 of its channel (of every
    channel when shared).
    """

    def setup(self, bottoms, tops):
        p = self.param.prelu_param
        self.require(bottoms[0].ndim >= 2, "PReLU needs a bottom with at least 2 axes (N, C, ...)")
        self.channel_shared = bool(p.channel_shared)
        filler = p.filler if p.HasField("filler") else pb.FillerParameter(type="constant",
                                                                          value=0.25)
        self.add_param(() if self.channel_shared else (bottoms[0].shape[1],), filler)

    def reshape(self, bottoms, tops):
        self.require(bottoms[0].ndim >= 2, "PReLU needs a bottom with at least 2 axes (N, C, ...)")
        if not self.channel_shared:
            self.require(bottoms[0].shape[1] == self.blobs[0].count,
                         f"the slope blob has {self.blobs[0].count} channels but the bottom "
                         f"has {bottoms[0].shape[1]}")
        super().reshape(bottoms, tops)

    def _slopes(self, channels: int) -> np.ndarray:
        slope = self.blobs[0].data.reshape(-1)
        if self.channel_shared:
            return np.full(channels, slope[0], np.float32)
        return np.ascontiguousarray(slope)

    def forward(self, bottoms, tops):
        from netdef.kernels import elementwise

        self.keep_input(bottoms, tops)   # backward needs x, which is about to be overwritten
        x = np.ascontiguousarray(bottoms[0].data)
        n, c = x.shape[0], x.shape[1]
        out = tops[0].data
        target = _writable(out)
        elementwise.prelu(x.reshape(n, c, -1), self._slopes(c), target.reshape(n, c, -1))
        if target is not out:
            out[...] = target

    def backward(self, tops, propagate_down, bottoms):
        want_slope = self.param_propagate_down[0]
        if not (propagate_down[0] or want_slope):
            return
        from netdef.kernels import elementwise

        x = np.ascontiguousarray(self.layer_input(bottoms, tops))
        n, c = x.shape[0], x.shape[1]
        view = (n, c, -1)
        dy = np.ascontiguousarray(tops[0].diff)
        # The kernel writes dx and the slope sums together; whichever is not
        # wanted goes to scratch (never into an in-place top diff).
        dx_out = bottoms[0].diff if propagate_down[0] else np.empty(x.shape, np.float32)
        dx = _writable(dx_out)
        slope_diff = np.zeros(c, np.float32)
        elementwise.prelu_backward(x.reshape(view), dy.reshape(view), self._slopes(c),
                                   dx.reshape(view), slope_diff)
        if dx is not dx_out:
            dx_out[...] = dx
        if want_slope:
            diff = self.blobs[0].diff
            if self.channel_shared:
                diff[...] += np.float32(slope_diff.sum(dtype=np.float64))
            else:
                diff += slope_diff.reshape(diff.shape)


@register("Dropout")
class Dropout(NeuronLayer):
    """TEST: y = x (no copy when in place or aliased, ``shares_data``).
    TRAIN: y = x * m / (1 - ratio), m ~ Bernoulli(1 - ratio).

    Caffe's "inverted" dropout: the kept units are scaled up at training
    time so inference is the identity. A unit is kept where a uniform draw
    u in [0, 1) has u >= ratio, which happens with probability exactly
    1 - ratio (Caffe's bernoulli(1 - ratio)). The mask (bool, kept in
    ``mask``) and ``scale`` are what backward needs: dx = dy * m / (1 - ratio)
    in TRAIN, dx = dy in TEST. The random generator belongs to the layer:
    seeded from the layer name by default (reproducible, but different per
    layer) and reseeded with ``reseed(seed)`` (a solver's random_seed); the
    name keeps layers independent for one seed.
    """

    def setup(self, bottoms, tops):
        # At inference the top may simply alias the bottom (memory planner).
        self.shares_data = self.phase != pb.TRAIN
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.config_error(f"dropout_param.dropout_ratio must be in [0, 1), "
                                    f"got {self.ratio:g}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self.mask: np.ndarray | None = None
        self.reseed(0)

    def reseed(self, seed: int) -> None:
        self.rng = layer_rng(self.name, seed)

    def reads_input(self):
        return False

    def forward(self, bottoms, tops):
        x, y = bottoms[0].data, tops[0].data
        if self.phase != pb.TRAIN:
            # in place or aliased by the planner: nothing to copy
            if not _same_memory(x, y):
                y[...] = x
            return
        self.mask = self.rng.random(x.shape, dtype=np.float32) >= self.ratio
        np.multiply(x, self.mask, out=y)
        y *= np.float32(self.scale)

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        dy, dx = tops[0].diff, bottoms[0].diff
        if self.phase != pb.TRAIN:
            if not _same_memory(dy, dx):
                dx[...] = dy
            return
        if self.mask is None or self.mask.shape != dy.shape:
            raise self.config_error("backward called before a TRAIN forward of this shape")
        np.multiply(dy, self.mask, out=dx)
        dx *= np.float32(self.scale)


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
