"""Dense layers: InnerProduct (fully connected) and Embed (table lookup).

Also home of ``filler_param``, which the other families use to read a
``*_filler`` field with Caffe's default when it is unset.
"""
from __future__ import annotations

import math

import numpy as np

from netdef.errors import InputError
from netdef.kernels import matmul
from netdef.layers.base import Layer, filler_param, register


@register("InnerProduct")
class InnerProduct(Layer):
    """Fully connected: y = x W^T + b over rows of the flattened bottom.

    The bottom is viewed as (M, K): M = product of the axes before ``axis``
    (negative counts from the end), K = product of ``axis`` and every axis
    after it. The top is ``bottom.shape[:axis] + (num_output,)``.

    Blobs: weight (num_output, K), or (K, num_output) with ``transpose``
    (Caffe's layout choice, kept so caffemodels load); bias (num_output,)
    when ``bias_term``. Fillers default to constant 0, as in Caffe.
    MACs: M * K * num_output.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "dense"

    def setup(self, bottoms, tops):
        ip = self.param.inner_product_param
        self.num_output = ip.num_output
        if self.num_output <= 0:
            raise self.config_error("num_output must be set to a positive number",
                                    hint="inner_product_param { num_output: ... }")
        self.transpose = ip.transpose
        self.bias_term = ip.bias_term
        shape = bottoms[0].shape
        axis = self.canonical_axis(ip.axis, len(shape))
        self.K = math.prod(shape[axis:])
        wshape = (self.K, self.num_output) if self.transpose else (self.num_output, self.K)
        self.add_param(wshape, filler_param(ip, "weight_filler"))
        if self.bias_term:
            self.add_param((self.num_output,), filler_param(ip, "bias_filler"))

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        axis = self.canonical_axis(self.param.inner_product_param.axis, len(shape))
        k = math.prod(shape[axis:])
        self.require(k == self.K,
                     f"bottom has {k} inputs per row (axes {axis}.. flattened) but the "
                     f"weights expect {self.K}")
        self.M = math.prod(shape[:axis])
        tops[0].reshape(shape[:axis] + (self.num_output,))

    def forward(self, bottoms, tops):
        x = bottoms[0].data.reshape(self.M, self.K)
        y = tops[0].data.reshape(self.M, self.num_output)
        w = self.blobs[0].data
        matmul(x, w if self.transpose else w.T, out=y)
        if self.bias_term:
            np.add(y, self.blobs[1].data, out=y)

    def backward(self, tops, propagate_down, bottoms):
        dy = tops[0].diff.reshape(self.M, self.num_output)
        x = bottoms[0].data.reshape(self.M, self.K)
        w = self.blobs[0]
        if self.param_propagate_down[0]:
            # dW = dy^T x (or x^T dy when stored transposed), added to the diff
            a, b = (x.T, dy) if self.transpose else (dy.T, x)
            matmul(a, b, w.diff, accumulate=True)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff[...] += dy.sum(axis=0)
        if propagate_down[0]:
            dx = bottoms[0].diff.reshape(self.M, self.K)
            matmul(dy, w.data.T if self.transpose else w.data, out=dx)

    def macs(self, bottoms, tops):
        return self.M * self.K * self.num_output


@register("Embed")
class Embed(Layer):
    """Lookup table: top[..., :] = W[index] (+ b) for every bottom element.

    The bottom holds integer indices in [0, input_dim) stored as floats;
    the top is ``bottom.shape + (num_output,)``. Blobs: weight
    (input_dim, num_output), bias (num_output,) when ``bias_term``.
    A lookup, so MACs are 0.

    Backward: row W[k] gains the sum of the top diff rows of every element
    that looked k up (an index used twice adds twice); the bias gains the
    sum of all top diff rows. Indices have no gradient: asking for the
    bottom's is an error, as in Caffe.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "dense"

    def setup(self, bottoms, tops):
        ep = self.param.embed_param
        self.num_output, self.input_dim = ep.num_output, ep.input_dim
        if self.num_output <= 0:
            raise self.config_error("num_output must be set to a positive number")
        if self.input_dim <= 0:
            raise self.config_error("input_dim must be set to a positive number")
        self.bias_term = ep.bias_term
        self.add_param((self.input_dim, self.num_output), filler_param(ep, "weight_filler"))
        if self.bias_term:
            self.add_param((self.num_output,), filler_param(ep, "bias_filler"))

    def reshape(self, bottoms, tops):
        tops[0].reshape(bottoms[0].shape + (self.num_output,))

    def forward(self, bottoms, tops):
        values = bottoms[0].data.reshape(-1)
        index = values.astype(np.intp)
        bad = (index != values) | (index < 0) | (index >= self.input_dim)
        if bad.any():
            first = float(values[np.argmax(bad)])
            raise InputError(
                f"layer '{self.name}' (Embed): index {first:g} is not an integer in "
                f"[0, {self.input_dim})", where=self.where)
        y = tops[0].data.reshape(-1, self.num_output)
        np.take(self.blobs[0].data, index, axis=0, out=y)
        if self.bias_term:
            np.add(y, self.blobs[1].data, out=y)
        self.index = index           # backward scatters the top diff by these rows

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            raise self.config_error(
                f"cannot back-propagate to bottom 0 ('{self._bottom_names[0]}'): it holds "
                f"indices, which have no gradient",
                hint="add 'propagate_down: false' for that bottom")
        dy = tops[0].diff.reshape(-1, self.num_output)
        if self.param_propagate_down[0]:
            # unbuffered scatter-add: repeated indices each add their row
            np.add.at(self.blobs[0].diff, self.index, dy)
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff[...] += dy.sum(axis=0)
