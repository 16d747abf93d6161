"""Local response normalisation (Caffe's LRN), across or within channels."""
from __future__ import annotations

import numpy as np

from netdef.frontend.schema import pb
from netdef.layers.base import Layer, register


@register("LRN")
class LRN(Layer):
    """Local response normalisation, y = x * scale^-beta.

    ACROSS_CHANNELS: scale = k + alpha/size * sum of x^2 over ``local_size``
    neighbouring channels (centred; clipped at the ends). WITHIN_CHANNEL:
    scale = 1 + alpha * mean of x^2 over a size x size spatial window (pad
    (size-1)/2, Caffe's average-pooling divisor; k unused). Caffe divides
    alpha by the window size in both cases. local_size must be odd.

    Backward (both regions): dx = dy * scale^-beta - 2 alpha' beta x *
    sum over the windows holding x of dy * y / scale, alpha' being alpha
    divided as in forward. Forward keeps ``scale``; run in place, it also
    keeps a copy of the input.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "norm"

    def setup(self, bottoms, tops):
        lp = self.param.lrn_param
        self.size, self.alpha, self.beta, self.k = lp.local_size, lp.alpha, lp.beta, lp.k
        if self.size % 2 != 1:
            raise self.config_error(f"local_size must be odd, got {self.size}")
        self.across = lp.norm_region == pb.LRNParameter.ACROSS_CHANNELS

    def reshape(self, bottoms, tops):
        self.require(bottoms[0].ndim == 4, "expects a 4-axis (N, C, H, W) bottom")
        tops[0].reshape(bottoms[0].shape)
        self._scale = None     # kept for backward; allocated on first forward
        self._x = None         # the input, kept only when run in place

    def forward(self, bottoms, tops):
        from netdef.kernels import lrn

        x, shape = bottoms[0].data, bottoms[0].shape
        if self._scale is None or self._scale.shape != shape:
            self._scale = np.empty(shape, np.float32)
        out = tops[0].data
        if tops[0] is bottoms[0]:
            # the kernels read neighbours after writing the centre: read a copy,
            # which backward needs anyway
            if self._x is None or self._x.shape != shape:
                self._x = np.empty(shape, np.float32)
            np.copyto(self._x, x)
            x = self._x
        if self.across:
            lrn.lrn_across_forward(x, self.size, self.alpha, self.beta, self.k, out, self._scale)
        else:
            lrn.lrn_within_forward(x, self.size, self.alpha, self.beta, out, self._scale)

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        from netdef.kernels import lrn

        in_place = tops[0] is bottoms[0]
        x = self._x if in_place else bottoms[0].data
        dy = tops[0].diff.copy() if in_place else tops[0].diff   # the kernels must not alias
        kernel = lrn.lrn_across_backward if self.across else lrn.lrn_within_backward
        kernel(x, tops[0].data, self._scale, dy, self.size, self.alpha, self.beta,
               bottoms[0].diff)
