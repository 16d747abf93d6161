"""Normalisation layers: BatchNorm, Scale, Bias, MVN.

Each views its bottom as (outer, C, inner) and hands the per-channel work
to netdef.kernels.normalization (imported inside ``forward``).
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

    def constant(self, value: float) -> np.ndarray:
        """A (C,) vector of ``value``: the missing half of the affine map."""
        if self._constant is None:
            self._constant = np.full(self.view[1], value, np.float32)
        return self._constant

    def forward(self, bottoms, tops):
        from netdef.kernels.normalization import channel_affine

        scale, shift = self.factors(bottoms)
        channel_affine(bottoms[0].data.reshape(self.view), scale, shift,
                       tops[0].data.reshape(self.view))


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


@register("MVN")
class MVN(Layer):
    """Mean-variance normalisation per image (``across_channels``) or per
    image channel: y = x - mean, then with ``normalize_variance`` (default)
    y / (sqrt(biased var) + eps). Caffe adds eps to the standard deviation,
    not to the variance; eps defaults to 1e-9.
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
        tops[0].reshape(shape)

    def forward(self, bottoms, tops):
        from netdef.kernels.normalization import mvn_forward

        mvn_forward(bottoms[0].data.reshape(self.view), self.normalize_variance, self.eps,
                    tops[0].data.reshape(self.view))
