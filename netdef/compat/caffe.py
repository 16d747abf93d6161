"""pycaffe's common surface over netdef.net.Net.

A pycaffe classification script runs by changing only its import::

    from netdef.compat import caffe          # was: import caffe
    caffe.set_mode_cpu()
    net = caffe.Net("deploy.prototxt", "weights.caffemodel", caffe.TEST)
    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    ...
    net.blobs["data"].reshape(1, 3, 227, 227)
    net.blobs["data"].data[...] = transformer.preprocess("data", image)
    prob = net.forward()["prob"]

Provided: ``TRAIN``/``TEST``, ``set_mode_cpu/gpu``, ``set_device``,
``Net`` (both constructor signatures), ``Classifier``, ``io``
(netdef.compat.caffe_io) and ``proto.caffe_pb2`` (netdef's schema, wire- and
text-compatible with Caffe's). ``from caffe.proto import caffe_pb2`` has no
direct equivalent: write ``caffe_pb2 = caffe.proto.caffe_pb2``. Training
(``caffe.SGDSolver``, ``net.backward``) is not available.
"""
from __future__ import annotations

import os
import types
import warnings
from collections import OrderedDict

import numpy as np

from netdef.compat import caffe_io as io  # noqa: F401  (caffe.io)
from netdef.frontend.schema import pb

TRAIN = pb.TRAIN
TEST = pb.TEST
proto = types.SimpleNamespace(caffe_pb2=pb)


def set_mode_cpu() -> None:
    """netdef always runs on the CPU."""


def set_mode_gpu() -> None:
    warnings.warn("netdef runs on the CPU only: caffe.set_mode_gpu() is ignored", stacklevel=2)


def set_device(device_id: int) -> None:
    """Accepted and ignored (there is one device: the CPU)."""


def layer_type_list() -> list[str]:
    from netdef.layers.base import layer_types

    return layer_types()


class Blob:
    """pycaffe's Blob view: ``data``, ``diff``, ``shape``, ``reshape(*shape)``."""

    __slots__ = ("_blob",)

    def __init__(self, blob):
        self._blob = blob

    @property
    def data(self) -> np.ndarray:
        return self._blob.data

    @data.setter
    def data(self, value) -> None:
        self._blob.data = value

    @property
    def diff(self) -> np.ndarray:
        return self._blob.diff

    @property
    def shape(self) -> tuple[int, ...]:
        return self._blob.shape

    @property
    def count(self) -> int:
        return self._blob.count

    def reshape(self, *shape) -> None:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        self._blob.reshape(shape)

    def _axis(self, i: int) -> int:
        shape = self._blob.shape
        return shape[i] if i < len(shape) else 1

    num = property(lambda self: self._axis(0))
    channels = property(lambda self: self._axis(1))
    height = property(lambda self: self._axis(2))
    width = property(lambda self: self._axis(3))

    def __repr__(self) -> str:
        return f"<caffe Blob {self.shape}>"


def _net_args(args, weights, phase):
    """Sort out pycaffe's Net(file, phase), Net(file, weights, phase) and
    Net(file, phase, weights=...) forms."""
    args = list(args)
    if len(args) == 2:
        weights, phase = args
    elif len(args) == 1:
        if isinstance(args[0], (str, os.PathLike)):
            weights = args[0]
        else:
            phase = args[0]
    elif len(args) > 2:
        raise TypeError("caffe.Net(network_file, [weights_file,] phase): too many arguments")
    return weights, TEST if phase is None else phase


class Net:
    """pycaffe's ``caffe.Net`` over :class:`netdef.net.Net` (every blob readable)."""

    def __init__(self, network_file, *args, weights=None, phase=None, level: int = 0,
                 stages=None):
        from netdef.net import Net as _Net

        weights, phase = _net_args(args, weights, phase)
        self._net = _Net(os.fspath(network_file), weights=weights, phase=phase, level=level,
                         stages=tuple(stages or ()))

    # ---- attributes ----------------------------------------------------------
    @property
    def blobs(self) -> OrderedDict:
        return OrderedDict((n, Blob(b)) for n, b in self._net.blobs.items())

    @property
    def params(self) -> OrderedDict:
        return OrderedDict((n, [Blob(b) for b in bs]) for n, bs in self._net.params.items())

    @property
    def inputs(self) -> list[str]:
        return list(self._net.inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self._net.outputs)

    @property
    def layers(self) -> list:
        return list(self._net.layers)

    @property
    def _layer_names(self) -> list[str]:
        return list(self._net.layer_names)

    @property
    def layer_dict(self) -> OrderedDict:
        return OrderedDict(zip(self._net.layer_names, self._net.layers, strict=True))

    @property
    def top_names(self) -> OrderedDict:
        return OrderedDict((n.name, list(n.tops)) for n in self._net.graph.nodes)

    @property
    def bottom_names(self) -> OrderedDict:
        return OrderedDict((n.name, list(n.bottoms)) for n in self._net.graph.nodes)

    # ---- running -------------------------------------------------------------
    def forward(self, blobs=None, start=None, end=None, **kwargs) -> dict:
        """Fill inputs from ``kwargs`` (all of them, pycaffe requires), run,
        and return the outputs (or the tops of layer ``end``) as views."""
        if kwargs and set(kwargs) != set(self.inputs):
            raise io.CompatValueError(f"forward() was given {sorted(kwargs)}; pass every net "
                                      f"input: {self.inputs}")
        return self._net.forward(blobs=blobs, start=start, end=end, **kwargs)

    def forward_all(self, blobs=None, **kwargs) -> dict:
        """Forward any number of items in batches of the input's batch size."""
        names = list(dict.fromkeys(self.outputs + list(blobs or ())))
        if not kwargs:
            out = self.forward(blobs=blobs)
            return {n: np.array(out[n] if n in out else self._net.blobs[n].data) for n in names}
        batch = self._net.blobs[self.inputs[0]].shape[0]
        total = len(next(iter(kwargs.values())))
        collected = {n: [] for n in names}
        for start in range(0, total, batch):
            chunk = {k: np.asarray(v)[start:start + batch] for k, v in kwargs.items()}
            got = len(next(iter(chunk.values())))
            if got < batch:  # pad the last batch, as pycaffe does, to keep one plan
                chunk = {k: np.concatenate([v, np.zeros((batch - got,) + v.shape[1:], v.dtype)])
                         for k, v in chunk.items()}
            out = self.forward(blobs=blobs, **chunk)
            for n in names:
                collected[n].append(np.array(out[n] if n in out else self._net.blobs[n].data)[:got])
        return {n: np.concatenate(v) for n, v in collected.items()}

    def backward(self, *args, **kwargs):
        return self._net.backward(*args, **kwargs)

    def reshape(self) -> None:
        self._net.reshape()

    def copy_from(self, path) -> None:
        self._net.copy_from(os.fspath(path))

    def save(self, path) -> None:
        self._net.save(os.fspath(path))

    def __repr__(self) -> str:
        return f"<caffe.Net over {self._net!r}>"


class Classifier(Net):
    """pycaffe's ``caffe.Classifier``: resize, (over)sample, preprocess, forward."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        super().__init__(model_file, pretrained_file, TEST)
        in_ = self.inputs[0]
        shape = self._net.blobs[in_].shape
        self.transformer = io.Transformer({in_: shape})
        self.transformer.set_transpose(in_, (2, 0, 1))
        if mean is not None:
            self.transformer.set_mean(in_, mean)
        if input_scale is not None:
            self.transformer.set_input_scale(in_, input_scale)
        if raw_scale is not None:
            self.transformer.set_raw_scale(in_, raw_scale)
        if channel_swap is not None:
            self.transformer.set_channel_swap(in_, channel_swap)
        self.crop_dims = np.array(shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None else self.crop_dims)

    def predict(self, inputs, oversample: bool = True) -> np.ndarray:
        """Class scores per image: the mean over 10 crops, or the center crop."""
        resized = np.stack([io.resize_image(im, self.image_dims) for im in inputs])
        if oversample:
            crops = io.oversample(resized, self.crop_dims)
        else:
            from netdef.images import center_crop

            crops = np.stack([center_crop(im, self.crop_dims) for im in resized])
        in_ = self.inputs[0]
        caffe_in = np.stack([self.transformer.preprocess(in_, c) for c in crops])
        scores = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            scores = scores.reshape(len(scores) // 10, 10, -1).mean(axis=1)
        return scores
