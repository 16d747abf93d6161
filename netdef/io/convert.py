"""Weights from the TensorFlow AlexNet port, rearranged into Caffe's layout.

The TensorFlow port of BVLC AlexNet (``bvlc_alexnet.npy``) stores
``{'conv1': [W, b], ..., 'fc8': [W, b]}`` with TensorFlow layouts:

* convolution ``W`` is (kh, kw, in/group, out); Caffe wants (out, in/group, kh, kw).
  Groups split input and output channels into consecutive blocks in both
  frameworks, so a transpose is all it takes.
* inner product ``W`` is (in, out); Caffe wants (out, in).
* the first inner product after the conv stack (fc6) sees pool5 flattened
  in TensorFlow's NHWC order, i.e. its rows are indexed (h, w, c). Caffe
  flattens (c, h, w), so those rows are regrouped: (H, W, C, out) ->
  (out, C, H, W) -> (out, C*H*W). This needs pool5's (C, H, W).
* biases are unchanged.

Channel order: that port feeds BGR images, exactly like Caffe (its example
swaps RGB to BGR before the forward pass), so no channel swap is applied to
conv1.
"""
from __future__ import annotations

import math

import numpy as np

from netdef.errors import WeightsError, did_you_mean
from netdef.io.caffemodel import write_caffemodel
from netdef.io.npy_legacy import load_pickled_weight_dict
from netdef.frontend.schema import pb


def _conv_to_caffe(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def _fc_to_caffe(w: np.ndarray, chw: tuple[int, int, int] | None) -> np.ndarray:
    if chw is None:
        return np.ascontiguousarray(w.T)
    c, h, wd = chw
    out = w.shape[1]
    return np.ascontiguousarray(w.reshape(h, wd, c, out).transpose(3, 2, 0, 1).reshape(out, -1))


def tf_alexnet_npy_to_caffe(weight_dict: dict[str, list[np.ndarray]],
                            fc_input_shape: tuple[int, int, int] = (256, 6, 6),
                            first_fc: str = "fc6") -> dict[str, list[np.ndarray]]:
    """TensorFlow-port layout -> Caffe layout (see the module docstring).

    ``fc_input_shape`` is the (C, H, W) of the blob feeding ``first_fc``
    (pool5 in AlexNet); only ``first_fc`` gets the HWC -> CHW row reordering.
    4-D weights are treated as convolutions, 2-D as inner products.
    """
    out = {}
    for name, blobs in weight_dict.items():
        if not blobs:
            raise WeightsError(f"layer '{name}' has no arrays")
        w, rest = np.asarray(blobs[0], dtype=np.float32), [np.asarray(b, np.float32)
                                                            for b in blobs[1:]]
        if w.ndim == 4:
            w = _conv_to_caffe(w)
        elif w.ndim == 2:
            chw = None
            if name == first_fc:
                chw = tuple(int(d) for d in fc_input_shape)
                if w.shape[0] != math.prod(chw):
                    raise WeightsError(
                        f"layer '{name}': weight has {w.shape[0]} inputs, but the blob feeding "
                        f"it is {chw} = {math.prod(chw)} values",
                        hint="pass the right (C, H, W) of the first inner product's input")
            w = _fc_to_caffe(w, chw)
        else:
            raise WeightsError(f"layer '{name}': weight of shape {w.shape} is neither a "
                               "4-D convolution nor a 2-D inner-product weight")
        out[name] = [w] + [b.reshape(-1) if b.ndim else b.reshape(1) for b in rest]
    return out


def _first_fc_after_conv(net_param: pb.NetParameter):
    """(first InnerProduct after a Convolution, that Convolution) in layer order."""
    last_conv = None
    for lp in net_param.layer:
        if lp.type == "Convolution":
            last_conv = lp
        elif lp.type == "InnerProduct" and last_conv is not None:
            return lp, last_conv
    return None, None


def fc_input_shape_from_net(net_param: pb.NetParameter, weight_dict) -> tuple[str, tuple]:
    """(name, (C, H, W)) of the net's first inner product after its conv stack.

    C is the last convolution's ``num_output``; H*W follows from the fc's
    input count in ``weight_dict`` and is taken as square (as pool5 is in
    AlexNet). Without shape inference at hand this is the least that must be
    known; a non-square map needs an explicit shape.
    """
    fc, conv = _first_fc_after_conv(net_param)
    if fc is None:
        raise WeightsError("the net has no InnerProduct layer after a Convolution",
                           hint="pass the first fc layer and its input shape explicitly")
    if fc.name not in weight_dict:
        raise WeightsError(f"the weights have no entry for '{fc.name}'",
                           hint=did_you_mean(fc.name, weight_dict))
    channels = conv.convolution_param.num_output
    n_in = np.asarray(weight_dict[fc.name][0]).shape[0]
    side = math.isqrt(n_in // channels) if channels else 0
    if not channels or side * side * channels != n_in:
        raise WeightsError(f"cannot infer the (C, H, W) feeding '{fc.name}': {n_in} inputs, "
                           f"{channels} channels from '{conv.name}' (square maps assumed)",
                           hint="pass the input shape explicitly")
    return fc.name, (channels, side, side)


def _check_num_outputs(net_param: pb.NetParameter, weights) -> None:
    """Catch a .npy converted against the wrong prototxt before writing it."""
    for lp in net_param.layer:
        param = {"Convolution": lp.convolution_param,
                 "InnerProduct": lp.inner_product_param}.get(lp.type)
        if param is None or lp.name not in weights or not param.HasField("num_output"):
            continue
        got = weights[lp.name][0].shape[0]
        if got != param.num_output:
            raise WeightsError(f"layer '{lp.name}' ({lp.type}): the net has num_output "
                               f"{param.num_output}, the .npy weight has {got} outputs")


def convert_npy_to_caffemodel(npy_path, net_param: pb.NetParameter, out_path,
                              fc_input_shape=None, first_fc=None) -> dict[str, list[np.ndarray]]:
    """Convert a TensorFlow AlexNet-port ``.npy`` into a caffemodel for ``net_param``.

    ``net_param`` is the (upgraded) Caffe definition; its layer names must
    match the dict's keys. ``first_fc``/``fc_input_shape`` default to what
    ``fc_input_shape_from_net`` derives. Returns the converted weights.
    """
    weights = load_pickled_weight_dict(npy_path)
    names = {lp.name for lp in net_param.layer}
    for name in weights:
        if name not in names:
            raise WeightsError(f"'{name}' in the .npy is not a layer of the net",
                               where=str(npy_path), hint=did_you_mean(name, names))
    if first_fc is None or fc_input_shape is None:
        derived_fc, derived_shape = fc_input_shape_from_net(net_param, weights)
        first_fc = first_fc or derived_fc
        fc_input_shape = fc_input_shape or derived_shape
    caffe = tf_alexnet_npy_to_caffe(weights, fc_input_shape, first_fc)
    _check_num_outputs(net_param, caffe)
    write_caffemodel(out_path, net_param, caffe)
    return caffe
