"""Softmax (with the softmax helpers the losses share) and ArgMax."""
from __future__ import annotations

import math

import numpy as np

from netdef.layers.base import Layer, register
from netdef.layers.structure import _no_gradient


@register("Softmax")
class Softmax(Layer):
    """y = exp(x - max) / sum(exp(x - max)) along ``axis`` (softmax_param.axis, default 1)."""

    num_bottoms = 1
    num_tops = 1
    kind = "softmax"

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.axis = self.canonical_axis(self.param.softmax_param.axis, len(shape))
        tops[0].reshape(shape)

    def forward(self, bottoms, tops):
        softmax_forward(bottoms[0].data, tops[0].data, self.axis)

    def backward(self, tops, propagate_down, bottoms):
        """dx = y * (dy - sum(dy * y)) along the axis (from the top's data, so
        in place works: there the top diff is the bottom diff)."""
        if propagate_down[0]:
            softmax_backward(tops[0].data, tops[0].diff, bottoms[0].diff, self.axis)


def _as3(a: np.ndarray, axis: int) -> np.ndarray:
    shape = a.shape
    return np.ascontiguousarray(a).reshape(
        math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))


def softmax_forward(x: np.ndarray, out: np.ndarray, axis: int) -> None:
    """Softmax of ``x`` along ``axis`` into ``out`` (may be ``x``); shared with the losses."""
    from netdef.kernels.softmax import softmax

    x3 = _as3(x, axis)
    if out.flags.c_contiguous:
        softmax(x3, out.reshape(x3.shape))
    else:
        tmp = np.empty(x3.shape, np.float32)
        softmax(x3, tmp)
        out[...] = tmp.reshape(x.shape)


def softmax_backward(y: np.ndarray, dy: np.ndarray, dx: np.ndarray, axis: int) -> None:
    """dx = y * (dy - sum(dy * y)) along ``axis``, y the softmax output; ``dx``
    may be ``dy``. Shared with the losses."""
    from netdef.kernels.softmax import softmax_backward as kernel

    y3, dy3 = _as3(y, axis), _as3(dy, axis)
    if dx.flags.c_contiguous:
        kernel(y3, dy3, dx.reshape(y3.shape))
    else:
        tmp = np.empty(y3.shape, np.float32)
        kernel(y3, dy3, tmp)
        dx[...] = tmp.reshape(y.shape)


@register("ArgMax")
class ArgMax(Layer):
    """Indices of the ``top_k`` largest values (ties: the larger index first, as Caffe).

    Without ``axis``: per item of axis 0, over all its other values; the top
    is (N, 1, top_k) -- (N, 2, top_k) with ``out_max_val`` (indices, then
    values) -- padded with 1s to the bottom's rank, Caffe's exact shape.
    With ``axis``: that axis becomes top_k; ``out_max_val`` then outputs the
    values instead of the indices. No gradient (as Caffe): backward raises
    only when asked for the bottom's.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "output"
    # Not differentiable: force_backward asks no gradient of the bottom.
    no_force_backward = (0,)

    def setup(self, bottoms, tops):
        p = self.param.argmax_param
        self.top_k, self.out_max_val = int(p.top_k), bool(p.out_max_val)
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.config_error("argmax_param.top_k must be at least 1")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if self.has_axis:
            self.axis = self.canonical_axis(self.param.argmax_param.axis, len(shape))
            self.require(self.top_k <= shape[self.axis],
                         f"top_k ({self.top_k}) is larger than axis {self.axis} (size "
                         f"{shape[self.axis]})")
            top = list(shape)
            top[self.axis] = self.top_k
        else:
            per_item = math.prod(shape[1:])
            self.require(self.top_k <= per_item, f"top_k ({self.top_k}) is larger than the "
                                                 f"{per_item} values per item")
            top = [1] * max(len(shape), 3)
            top[0], top[1], top[2] = shape[0], 2 if self.out_max_val else 1, self.top_k
        tops[0].reshape(top)

    def forward(self, bottoms, tops):
        x = bottoms[0].data
        if self.has_axis:
            idx, val = _top_k_last(np.moveaxis(x, self.axis, -1), self.top_k)
            result = val if self.out_max_val else idx
            tops[0].data[...] = np.moveaxis(result, -1, self.axis)
            return
        n = x.shape[0]
        idx, val = _top_k_last(x.reshape(n, -1), self.top_k)
        out = tops[0].data.reshape(n, -1)
        out[:, :self.top_k] = idx
        if self.out_max_val:
            out[:, self.top_k:] = val

    def backward(self, tops, propagate_down, bottoms):
        _no_gradient(self, propagate_down)


def _top_k_last(x: np.ndarray, k: int):
    """Indices and values of the k largest entries along the last axis, largest
    first, ties broken towards the larger index (Caffe's pair ordering)."""
    dim = x.shape[-1]
    rev = x[..., ::-1]
    order = np.argsort(-rev, axis=-1, kind="stable")[..., :k]
    return dim - 1 - order, np.take_along_axis(rev, order, axis=-1)
