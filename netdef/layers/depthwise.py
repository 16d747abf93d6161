"""Depthwise convolution: Caffe's Convolution with ``group`` == channels.

Each output channel then reads a single input channel, so im2col + a GEMM
per group would run C tiny GEMMs of depth kh*kw. ``forward`` and
``backward`` here call the direct kernels of ``netdef.kernels.depthwise``
instead. They serve two callers:

* ``Convolution`` whose group equals its input channels (MobileNet's
  ``conv2_1/dw`` layers), which calls them instead of its GEMM path;
* the fork layer types ``DepthwiseConvolution`` (the yonghenglh6 fork) and
  ``ConvolutionDepthwise`` (Caffe PR 5665), registered here.

Both read ``convolution_param`` and keep Convolution's weight layout,
(C*k, 1, kh, kw) for a channel multiplier k, so their caffemodels load.
The functions take the layer as an argument (rather than keeping it) so
that the fusion pass's folded copy of a layer runs with its own weights;
``forward_after_pointwise`` runs such a copy on the output of the 1x1
convolution before it without storing that output (compile/fuse.py's
PointwiseDepthwise).
"""
from __future__ import annotations

import numpy as np

from netdef.frontend.schema import pb
from netdef.layers.base import filler_param, register
from netdef.layers.vision import Convolution, read_conv_geometry


def forward(layer, bottoms, tops, relu_slope: float | None = None) -> None:
    """tops[i] = depthwise convolution of bottoms[i] (layer: a Convolution
    with group == channels, after reshape), followed by a ReLU of that
    negative slope when ``relu_slope`` is given (the fusion pass's)."""
    from netdef.kernels.depthwise import depthwise_forward

    win, m = layer.win, layer.num_output
    w = np.ascontiguousarray(layer.blobs[0].data).reshape(m, win.kh, win.kw)
    if layer.bias_term:
        bias = np.ascontiguousarray(layer.blobs[1].data).reshape(m)
    else:
        bias = np.zeros(m, np.float32)
    (h, wd), (oh, ow) = layer.in_hw, layer.out_hw
    for bottom, top in zip(bottoms, tops, strict=True):
        x = bottom.data.reshape(layer.num, layer.channels, h, wd)
        depthwise_forward(x, w, bias, *win.args(), int(relu_slope is not None),
                          float(relu_slope or 0.0), top.data.reshape(layer.num, m, oh, ow))


# The expansion's channel bands in forward_after_pointwise hold about this
# many floats (128 KiB): the band's planes stay in the core's L2 cache from
# the SGEMM that writes them to the depthwise taps that read them
_PAIR_BAND_FLOATS = 1 << 15


def pair_band(pointwise, threads: int) -> int:
    """Channels per task of ``forward_after_pointwise`` for a 1x1 layer
    ``pointwise`` (after reshape): a multiple of 8 from 8 to 64 with about
    _PAIR_BAND_FLOATS floats per band, fewer when that leaves under two
    tasks per thread."""
    h, w = pointwise.in_hw
    band = max(8, min(64, _PAIR_BAND_FLOATS // (h * w) // 8 * 8))
    while band > 8 and pointwise.num * -(-pointwise.num_output // band) < 2 * threads:
        band -= 8
    return band


def forward_after_pointwise(pointwise, slope1, layer, slope2, band, bottom, top) -> None:
    """top = ``layer`` (depthwise, channel multiplier 1) applied to the output
    of the 1x1, stride-1 convolution ``pointwise`` of ``bottom``, each with
    its bias and an optional ReLU of negative slope ``slope1`` / ``slope2``
    (None: no ReLU), without materialising the 1x1's output
    (kernels.depthwise.pointwise_depthwise, ``band`` channels per task)."""
    from netdef.kernels.depthwise import pointwise_depthwise

    win, m = layer.win, layer.num_output
    (h, wd), (oh, ow) = pointwise.in_hw, layer.out_hw
    x = np.ascontiguousarray(bottom.data).reshape(pointwise.num, pointwise.channels, h, wd)
    we = pointwise.blobs[0].data.reshape(m, pointwise.channels)
    wdw = np.ascontiguousarray(layer.blobs[0].data).reshape(m, win.kh, win.kw)
    y = top.data.reshape(layer.num, m, oh, ow)
    out = y if y.flags.c_contiguous else np.empty(y.shape, np.float32)
    pointwise_depthwise(x, we, pointwise.blobs[1].data, int(slope1 is not None),
                        np.float32(slope1 or 0.0), wdw, layer.blobs[1].data.reshape(m),
                        *win.args(), int(slope2 is not None), np.float32(slope2 or 0.0),
                        band, out)
    if out is not y:
        y[...] = out


def backward(layer, tops, propagate_down, bottoms) -> None:
    """Caffe's convolution gradients for the depthwise case: bias diff +=
    dY summed, weight diff += per-tap correlations of dY with x, bottom
    diff = dY scattered back through the taps."""
    from netdef.kernels.depthwise import depthwise_backward_data, depthwise_backward_weights

    layer.bias_backward(tops)
    win, m = layer.win, layer.num_output
    want_w = layer.param_propagate_down[0]
    w = np.ascontiguousarray(layer.blobs[0].data).reshape(m, win.kh, win.kw)
    (h, wd), (oh, ow) = layer.in_hw, layer.out_hw
    shape_x, shape_y = (layer.num, layer.channels, h, wd), (layer.num, m, oh, ow)
    for i, (bottom, top) in enumerate(zip(bottoms, tops, strict=True)):
        dy = top.diff.reshape(shape_y)
        if want_w:
            dw = layer.blobs[0].diff.reshape(m, win.kh, win.kw)
            depthwise_backward_weights(bottom.data.reshape(shape_x), dy, *win.args(), dw)
        if propagate_down[i]:
            depthwise_backward_data(dy, w, *win.args(), bottom.diff.reshape(shape_x))


@register("DepthwiseConvolution", "ConvolutionDepthwise")
class DepthwiseConvolution(Convolution):
    """Depthwise 2-D convolution, the fork types ``DepthwiseConvolution`` and
    ``ConvolutionDepthwise``: y[m] = w[m] * x[m // k] + b[m].

    Reads convolution_param like Convolution; ``group`` defaults to the
    input channels C and ``num_output`` to C (set num_output = k*C for a
    channel multiplier k). Weight (num_output, 1, kh, kw), bias
    (num_output,). A group that divides C but is smaller than it makes an
    ordinary grouped convolution (the fork's CPU path). MACs: top count x
    kh x kw, per bottom.
    """

    def __init__(self, param: pb.LayerParameter, phase: int = pb.TEST, where=None):
        super().__init__(param, phase, where)
        self.type = param.type or DepthwiseConvolution.type    # the spelling the net used

    def setup(self, bottoms, tops):
        cp = self.param.convolution_param
        shape = read_conv_geometry(self, cp, bottoms, tops)
        c = self.channels = shape[self.axis]
        self.group = cp.group if cp.HasField("group") else c
        self.num_output = cp.num_output if cp.HasField("num_output") else c
        if self.group <= 0 or self.num_output <= 0:
            raise self.config_error(f"group ({self.group}) and num_output "
                                    f"({self.num_output}) must be positive")
        if c % self.group:
            raise self.config_error(
                f"a depthwise convolution needs group to divide the input channels: "
                f"{c} channels are not divisible by group {self.group}; "
                f"bottoms: {self.bottoms_text()}", hint=f"set group: {c} (or leave it out)")
        if self.num_output % self.group:
            raise self.config_error(
                f"num_output {self.num_output} is not a multiple of group {self.group}; "
                f"bottoms: {self.bottoms_text()}",
                hint=f"num_output must be a multiple of the {c} input channels")
        self.depthwise = self.group == c
        self.bias_term = cp.bias_term
        self.add_param(self.weight_shape(), filler_param(cp, "weight_filler"))
        if self.bias_term:
            self.add_param((self.num_output,), filler_param(cp, "bias_filler"))
        self._token = object()
        # forward/backward: Convolution's, which use this module's functions when
        # self.depthwise and its grouped GEMMs otherwise
