"""Neuron layers: one bottom, one top of the same shape, elementwise.

Every leaf is a ``NeuronLayer``: the base gives the 1 -> 1 arity, the
"top shaped like bottom" shape rule and a forward that runs one kernel of
``netdef.kernels.elementwise`` over the flattened arrays. A leaf only reads
its ``*_param`` in ``setup`` and names its kernel and the kernel's scalar
arguments. All of them may run in place (top == bottom in the prototxt);
the kernels read each element before writing it.
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
    target = _writable(out)
    kernel(np.ascontiguousarray(x).reshape(-1), *args, target.reshape(-1))
    if target is not out:
        out[...] = target


def _writable(out: np.ndarray) -> np.ndarray:
    """``out`` itself, or a contiguous scratch array when ``out`` is a strided view
    (a user-set array) that a flat kernel could not write through."""
    return out if out.flags.c_contiguous else np.empty(out.shape, np.float32)


def layer_rng(name: str, seed: int = 0) -> np.random.Generator:
    """A layer's own random generator: reproducible for a seed, and different for
    every layer name (so two Dropout layers never draw the same mask)."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode("utf-8"))])


class NeuronLayer(Layer):
    """Base: top shaped like the bottom; forward = one elementwise kernel.

    Subclasses set ``kernel_name`` (a function of ``netdef.kernels.elementwise``
    with signature ``f(x, *args, out)``) and override ``kernel_args``.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "activation"
    kernel_name = ""

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape)

    def kernel_args(self) -> tuple:
        return ()

    def forward(self, bottoms, tops):
        from netdef.kernels import elementwise

        _apply(getattr(elementwise, self.kernel_name), bottoms[0].data, tops[0].data,
               *self.kernel_args())


@register("ReLU")
class ReLU(NeuronLayer):
    """y = x for x > 0, else negative_slope * x (leaky ReLU when the slope is non-zero)."""

    kernel_name = "relu"

    def setup(self, bottoms, tops):
        self.negative_slope = float(self.param.relu_param.negative_slope)

    def kernel_args(self):
        return (self.negative_slope,)


@register("ELU")
class ELU(NeuronLayer):
    """y = x for x > 0, else alpha * (exp(x) - 1)."""

    kernel_name = "elu"

    def setup(self, bottoms, tops):
        self.alpha = float(self.param.elu_param.alpha)

    def kernel_args(self):
        return (self.alpha,)


@register("Sigmoid")
class Sigmoid(NeuronLayer):
    """y = 1 / (1 + exp(-x))."""

    kernel_name = "sigmoid"


@register("TanH")
class TanH(NeuronLayer):
    """y = tanh(x)."""

    kernel_name = "tanh"


@register("AbsVal")
class AbsVal(NeuronLayer):
    """y = |x|."""

    kernel_name = "absval"


@register("BNLL")
class BNLL(NeuronLayer):
    """y = log(1 + exp(x)) (binomial normal log likelihood), overflow-free."""

    kernel_name = "bnll"


@register("Power")
class Power(NeuronLayer):
    """y = (shift + scale * x) ** power; power_param {power scale shift}, defaults 1, 1, 0."""

    kernel_name = "power"

    def setup(self, bottoms, tops):
        p = self.param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)

    def kernel_args(self):
        return (self.power, self.scale, self.shift)


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
    """y = base ** (shift + scale * x); exp_param {base (-1 = e) scale shift}."""

    kernel_name = "exp_base"

    def setup(self, bottoms, tops):
        p = self.param.exp_param
        self.log_base = _log_of_base(self, float(p.base), "exp_param")
        self.scale, self.shift = float(p.scale), float(p.shift)

    def kernel_args(self):
        return (self.log_base, self.scale, self.shift)


@register("Log")
class Log(NeuronLayer):
    """y = log_base(shift + scale * x); log_param {base (-1 = e) scale shift}."""

    kernel_name = "log_base"

    def setup(self, bottoms, tops):
        p = self.param.log_param
        self.inv_log_base = 1.0 / _log_of_base(self, float(p.base), "log_param")
        self.scale, self.shift = float(p.scale), float(p.shift)

    def kernel_args(self):
        return (self.inv_log_base, self.scale, self.shift)


@register("Threshold")
class Threshold(NeuronLayer):
    """y = 1 if x > threshold else 0 (no gradient)."""

    kernel_name = "threshold"

    def setup(self, bottoms, tops):
        self.threshold = float(self.param.threshold_param.threshold)

    def kernel_args(self):
        return (self.threshold,)


@register("Clip")
class Clip(NeuronLayer):
    """y = min(max(x, min), max); clip_param's min and max are both required."""

    kernel_name = "clip"

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
    """y = x * sigmoid(beta * x)."""

    kernel_name = "swish"

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
    """

    def setup(self, bottoms, tops):
        p = self.param.prelu_param
        self.require(bottoms[0].ndim >= 2, "PReLU needs a bottom with at least 2 axes (N, C, ...)")
        self.channel_shared = bool(p.channel_shared)
        filler = p.filler if p.HasField("filler") else pb.FillerParameter(type="constant",
                                                                          value=0.25)
        self.add_param(() if self.channel_shared else (bottoms[0].shape[1],), filler)
        self.bottom_copy = None

    def reshape(self, bottoms, tops):
        self.require(bottoms[0].ndim >= 2, "PReLU needs a bottom with at least 2 axes (N, C, ...)")
        if not self.channel_shared:
            self.require(bottoms[0].shape[1] == self.blobs[0].count,
                         f"the slope blob has {self.blobs[0].count} channels but the bottom "
                         f"has {bottoms[0].shape[1]}")
        super().reshape(bottoms, tops)

    def forward(self, bottoms, tops):
        from netdef.kernels import elementwise

        x = np.ascontiguousarray(bottoms[0].data)
        n, c = x.shape[0], x.shape[1]
        slope = self.blobs[0].data.reshape(-1)
        if self.channel_shared:
            slope = np.full(c, slope[0], np.float32)
        if tops[0] is bottoms[0]:
            self.bottom_copy = x.copy()      # backward needs x, which is about to be overwritten
        out = tops[0].data
        target = _writable(out)
        elementwise.prelu(x.reshape(n, c, -1), np.ascontiguousarray(slope),
                          target.reshape(n, c, -1))
        if target is not out:
            out[...] = target


@register("Dropout")
class Dropout(NeuronLayer):
    """TEST: y = x (no copy when in place or aliased, ``shares_data``).
    TRAIN: y = x * m / (1 - ratio), m ~ Bernoulli(1 - ratio).

    Caffe's "inverted" dropout: the kept units are scaled up at training
    time so inference is the identity. The mask (bool, kept in ``mask``)
    and ``scale`` are what backward needs. The random generator belongs to
    the layer: seeded from the layer name by default (reproducible, but
    different per layer) and reseeded with ``reseed(seed)`` (a solver's
    random_seed); the name keeps layers independent for one seed.
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

    def forward(self, bottoms, tops):
        x, y = bottoms[0].data, tops[0].data
        if self.phase != pb.TRAIN:
            # in place or aliased by the planner: nothing to copy
            if x.__array_interface__["data"][0] != y.__array_interface__["data"][0]:
                y[...] = x
            return
        self.mask = self.rng.random(x.shape, dtype=np.float32) >= self.ratio
        np.multiply(x, self.mask, out=y)
        y *= np.float32(self.scale)
