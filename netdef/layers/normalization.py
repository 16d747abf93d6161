"""Normalisation layers: BatchNorm, Scale, Bias, MVN.

Each views its bottom as (outer, C, inner) and hands the per-channel work
to netdef.kernels.normalization (imported inside ``forward``/``backward``).

In place, a later in-place layer may overwrite this layer's top before
backward runs (conv -> BatchNorm -> Scale -> ReLU all in place is the
ResNet pattern), so what backward needs is kept by forward, as in Caffe:
BatchNorm keeps the normalised output in batch-statistics mode, Scale a
copy of its input when it is in place and the scale needs a gradient.
"""
from __future__ import annotations

import math

import numpy as np

from netdef.layers.base import Layer, filler_param, register, shape_text
from netdef.frontend.schema import pb


@register("BatchNorm")
class BatchNorm(Layer):
    """y = (x - mean) / sqrt(var + eps) per channel (axis 1), no affine part.

    Blobs (stored, not learnable; fillers constant 0): running mean sum
    (C,), running variance sum (C,), and the moving-average scale factor
    (1,). The statistics are the blobs divided by the factor (a factor of
    0 means statistics of 0), which is how Caffe stores them.

    ``use_global_stats`` (default: true in TEST, false in TRAIN) uses those
    statistics. Otherwise the batch's mean and biased variance over every
    axis but 1 normalise the batch, and the blobs are updated as Caffe does:
    factor = maf * factor + 1, mean_sum = maf * mean_sum + mean,
    var_sum = maf * var_sum + m/(m-1) * var, with m values per channel and
    maf = moving_average_fraction. Works for (N, C) bottoms too.

    Backward, with s = 1/sqrt(var + eps): global statistics are constants,
    dx = dy * s; batch statistics depend on x, and with y the normalised
    output and means over (N, H, W) per channel,
    dx = (dy - mean(dy) - mean(dy * y) * y) * s.
    The stored blobs are statistics, not parameters: backward never writes
    their diffs (Caffe forces their lr_mult to 0).
    """

    num_bottoms = 1
    num_tops = 1
    kind = "norm"

    def setup(self, bottoms, tops):
        bp = self.param.batch_norm_param
        self.use_global_stats = (bp.use_global_stats if bp.HasField("use_global_stats")
                                 else self.phase == pb.TEST)
        self.maf, self.eps = bp.moving_average_fraction, bp.eps
        shape = bottoms[0].shape
        self.channels = shape[1] if len(shape) > 1 else 1
        for blob_shape in ((self.channels,), (self.channels,), (1,)):
            self.add_param(blob_shape, pb.FillerParameter(), learnable=False)

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.require(len(shape) >= 1, "expects a bottom with at least one axis")
        channels = shape[1] if len(shape) > 1 else 1
        self.require(channels == self.channels,
                     f"bottom has {channels} channels but the statistics hold {self.channels}")
        self.outer = shape[0] if shape else 1
        self.inner = math.prod(shape[2:])
        tops[0].reshape(shape)
        self._stats = None
        self._x_norm = None

    def forward(self, bottoms, tops):
        from netdef.kernels.normalization import channel_affine, channel_mean_var

        view = (self.outer, self.channels, self.inner)
        x3, y3 = bottoms[0].data.reshape(view), tops[0].data.reshape(view)
        if self._stats is None:
            self._stats = np.empty((4, self.channels), np.float32)
        mean, var, inv_std, shift = self._stats
        if self.use_global_stats:
            factor = float(self.blobs[2].data.reshape(-1)[0])
            factor = 0.0 if factor == 0 else 1.0 / factor
            np.multiply(self.blobs[0].data.reshape(-1), factor, out=mean)
            np.multiply(self.blobs[1].data.reshape(-1), factor, out=var)
        else:
            channel_mean_var(x3, mean, var)
            self._update_moving_averages(mean, var)
        np.add(var, self.eps, out=inv_std)
        np.sqrt(inv_std, out=inv_std)
        np.divide(1.0, inv_std, out=inv_std)
        np.multiply(mean, inv_std, out=shift)
        np.negative(shift, out=shift)
        channel_affine(x3, inv_std, shift, y3)
        if not self.use_global_stats:
            if self._x_norm is None:
                self._x_norm = np.empty(view, np.float32)
            np.copyto(self._x_norm, y3)

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        from netdef.kernels.normalization import channel_affine, channel_affine_pair, channel_sums

        view = (self.outer, self.channels, self.inner)
        dy3 = np.ascontiguousarray(tops[0].diff).reshape(view)
        dx = bottoms[0].diff
        target = _writable(dx)
        dx3 = target.reshape(view)
        inv_std = self._stats[2]
        zero = np.zeros(self.channels, np.float32)
        if self.use_global_stats:
            channel_affine(dy3, inv_std, zero, dx3)
        else:
            dot, total = np.empty((2, self.channels), np.float32)
            channel_sums(self._x_norm, dy3, dot, total)
            m = np.float32(self.outer * self.inner)
            # dx = dy * s + y * (-mean(dy * y) * s) + (-mean(dy) * s)
            coeff_y = -(dot / m) * inv_std
            shift = -(total / m) * inv_std
            channel_affine_pair(dy3, inv_std, self._x_norm, coeff_y, shift, dx3)
        if target is not dx:
            dx[...] = target

    def _update_moving_averages(self, mean, var):
        m = self.outer * self.inner
        correction = m / (m - 1) if m > 1 else 1.0
        mean_sum, var_sum, factor = (b.data.reshape(-1) for b in self.blobs[:3])
        factor *= self.maf
        factor += 1.0
        mean_sum *= self.maf
        mean_sum += mean
        var_sum *= self.maf
        var_sum += np.float32(correction) * var


def _writable(out: np.ndarray) -> np.ndarray:
    """``out``, or a C-contiguous scratch array when ``out`` is a strided view
    (a user-set array) that a kernel could not write through."""
    return out if out.flags.c_contiguous else np.empty(out.shape, np.float32)


def _accumulate(blob, grad: np.ndarray) -> None:
    """blob.diff += grad (parameter diffs accumulate, Caffe's rule)."""
    diff = blob.diff
    diff += grad.reshape(diff.shape)


def _operand_shape(layer: Layer, shape: tuple, axis: int, num_axes: int) -> tuple:
    """The learned operand of Scale/Bias: shape[axis:axis + num_axes] (-1: to the end)."""
    axis = layer.canonical_axis(axis, len(shape))
    if num_axes < -1:
        raise layer.config_error(f"num_axes must be >= 0, or -1 for every axis from "
                                 f"axis on; got {num_axes}")
    if num_axes == -1:
        return shape[axis:]
    layer.require(len(shape) >= axis + num_axes,
                  f"axis {axis} + num_axes {num_axes} exceeds the bottom's {len(shape)} axes")
    return shape[axis:axis + num_axes]


class _ChannelOperand(Layer):
    """Scale and Bias: y = x * s + b with s, b broadcast over the axes of
    bottom[0] starting at ``axis``.

    The operand is a learned blob of shape bottom.shape[axis:axis+num_axes]
    (num_axes -1: every remaining axis; 0: a scalar), or else the second
    bottom, whose shape must equal bottom[0].shape[axis:axis+its ndim]
    (a scalar second bottom fits any axis).

    Backward: the operand's gradient is summed over the axes it is
    broadcast along; a learned blob's diff accumulates (+=), a second
    bottom's diff is overwritten. Operand gradients are computed before
    the bottom's, which in place overwrites the top diff they read.
    """

    num_bottoms = (1, 2)
    num_tops = 1
    kind = "norm"
    field = ""            # name of the *_param message

    def operand_setup(self, bottoms) -> tuple:
        """Add the learned operand blob if there is one; return the operand's shape."""
        p = getattr(self.param, self.field)
        if len(bottoms) == 2:
            return bottoms[1].shape
        shape = _operand_shape(self, bottoms[0].shape, p.axis, p.num_axes)
        self.add_param(shape, self.default_filler())
        return shape

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        operand = bottoms[1].shape if len(bottoms) == 2 else self.blobs[0].shape
        if not operand:     # a scalar: the axis does not matter
            self.view = (1, 1, math.prod(shape))
        else:
            axis = self.canonical_axis(getattr(self.param, self.field).axis, len(shape))
            span = shape[axis:axis + len(operand)]
            self.require(span == operand,
                         f"{self.operand_name} of shape {shape_text(operand)} must match "
                         f"bottom[0] axes {axis}..{axis + len(operand) - 1}, which are "
                         f"{shape_text(span)}")
            self.view = (math.prod(shape[:axis]), math.prod(operand),
                         math.prod(shape[axis + len(operand):]))
        tops[0].reshape(shape)
        self._constant = None
        self._input_copy = None

    def constant(self, value: float) -> np.ndarray:
        """A (C,) vector of ``value``: the missing half of the affine map."""
        if self._constant is None:
            self._constant = np.full(self.view[1], value, np.float32)
        return self._constant

    def reads_input(self, bottoms) -> bool:
        """True when backward needs the bottom's values (Scale's scale gradient)."""
        return False

    def forward(self, bottoms, tops):
        from netdef.kernels.normalization import channel_affine

        if tops[0] is bottoms[0] and self.reads_input(bottoms):
            # in place: keep x for the scale gradient before it is overwritten
            if self._input_copy is None:
                self._input_copy = np.empty(self.view, np.float32)
            np.copyto(self._input_copy, bottoms[0].data.reshape(self.view))
        scale, shift = self.factors(bottoms)
        channel_affine(bottoms[0].data.reshape(self.view), scale, shift,
                       tops[0].data.reshape(self.view))

    def layer_input3(self, bottoms, tops) -> np.ndarray:
        """bottom[0]'s values as forward saw them, viewed (outer, C, inner)."""
        if tops[0] is bottoms[0]:
            if self._input_copy is None:
                raise self.config_error("in place, the scale gradient needs the input, which "
                                        "forward did not keep (was param_propagate_down set "
                                        "after forward?)")
            return self._input_copy
        return np.ascontiguousarray(bottoms[0].data).reshape(self.view)

    def operand_gradient(self, bottoms, grad: np.ndarray) -> None:
        """Hand the operand's gradient (C,) to bottom[1] (overwrite) or to the
        learned operand blob 0 (accumulate)."""
        if len(bottoms) == 2:
            bottoms[1].diff[...] = grad.reshape(bottoms[1].shape)
        else:
            _accumulate(self.blobs[0], grad)

    def input_gradient(self, tops, bottoms, scale) -> None:
        """dx = dy * scale[c]; nothing to do for a scale of ones in place."""
        from netdef.kernels.normalization import channel_affine

        dy, dx = tops[0].diff, bottoms[0].diff
        if scale is None:
            if dx.__array_interface__["data"][0] != dy.__array_interface__["data"][0]:
                dx[...] = dy
            return
        target = _writable(dx)
        channel_affine(np.ascontiguousarray(dy).reshape(self.view), scale, self.constant(0.0),
                       target.reshape(self.view))
        if target is not dx:
            dx[...] = target


@register("Scale")
class Scale(_ChannelOperand):
    """y = x * s (+ b with ``bias_term``); see _ChannelOperand for the shapes.

    Blobs: the scale (one bottom only; filler default constant 1), then the
    bias of the scale's shape with ``bias_term`` (filler default constant 0).
    """

    field = "scale_param"
    operand_name = "scale"

    def default_filler(self):
        return filler_param(self.param.scale_param, "filler", type="constant", value=1.0)

    def setup(self, bottoms, tops):
        sp = self.param.scale_param
        shape = self.operand_setup(bottoms)
        self.bias_term = sp.bias_term
        if self.bias_term:
            self.add_param(shape, filler_param(sp, "bias_filler"))

    def factors(self, bottoms):
        source = bottoms[1] if len(bottoms) == 2 else self.blobs[0]
        scale = source.data.reshape(-1)
        shift = self.blobs[-1].data.reshape(-1) if self.bias_term else self.constant(0.0)
        return scale, shift

    def _scale_wanted(self, bottoms, propagate_down) -> bool:
        return propagate_down[1] if len(bottoms) == 2 else self.param_propagate_down[0]

    def reads_input(self, bottoms):
        # a second bottom's propagate_down is not known at forward time
        return len(bottoms) == 2 or self.param_propagate_down[0]

    def backward(self, tops, propagate_down, bottoms):
        from netdef.kernels.normalization import channel_sums

        want_scale = self._scale_wanted(bottoms, propagate_down)
        want_bias = self.bias_term and self.param_propagate_down[-1]
        if want_scale or want_bias:
            dy3 = np.ascontiguousarray(tops[0].diff).reshape(self.view)
            x3 = self.layer_input3(bottoms, tops) if want_scale else dy3
            dot, total = np.empty((2, self.view[1]), np.float32)
            channel_sums(x3, dy3, dot, total)     # sum(dy * x) and sum(dy) per channel
            if want_bias:
                _accumulate(self.blobs[-1], total)
            if want_scale:
                self.operand_gradient(bottoms, dot)
        if propagate_down[0]:
            self.input_gradient(tops, bottoms, np.ascontiguousarray(self.factors(bottoms)[0]))


@register("Bias")
class Bias(_ChannelOperand):
    """y = x + b; see _ChannelOperand for the shapes. Blob: the bias (one
    bottom only; filler default constant 0)."""

    field = "bias_param"
    operand_name = "bias"

    def default_filler(self):
        return filler_param(self.param.bias_param, "filler")

    def setup(self, bottoms, tops):
        self.operand_setup(bottoms)

    def factors(self, bottoms):
        source = bottoms[1] if len(bottoms) == 2 else self.blobs[0]
        return self.constant(1.0), source.data.reshape(-1)

    def backward(self, tops, propagate_down, bottoms):
        from netdef.kernels.normalization import channel_sums

        if propagate_down[1] if len(bottoms) == 2 else self.param_propagate_down[0]:
            dy3 = np.ascontiguousarray(tops[0].diff).reshape(self.view)
            dot, total = np.empty((2, self.view[1]), np.float32)
            channel_sums(dy3, dy3, dot, total)
            self.operand_gradient(bottoms, total)
        if propagate_down[0]:
            self.input_gradient(tops, bottoms, None)


@register("MVN")
class MVN(Layer):
    """Mean-variance normalisation per image (``across_channels``) or per
    image channel: y = x - mean, then with ``normalize_variance`` (default)
    y / (sqrt(biased var) + eps). Caffe adds eps to the standard deviation,
    not to the variance; eps defaults to 1e-9.

    Backward is Caffe's, from the top data y and forward's divisors d per
    row: dx = (dy - mean(dy) - mean(dy * y) * y) / d, or dx = dy - mean(dy)
    without normalize_variance. (That treats d as sqrt(var): exact for
    eps = 0, off by a factor (sqrt(var) + eps) / sqrt(var) in the y term.)
    """

    num_bottoms = 1
    num_tops = 1
    kind = "norm"

    def setup(self, bottoms, tops):
        mp = self.param.mvn_param
        self.normalize_variance = int(mp.normalize_variance)
        self.across_channels = mp.across_channels
        self.eps = mp.eps

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.require(len(shape) >= 1, "expects a bottom with at least one axis")
        rows = shape[0] if self.across_channels or len(shape) < 2 else shape[0] * shape[1]
        self.view = (rows, math.prod(shape) // rows if rows else 0)
        self._denom = np.ones(rows, np.float32)
        tops[0].reshape(shape)

    def forward(self, bottoms, tops):
        from netdef.kernels.normalization import mvn_forward

        mvn_forward(bottoms[0].data.reshape(self.view), self.normalize_variance, self.eps,
                    tops[0].data.reshape(self.view), self._denom)

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        from netdef.kernels.normalization import mvn_backward

        dx = bottoms[0].diff
        target = _writable(dx)
        mvn_backward(np.ascontiguousarray(tops[0].data).reshape(self.view),
                     np.ascontiguousarray(tops[0].diff).reshape(self.view), self._denom,
                     self.normalize_variance, target.reshape(self.view))
        if target is not dx:
            dx[...] = target
