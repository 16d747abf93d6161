"""``caffe.coord_map``: how spatial coordinates map between NetSpec tops.

Used to crop a fully convolutional net's upsampled scores back onto its
input (FCN)::

    from caffe.coord_map import crop
    n.score = crop(n.upscore, n.data)     # an L.Crop with the right axis and offset

pycaffe's model, kept: every layer maps output coordinates to input ones by
``(axis, scale, shift)`` (input coordinate = scale * output coordinate +
shift is the map from top back to bottom, composed along the path):

* Convolution, Pooling, Im2col: scale 1/stride, shift (pad - (k_eff - 1)/2)/stride,
  with ``k_eff = (k - 1) * dilation + 1``;
* Deconvolution: scale stride, shift (k_eff - 1)/2 - pad;
* Crop: scale 1, shift -offset (only its first bottom is followed);
* pointwise layers (ReLU, BatchNorm, Eltwise, ...): the identity.

``coord_map_from_to(a, b)`` walks bottoms from ``a`` to every ancestor,
then from ``b`` until it meets one of them, and composes the two maps.
Parameters are read from the layer's keyword arguments, given either
directly (``kernel_size=3``) or in ``convolution_param``/``pooling_param``/
``crop_param`` dicts; legacy ``kernel_h``/``pad_w``-style fields are refused,
as in pycaffe.
"""
from __future__ import annotations

import numpy as np

from netdef.compat.errors import CompatAssertionError, CompatRuntimeError
from netdef.compat.net_spec import layers as L
from netdef.errors import NetdefError

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log",
                       "LRN", "Exp", "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split",
                       "TanH", "Threshold"]
_LEGACY = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"}


class UndefinedMapException(NetdefError):
    """The layer has no coordinate mapping (e.g. InnerProduct)."""


class AxisMismatchException(NetdefError):
    """Two maps on different axes cannot be composed."""


def _spec(fn, name: str) -> dict:
    """The layer's parameters: its ``name`` dict, else its keyword arguments."""
    value = fn.params.get(name)
    return value if isinstance(value, dict) else fn.params


def conv_params(fn) -> tuple:
    """(axis, stride, effective kernel size, pad) of a Convolution/Pooling/Im2col/
    Deconvolution layer, as arrays (one value per spatial axis, or one for all)."""
    params = _spec(fn, "pooling_param" if fn.type_name == "Pooling" else "convolution_param")
    if _LEGACY & set(params):
        raise CompatAssertionError(f"L.{fn.type_name}: cropping does not support legacy "
                                   "_h/_w params")
    if "kernel_size" not in params:
        raise CompatAssertionError(f"L.{fn.type_name}: coord_map needs kernel_size")
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (params.get("axis", 1), np.array(params.get("stride", 1), ndmin=1),
            (kernel - 1) * dilation + 1, np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn) -> tuple:
    """(axis, offset) of a Crop layer, with Caffe's defaults (axis 2, offset 0)."""
    params = _spec(fn, "crop_param")
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn) -> tuple:
    """(axis, scale, shift) of one layer; axis None means any axis."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset          # -1: the axis before the first cropped one
    raise UndefinedMapException(f"layer type {fn.type_name} has no coordinate mapping")


def compose(base_map: tuple, next_map: tuple) -> tuple:
    """``base_map`` followed by ``next_map``: scales multiply, the further
    shift is scaled by the base scale."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        ax = ax2
    elif ax2 is None or ax1 == ax2:
        ax = ax1
    else:
        raise AxisMismatchException(f"cannot compose maps on axes {ax1} and {ax2}")
    return ax, a1 * a2, a1 * b2 + b1


def inverse(cmap: tuple) -> tuple:
    """The inverse map (de-scale and un-shift)."""
    ax, a, b = cmap
    return ax, 1 / a, -b / a


def _bottoms(top) -> tuple:
    # A Crop's second bottom only gives the size: it is not followed.
    return top.fn.inputs[:1] if top.fn.type_name == "Crop" else top.fn.inputs


def coord_map_from_to(top_from, top_to) -> tuple:
    """(axis, scale, shift) taking coordinates of ``top_from`` to ``top_to``."""
    from_maps = {top_from: (None, 1, 0)}
    frontier = [top_from]
    while frontier:
        top = frontier.pop()
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _bottoms(top):
            from_maps[bottom] = compose(from_maps[top], step)
            frontier.append(bottom)
    to_maps = {top_to: (None, 1, 0)}
    frontier = [top_to]
    while frontier:
        top = frontier.pop()
        if top in from_maps:
            return compose(to_maps[top], inverse(from_maps[top]))
        try:
            step = coord_map(top.fn)
        except UndefinedMapException:
            continue
        for bottom in _bottoms(top):
            to_maps[bottom] = compose(to_maps[top], step)
            frontier.append(bottom)
    raise CompatRuntimeError("Could not compute map between tops; are they connected by "
                             "spatial layers?")


def crop(top_from, top_to):
    """An ``L.Crop(top_from, top_to)`` whose axis and offsets align the two."""
    ax, a, b = coord_map_from_to(top_from, top_to)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (a == 1).all():
        raise CompatAssertionError(f"scale mismatch on crop (a = {a})")
    if not (b <= 0).all():
        raise CompatAssertionError(f"cannot crop negative offset (b = {b})")
    if not (np.round(b) == b).all():
        raise CompatAssertionError(f"cannot crop noninteger offset (b = {b})")
    return L.Crop(top_from, top_to,
                  crop_param=dict(axis=ax + 1, offset=[int(v) for v in -np.round(b)]))
