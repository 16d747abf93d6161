"""OpenCV's ``cv2.dnn`` Caffe workflow on netdef.

    from netdef.compat import cv2dnn as dnn        # was: from cv2 import dnn
    net = dnn.readNetFromCaffe("deploy.prototxt", "weights.caffemodel")
    net.setInput(dnn.blobFromImage(img, 1.0, (224, 224), (104, 117, 123)))
    prob = net.forward()

``blobFromImage(s)`` follows OpenCV 4's semantics: an H x W x C BGR image
(uint8 or float) is resized to ``size`` = (width, height) -- or, with
``crop``, scaled by max(w/W, h/H) keeping its aspect ratio and center-cropped
-- then converted to float32, ``mean`` is subtracted and the result is
multiplied by ``scalefactor``, and the channels are laid out N x C x H x W
(R and B exchanged with ``swapRB``; ``mean`` is then given in the swapped
order, as OpenCV expects). Like OpenCV, a single number as ``mean`` applies
to the first channel only. uint8 images are resized in float and rounded,
so resized uint8 pixels may differ from OpenCV's fixed-point resize by 1.
"""
from __future__ import annotations

import os

import numpy as np

from netdef.errors import InputError, did_you_mean
from netdef.images import center_crop_offsets, resize_image

# OpenCV's enum values, for scripts that pass them.
DNN_BACKEND_DEFAULT, DNN_BACKEND_OPENCV = 0, 3
DNN_TARGET_CPU = 0


def _scalar4(value) -> np.ndarray:
    """OpenCV's Scalar: up to 4 values, zero-padded (a lone number fills slot 0)."""
    if value is None:
        return np.zeros(4)
    values = np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel()
    if values.size > 4:
        raise InputError(f"mean has {values.size} values; OpenCV takes at most 4")
    return np.concatenate([values, np.zeros(4 - values.size)])


def _resized(image: np.ndarray, size, crop: bool) -> np.ndarray:
    """Resize (and crop) one H x W x C image the way blobFromImages does."""
    height, width = image.shape[:2]
    out_w, out_h = size
    if (out_w, out_h) == (width, height):
        return image
    if crop:
        factor = float(np.float32(max(out_w / np.float32(width), out_h / np.float32(height))))
        scaled = (round(height * factor), round(width * factor))
        image = _resize_keep_type(image, scaled, step=(1 / factor, 1 / factor))
        oy, ox = center_crop_offsets(scaled, (out_h, out_w))
        return image[oy:oy + out_h, ox:ox + out_w]
    return _resize_keep_type(image, (out_h, out_w))


def _resize_keep_type(image, size, step=None):
    out = resize_image(image, size, step=step)
    if image.dtype == np.uint8:
        return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return out


def blobFromImages(images, scalefactor=1.0, size=None, mean=None, swapRB=False,  # noqa: N802
                   crop=False) -> np.ndarray:
    """N images (H x W [x C], C in 1/3/4) -> one N x C x h x w float32 blob."""
    images = [np.asarray(im) for im in images]
    if not images:
        raise InputError("blobFromImages needs at least one image")
    size = tuple(int(s) for s in size) if size else (0, 0)
    if size == (0, 0):
        size = (images[0].shape[1], images[0].shape[0])
    mean = _scalar4(mean)
    items = []
    for im in images:
        if im.ndim == 2:
            im = im[:, :, None]
        if im.ndim != 3 or im.shape[2] not in (1, 3, 4):
            raise InputError(f"an image must be H x W x C with 1, 3 or 4 channels, "
                             f"got shape {im.shape}")
        if im.dtype != np.uint8:
            im = im.astype(np.float32)
        nch = im.shape[2]
        im = _resized(im, size, crop).astype(np.float32)
        m = mean[:nch].copy()
        order = list(range(nch))
        if swapRB and nch >= 3:
            m[[0, 2]] = m[[2, 0]]
            order[0], order[2] = 2, 0
        im = (im - m.astype(np.float32)) * np.float32(scalefactor)
        items.append(im.transpose(2, 0, 1)[order])
    if len({it.shape for it in items}) > 1:
        raise InputError("images end up with different shapes "
                         f"{sorted({it.shape for it in items})}; give a size")
    return np.ascontiguousarray(np.stack(items), dtype=np.float32)


def blobFromImage(image, scalefactor=1.0, size=None, mean=None, swapRB=False,  # noqa: N802
                  crop=False) -> np.ndarray:
    """One image -> a 1 x C x h x w float32 blob (see the module docstring)."""
    return blobFromImages([image], scalefactor, size, mean, swapRB, crop)


def readNetFromCaffe(prototxt, caffeModel=None) -> DnnNet:  # noqa: N802,N803
    from netdef.net import Net

    weights = os.fspath(caffeModel) if caffeModel else None
    return DnnNet(Net(os.fspath(prototxt), weights=weights, phase="TEST"))


class DnnNet:
    """The subset of ``cv2.dnn.Net`` that Caffe classification code uses."""

    def __init__(self, net):
        self.net = net
        self._pending: dict[str, np.ndarray] = {}
        nodes = [n for n in net.graph.nodes if n.bottoms]  # OpenCV lists no Input layers
        self._tops = {n.name: list(n.tops) for n in nodes}

    def setInput(self, blob, name: str = "", scalefactor=1.0, mean=None) -> None:  # noqa: N802
        arr = np.asarray(blob, dtype=np.float32)
        if mean is not None:
            m = _scalar4(mean)[:arr.shape[1]].astype(np.float32)
            arr = arr - m.reshape((1, -1) + (1,) * (arr.ndim - 2))
        if scalefactor != 1.0:
            arr = arr * np.float32(scalefactor)
        inputs = self.net.inputs
        if not name:
            name = inputs[0] if inputs else ""
        if name not in inputs:
            raise InputError(f"the net has no input '{name}'",
                             hint=did_you_mean(name, inputs) or f"inputs: {', '.join(inputs)}")
        self._pending[name] = arr

    def forward(self, outputName=None):  # noqa: N803
        """The output of one layer (default: the last), or a list for a list of names.

        Like OpenCV, a layer's own output is returned even when a later
        in-place layer (ReLU) overwrites it: the net runs in segments that
        stop after each requested layer.
        """
        many = isinstance(outputName, (list, tuple))
        names = list(outputName) if many else [outputName or self.getLayerNames()[-1]]
        got = self._run(names)
        results = [got[n] for n in names]
        return results if many else results[0]

    def _run(self, names) -> dict[str, np.ndarray]:
        order = self.net.layer_names
        layers = sorted({n for n in names if n in self._tops}, key=order.index)
        blobs = [n for n in names if n not in self._tops]
        inputs, got = dict(self._pending), {}
        if blobs:
            self.net.forward(**inputs)
            got = {n: np.array(self.net.blobs[self._blob_of(n)].data) for n in blobs}
            inputs = {}
        start = None
        for layer in layers:
            out = self.net.forward(start=start, end=layer, **inputs)
            got[layer] = np.array(out[self._tops[layer][0]])
            inputs, start = {}, order[order.index(layer) + 1] if layer != order[-1] else None
        return got

    def _blob_of(self, name: str) -> str:
        """A layer's first top, or a blob name as is."""
        if name in self._tops:
            return self._tops[name][0]
        if name in self.net.blobs:
            return name
        raise InputError(f"the net has no layer '{name}'",
                         hint=did_you_mean(name, list(self._tops)))

    def getLayerNames(self) -> list[str]:  # noqa: N802
        return list(self._tops)

    def getUnconnectedOutLayersNames(self) -> list[str]:  # noqa: N802
        """Layers that last write a net output (in-place chains: the last link)."""
        last_writer = {}
        for layer, tops in self._tops.items():
            for t in tops:
                last_writer[t] = layer
        return list(dict.fromkeys(last_writer[o] for o in self.net.outputs if o in last_writer))

    def getUnconnectedOutLayers(self) -> np.ndarray:  # noqa: N802
        ids = {name: i + 1 for i, name in enumerate(self._tops)}  # id 0 is OpenCV's input
        return np.array([ids[n] for n in self.getUnconnectedOutLayersNames()], dtype=np.int32)

    def setPreferableBackend(self, backend) -> None:  # noqa: N802
        """Accepted and ignored: netdef has one CPU backend."""

    def setPreferableTarget(self, target) -> None:  # noqa: N802
        """Accepted and ignored: netdef has one CPU target."""

    def empty(self) -> bool:
        return False
