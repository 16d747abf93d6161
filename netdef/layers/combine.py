"""Eltwise (SUM with coefficients, PROD, MAX) and Reduction (SUM, ASUM,
SUMSQ, MEAN over the tail axes): layers that combine values.

Backward follows Caffe: SUM scales the top diff by each coefficient, MAX
routes it through the forward's argmax, PROD multiplies by the other
bottoms (stable_prod_grad) or divides the top by the bottom.
"""
from __future__ import annotations

import math

import numpy as np

from netdef.frontend.schema import pb
from netdef.layers.base import Layer, register
from netdef.layers.structure import _copy_unless_shared, _same_buffer

_ELTWISE = pb.EltwiseParameter
_REDUCTION = pb.ReductionParameter


@register("Eltwise")
class Eltwise(Layer):
    """Combine same-shaped bottoms elementwise: PROD, SUM (default; optional
    ``coeff`` per bottom) or MAX (keeps the arg-max ``mask`` for backward).

    Caffe breaks a tie between the first two bottoms towards bottom 1 and
    later ties towards the earlier bottom; the kernels reproduce that.

    Backward (dy the top diff): SUM dx_i = coeff_i dy; MAX dx_i = dy where
    bottom i won, else 0; PROD dx_i = dy * (product of the other bottoms)
    with ``stable_prod_grad`` (the default; exact with zeros), else Caffe's
    dy * top / x_i (inf/NaN where x_i is 0). In place (top is bottom 0),
    bottom 0's diff is the top diff, so it is written last; PROD then keeps
    a copy of bottom 0's data for backward.
    """

    num_bottoms = (2, None)
    num_tops = 1
    kind = "elementwise"
    # Set False by the compiler when nothing runs backward: forward then
    # keeps no copy for it.
    needs_backward = True

    def setup(self, bottoms, tops):
        p = self.param.eltwise_param
        self.operation = p.operation
        coeff = list(p.coeff)
        if coeff and self.operation != _ELTWISE.SUM:
            raise self.config_error("eltwise_param.coeff is only allowed with operation SUM")
        if coeff and len(coeff) != len(bottoms):
            raise self.config_error(f"{len(coeff)} coeff values for {len(bottoms)} bottoms; "
                                    "give one per bottom")
        self.coeff = [float(c) for c in coeff] or [1.0] * len(bottoms)
        self.stable_prod_grad = bool(p.stable_prod_grad)
        self.mask = None
        self.saved_x0 = None

    def reshape(self, bottoms, tops):
        first = bottoms[0].shape
        self.require(all(b.shape == first for b in bottoms), "all bottoms must have the same shape")
        tops[0].reshape(first)

    def forward(self, bottoms, tops):
        from netdef.kernels import elementwise as k

        out = tops[0].data
        flat = [np.ascontiguousarray(b.data).reshape(-1) for b in bottoms]
        dst = out.reshape(-1)
        if self.operation == _ELTWISE.SUM:
            # the first two in one pass (in place, top is bottom 0 or 1)
            k.eltwise_sum_pair(flat[0], self.coeff[0], flat[1], self.coeff[1], dst)
            for x, c in zip(flat[2:], self.coeff[2:], strict=True):
                k.eltwise_sum(dst, x, c)
        elif self.operation == _ELTWISE.PROD:
            if tops[0] is bottoms[0] and self.needs_backward:
                self.saved_x0 = flat[0].copy()    # about to be overwritten by the product
            dst[...] = flat[0]
            for x in flat[1:]:
                k.eltwise_prod(dst, x)
        else:
            self.mask = np.empty(dst.size, np.int64)
            k.eltwise_max_pair(flat[0], flat[1], dst, self.mask)
            for i, x in enumerate(flat[2:], start=2):
                k.eltwise_max(dst, x, self.mask, i)

    def backward(self, tops, propagate_down, bottoms):
        from netdef.kernels import elementwise as k

        dy = tops[0].diff.reshape(-1)
        # Bottom 0 last: in place, its diff is the top diff.
        order = [i for i in range(1, len(bottoms)) if propagate_down[i]]
        order += [0] if propagate_down[0] else []
        if self.operation == _ELTWISE.SUM:
            for i in order:
                dx = bottoms[i].diff.reshape(-1)
                if self.coeff[i] == 1.0:
                    _copy_unless_shared(dy, dx)
                else:
                    np.multiply(dy, np.float32(self.coeff[i]), out=dx)
        elif self.operation == _ELTWISE.MAX:
            for i in order:
                k.eltwise_max_backward(dy, self.mask, i, bottoms[i].diff.reshape(-1))
        else:
            xs = [b.data.reshape(-1) for b in bottoms]
            if tops[0] is bottoms[0]:
                xs[0] = self.saved_x0
            for i in order:
                self._prod_backward(k, xs, i, tops[0].data.reshape(-1), dy,
                                    bottoms[i].diff.reshape(-1))

    def _prod_backward(self, k, xs, i, y, dy, dx) -> None:
        if not self.stable_prod_grad:
            with np.errstate(divide="ignore", invalid="ignore"):   # 0 / 0 is NaN, as Caffe
                np.multiply(np.divide(y, xs[i]), dy, out=dx)        # top / x_i, then * dy
            return
        others = [x for j, x in enumerate(xs) if j != i]
        if _same_buffer(dx, dy):       # in place, bottom 0: dy is already in dx
            for x in others:
                k.eltwise_prod(dx, x)
            return
        dx[...] = others[0]            # Caffe's order: the others' product, then * dy
        for x in others[1:]:
            k.eltwise_prod(dx, x)
        k.eltwise_prod(dx, dy)


@register("Reduction")
class Reduction(Layer):
    """Reduce axes ``axis`` .. last to one number: SUM, ASUM (sum of |x|),
    SUMSQ (sum of x^2) or MEAN, times ``coeff``. The top's shape is the
    bottom's first ``axis`` dims (axis 0, the default: a scalar, shape ())."""

    num_bottoms = 1
    num_tops = 1
    kind = "elementwise"

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.axis = self.canonical_axis(self.param.reduction_param.axis, len(shape))
        tops[0].reshape(shape[:self.axis])

    def forward(self, bottoms, tops):
        p = self.param.reduction_param
        x = bottoms[0].data
        rows = x.reshape(math.prod(x.shape[:self.axis]), -1).astype(np.float64)
        if p.operation == _REDUCTION.ASUM:
            rows = np.abs(rows)
        elif p.operation == _REDUCTION.SUMSQ:
            rows = rows * rows
        result = rows.sum(axis=1)
        if p.operation == _REDUCTION.MEAN:
            result /= max(rows.shape[1], 1)
        tops[0].data[...] = (result * p.coeff).reshape(tops[0].shape)

    def backward(self, tops, propagate_down, bottoms):
        """dx = g * (1, sign(x), 2x or 1/dim) with g = coeff * dy of x's row
        (sign(0) = 0, as Caffe)."""
        if not propagate_down[0]:
            return
        p = self.param.reduction_param
        shape = bottoms[0].shape
        outer, dim = math.prod(shape[:self.axis]), math.prod(shape[self.axis:])
        coeff = np.float32(p.coeff)
        if p.operation == _REDUCTION.MEAN:
            coeff /= np.float32(max(dim, 1))
        g = tops[0].diff.reshape(outer, 1) * coeff
        dx = bottoms[0].diff.reshape(outer, dim)
        x = bottoms[0].data.reshape(outer, dim)
        if p.operation == _REDUCTION.ASUM:
            np.multiply(np.sign(x), g, out=dx)
        elif p.operation == _REDUCTION.SUMSQ:
            np.multiply(x, 2 * g, out=dx)
        else:
            dx[...] = g
