"""OpenCV's ``cv2.dnn`` Caffe workflow on netdef, for code that loses its
Caffe importer with OpenCV 5.

    from netdef.compat import cv2dnn as dnn        # was: from cv2 import dnn
    net = dnn.readNet("weights.caffemodel", "deploy.prototxt")   # either order
    net.setInput(dnn.blobFromImage(img, 1.0, (224, 224), (104, 117, 123)))
    prob = net.forward()
    t, per_layer = net.getPerfProfile()            # ticks of cv2.getTickFrequency()

The Net
-------
``getLayerNames``, ``getLayerId``, ``getLayer`` and
``getUnconnectedOutLayers(Names)`` follow OpenCV 4's Caffe importer: Input
layers are not layers (id 0 is OpenCV's ``_input``), the Split layers
netdef inserts for shared blobs are not listed (a Split written in the
prototxt is), ids count from 1 in prototxt order, and a Convolution layer
is named after its first top (``name: "conv4-1024" top: "conv4"`` is
``conv4``; the Caffe name is accepted too). ``forward(name)`` returns that
layer's own output even when a later in-place layer (ReLU) overwrites it.
``getPerfProfile()`` returns (total, per-layer timings) of the last
forward, in ticks of ``cv2.getTickFrequency()`` (nanoseconds without cv2);
layers that did not run report 0 and the total is their sum, as OpenCV's.

What still differs from OpenCV (fused layers' timings, blob shapes, phase
rules) is listed in README's "Migrating from OpenCV's readNetFromCaffe".

Images
------
``blobFromImage(s)`` follows OpenCV 4's semantics: an H x W x C BGR image
(uint8 or float) is resized to ``size`` = (width, height) -- or, with
``crop``, scaled by max(w/W, h/H) keeping its aspect ratio and center-cropped
-- then converted to float32, ``mean`` is subtracted and the result is
multiplied by ``scalefactor``, and the channels are laid out N x C x H x W
(R and B exchanged with ``swapRB``; ``mean`` is then given in the swapped
order, as OpenCV expects). Like OpenCV, a single number as ``mean`` applies
to the first channel only. When ``cv2`` can be imported, resizing is
``cv2.resize`` itself, so blobs equal OpenCV's bit for bit (uint8 images
are resized in OpenCV's fixed point). Without it, netdef's float bilinear
resize (netdef.images) is used: uint8 pixels may then differ by one grey
level where OpenCV's fixed-point rounding differs.

``NMSBoxes`` is OpenCV's greedy non-maximum suppression, to the bit
(float32 scores and thresholds, IoU in double rounded to float).
"""
from __future__ import annotations

import os

import numpy as np

from netdef.errors import InputError, did_you_mean
from netdef.images import center_crop_offsets, resize_image

# OpenCV's enum values, for scripts that pass them.
DNN_BACKEND_DEFAULT, DNN_BACKEND_OPENCV = 0, 3
DNN_TARGET_CPU = 0

_CAFFE_WEIGHTS = (".caffemodel",)
_CAFFE_TEXT = (".prototxt", ".pbtxt", ".txt")


def _cv2():
    """The real cv2 module when it is installed (for resize and the tick
    frequency), else None."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2 if hasattr(cv2, "resize") else None


def getTickFrequency() -> float:  # noqa: N802
    """Ticks per second of getPerfProfile's numbers: cv2's when installed."""
    cv2 = _cv2()
    return float(cv2.getTickFrequency()) if cv2 is not None else 1e9


# ------------------------------------------------------------- images ----
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
        # OpenCV computes the factor in float and crops at the truncated
        # half-difference.
        factor = float(np.float32(max(np.float32(out_w) / np.float32(width),
                                      np.float32(out_h) / np.float32(height))))
        image = _resize(image, None, factor)
        oy, ox = center_crop_offsets(image.shape[:2], (out_h, out_w))
        return image[oy:oy + out_h, ox:ox + out_w]
    return _resize(image, (out_w, out_h), None)


def _resize(image: np.ndarray, size, factor) -> np.ndarray:
    """Bilinear resize to ``size`` = (w, h), or by ``factor`` (OpenCV's
    fx = fy); the result keeps the image's channel axis and dtype."""
    cv2 = _cv2()
    if cv2 is not None:
        if factor is not None:
            out = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
        else:
            out = cv2.resize(image, tuple(int(s) for s in size),
                             interpolation=cv2.INTER_LINEAR)
        return out.reshape(out.shape[:2] + image.shape[2:])
    height, width = image.shape[:2]
    if factor is not None:
        shape = (round(height * factor), round(width * factor))
        out = resize_image(image, shape, step=(1 / factor, 1 / factor))
    else:
        out = resize_image(image, (size[1], size[0]))
    out = out.reshape(out.shape[:2] + image.shape[2:])
    if image.dtype == np.uint8:
        return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)
    return out.astype(image.dtype, copy=False)


def blobFromImages(images, scalefactor=1.0, size=None, mean=None, swapRB=False,  # noqa: N802,N803
                   crop=False, ddepth=None) -> np.ndarray:
    """N images (H x W [x C], C in 1/3/4) -> one N x C x h x w float32 blob."""
    if ddepth not in (None, 5):          # CV_32F
        raise InputError("blobFromImages: netdef makes float32 blobs only (ddepth=CV_32F)")
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


def blobFromImage(image, scalefactor=1.0, size=None, mean=None, swapRB=False,  # noqa: N802,N803
                  crop=False, ddepth=None) -> np.ndarray:
    """One image -> a 1 x C x h x w float32 blob (see the module docstring)."""
    return blobFromImages([image], scalefactor, size, mean, swapRB, crop, ddepth)


def imagesFromBlob(blob) -> tuple:  # noqa: N802
    """The inverse layout of blobFromImages: an N x C x H x W blob -> N
    float32 images H x W x C (H x W for one channel), as OpenCV returns."""
    arr = np.asarray(blob, dtype=np.float32)
    if arr.ndim != 4:
        raise InputError(f"imagesFromBlob takes an N x C x H x W blob, got shape {arr.shape}")
    images = []
    for item in arr:
        image = np.ascontiguousarray(item.transpose(1, 2, 0))
        images.append(image[:, :, 0].copy() if image.shape[2] == 1 else image)
    return tuple(images)


# ---------------------------------------------------------------- NMS ----
def _overlaps(box, kept) -> np.ndarray:
    """OpenCV's rectOverlap (1 - jaccardDistance, as float) of Rect2d
    ``box`` (x, y, w, h) against every row of ``kept``; the intersection is
    computed the way cv::Rect's operator& does."""
    x, y, w, h = box
    kx, ky, kw, kh = kept[:, 0], kept[:, 1], kept[:, 2], kept[:, 3]
    area, kept_area = w * h, kw * kh
    # Rect & Rect: from the box that starts first on each axis
    a_first_x, a_first_y = x < kx, y < ky
    min_x = np.where(a_first_x, x, kx)
    max_x = np.where(a_first_x, kx, x)
    min_w = np.where(a_first_x, w, kw)
    max_w = np.where(a_first_x, kw, w)
    min_y = np.where(a_first_y, y, ky)
    max_y = np.where(a_first_y, ky, y)
    min_h = np.where(a_first_y, h, kh)
    max_h = np.where(a_first_y, kh, h)
    with np.errstate(invalid="ignore", divide="ignore"):
        iw = np.minimum(min_w - (max_x - min_x), max_w)
        ih = np.minimum(min_h - (max_y - min_y), max_h)
        empty = ((max_x - min_x) >= min_w) | ((max_y - min_y) >= min_h)
        empty |= (w <= 0) | (h <= 0) | (kw <= 0) | (kh <= 0)
        inter = np.where(empty, 0.0, iw * ih)
        union = area + kept_area
        distance = np.where(union <= np.finfo(np.float64).eps, 0.0,
                            1.0 - inter / (union - inter))
    return np.float32(1.0) - distance.astype(np.float32)


def NMSBoxes(bboxes, scores, score_threshold, nms_threshold, eta=1.0, top_k=0):  # noqa: N802
    """OpenCV's ``cv2.dnn.NMSBoxes``: indices of the boxes (x, y, w, h) kept
    by greedy non-maximum suppression, best score first.

    Boxes scoring above ``score_threshold`` are visited by decreasing score
    (ties keep their input order; at most ``top_k`` when > 0); a box is
    kept unless its IoU with a kept box exceeds the threshold, which starts
    at ``nms_threshold`` and is multiplied by ``eta`` after each kept box
    while it is above 0.5. Returns an int32 array (an empty tuple when no
    box is given, as cv2 does).
    """
    boxes = np.asarray(bboxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    if boxes.size == 0 and scores.size == 0:
        return ()
    boxes = boxes.reshape(-1, 4) if boxes.ndim != 2 else boxes
    if boxes.shape[1] != 4:
        raise InputError(f"NMSBoxes: boxes must be (x, y, width, height), got shape "
                         f"{np.asarray(bboxes).shape}")
    if len(boxes) != len(scores):
        raise InputError(f"NMSBoxes: {len(boxes)} boxes but {len(scores)} scores")
    score_threshold, threshold = np.float32(score_threshold), np.float32(nms_threshold)
    eta = np.float32(eta)
    if score_threshold < 0 or threshold < 0 or eta <= 0:
        raise InputError("NMSBoxes: score_threshold and nms_threshold must be >= 0 and eta > 0")
    candidates = np.flatnonzero(scores > score_threshold)
    order = candidates[np.argsort(-scores[candidates], kind="stable")]
    if top_k > 0:
        order = order[:top_k]
    kept: list[int] = []
    for idx in order:
        if kept:
            overlap = _overlaps(boxes[idx], boxes[kept])
            if (overlap > threshold).any():
                continue
        kept.append(int(idx))
        if eta < 1 and threshold > 0.5:
            threshold = np.float32(threshold * eta)
    return np.array(kept, dtype=np.int32)


# -------------------------------------------------------------- the net ----
def readNetFromCaffe(prototxt, caffeModel=None) -> DnnNet:  # noqa: N802,N803
    """A net from a deploy prototxt and (optionally) its .caffemodel."""
    from netdef.net import Net

    weights = os.fspath(caffeModel) if caffeModel else None
    return DnnNet(Net(os.fspath(prototxt), weights=weights, phase="TEST"))


def readNet(model, config="", framework="") -> DnnNet:  # noqa: N802
    """OpenCV's ``readNet`` for Caffe pairs: the .caffemodel and the
    .prototxt may come in either order (told apart by extension); a
    prototxt alone gives a net with filler weights."""
    if framework and framework.lower() != "caffe":
        raise InputError(f"readNet: netdef reads Caffe models only, not {framework!r}")
    paths = [os.fspath(p) for p in (model, config) if p]
    if not paths:
        raise InputError("readNet needs a model file")
    weights = [p for p in paths if p.lower().endswith(_CAFFE_WEIGHTS)]
    texts = [p for p in paths if p not in weights]
    unknown = [p for p in texts if not p.lower().endswith(_CAFFE_TEXT)]
    if unknown or len(weights) > 1 or len(texts) != 1:
        raise InputError(f"readNet: expected a .prototxt and an optional .caffemodel, got "
                         f"{', '.join(repr(p) for p in paths)}",
                         hint="netdef reads Caffe models only")
    return readNetFromCaffe(texts[0], weights[0] if weights else None)


class DnnLayer:
    """What ``Net.getLayer`` returns: ``name``, ``type`` and ``blobs`` (copies
    of the parameter arrays, Caffe's shapes)."""

    def __init__(self, name: str, type_: str, blobs=()):
        self.name = name
        self.type = type_
        self.blobs = tuple(blobs)

    def __repr__(self) -> str:
        return f"<DnnLayer {self.name!r} ({self.type})>"


class DnnNet:
    """The ``cv2.dnn.Net`` methods that Caffe inference code uses."""

    def __init__(self, net):
        self.net = net
        self._pending: dict[str, np.ndarray] = {}
        # OpenCV's layer list: no Input layers, no inserted Splits.
        nodes = [n for n in net.graph.nodes if not n.inserted and n.type != "Input"]
        self._nodes = {}
        self._alias: dict[str, str] = {}
        for node in nodes:
            name = node.tops[0] if node.type == "Convolution" and node.tops else node.name
            if name in self._nodes:            # a clash: keep Caffe's name
                name = node.name
            self._nodes[name] = node
            if name != node.name:
                self._alias[node.name] = name
        self._ids = {name: i + 1 for i, name in enumerate(self._nodes)}
        self._names = ["_input", *self._nodes]
        self._timings: dict[str, float] = {}

    # ---- inputs and forward ------------------------------------------------
    def setInput(self, blob, name: str = "", scalefactor=1.0, mean=None) -> None:  # noqa: N802
        """Set an input blob (the first input when ``name`` is empty);
        ``mean`` is subtracted and the result scaled, per channel, as OpenCV."""
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
        net = self.net
        for name, arr in self._pending.items():
            net._feed(name, arr)
        plan = net._plan()
        order = [s.name for s in plan.steps]
        layers = sorted({self._layer_key(n) for n in names if self._layer_key(n)},
                        key=lambda k: order.index(self._nodes[k].name))
        blobs = [n for n in names if not self._layer_key(n)]
        for n in blobs:
            self._blob_of(n)                  # unknown names fail before running
        timings: dict[str, float] = {}
        got: dict[str, np.ndarray] = {}
        start = 0
        for key in layers:                   # stop after each requested layer
            node = self._nodes[key]
            end = order.index(node.name)
            plan.run(start, end, timings=timings)
            start = end + 1
            got[key] = np.array(net.blobs[node.tops[0]].data)
        if blobs:                            # blob names: their final values
            if start < len(order):
                plan.run(start, timings=timings)
            got.update((n, np.array(net.blobs[n].data)) for n in blobs)
        for n in names:
            key = self._layer_key(n)
            if key:
                got[n] = got[key]
        self._timings = timings
        return got

    def _layer_key(self, name: str) -> str | None:
        """The listed (OpenCV) name of a layer given by either name, else None."""
        if name in self._nodes:
            return name
        return self._alias.get(name)

    def _blob_of(self, name: str) -> str:
        """A layer's first top, or a blob name as is."""
        key = self._layer_key(name)
        if key:
            return self._nodes[key].tops[0]
        if name in self.net.blobs:
            return name
        raise InputError(f"the net has no layer '{name}'",
                         hint=did_you_mean(name, list(self._nodes)))

    # ---- layers ---------------------------------------------------------------
    def getLayerNames(self) -> list[str]:  # noqa: N802
        return list(self._nodes)

    def getLayerId(self, name: str) -> int:  # noqa: N802
        """1-based id in getLayerNames order; 0 for ``_input``, -1 if unknown."""
        if name == "_input":
            return 0
        key = self._layer_key(name)
        return self._ids[key] if key else -1

    def getLayer(self, layer) -> DnnLayer:  # noqa: N802
        """The layer with this name or id (0 is OpenCV's ``_input``)."""
        if isinstance(layer, (int, np.integer)):
            index = int(layer)
            if index == 0:
                return DnnLayer("_input", "")
            if not 1 <= index <= len(self._nodes):
                raise InputError(f"the net has no layer with id {index} "
                                 f"(ids are 0 to {len(self._nodes)})")
            key = list(self._nodes)[index - 1]
        else:
            key = self._layer_key(str(layer))
            if key is None:
                if layer == "_input":
                    return DnnLayer("_input", "")
                raise InputError(f"the net has no layer '{layer}'",
                                 hint=did_you_mean(str(layer), list(self._nodes)))
        node = self._nodes[key]
        params = self.net.params.get(node.name, ())
        return DnnLayer(key, node.type, [np.array(b.data) for b in params])

    def getParam(self, layer, numParam: int = 0) -> np.ndarray:  # noqa: N802,N803
        """A copy of parameter blob ``numParam`` of a layer (name or id)."""
        blobs = self.getLayer(layer).blobs
        if not 0 <= numParam < len(blobs):
            raise InputError(f"layer {layer!r} has {len(blobs)} parameter blobs, "
                             f"no blob {numParam}")
        return blobs[numParam]

    def setParam(self, layer, numParam: int, blob) -> None:  # noqa: N802,N803
        """Overwrite parameter blob ``numParam`` of a layer (same element count)."""
        node = self._nodes[self.getLayer(layer).name]
        params = self.net.params.get(node.name, ())
        if not 0 <= numParam < len(params):
            raise InputError(f"layer {layer!r} has {len(params)} parameter blobs, "
                             f"no blob {numParam}")
        target = params[numParam]
        arr = np.asarray(blob, dtype=np.float32)
        if arr.size != target.count:
            raise InputError(f"layer {layer!r} blob {numParam} has shape {target.shape}, "
                             f"got an array of shape {arr.shape}")
        target.data[...] = arr.reshape(target.shape)
        self.net.params_changed()

    def getUnconnectedOutLayersNames(self) -> list[str]:  # noqa: N802
        """Layers whose outputs no later layer reads (OpenCV's rule: in an
        in-place chain only the last link), in id order. Like OpenCV,
        ``_input`` is one of them when no layer reads an Input layer (nets
        fed by data layers)."""
        return [self._names[i] for i in self._unconnected()]

    def getUnconnectedOutLayers(self) -> np.ndarray:  # noqa: N802
        return np.array(self._unconnected(), dtype=np.int32)

    def _unconnected(self) -> list[int]:
        inputs = {id(n) for n in self.net.graph.nodes if n.type == "Input"}
        writer: dict[str, int] = {}          # blob -> id(node) writing its current value
        consumed: set[int] = set()
        inputs_read = False
        for node in self.net.graph.nodes:
            for b in node.bottoms:
                if b in writer:
                    consumed.add(writer[b])
                    inputs_read |= writer[b] in inputs and not node.inserted
            for t in node.tops:
                # a Split netdef inserted is transparent: its readers read the producer
                writer[t] = writer.get(node.bottoms[0], id(node)) if node.inserted else id(node)
        ids = [0] if not inputs_read else []
        ids += [self._ids[key] for key, node in self._nodes.items() if id(node) not in consumed]
        return ids

    def getPerfProfile(self):  # noqa: N802
        """(total, timings): the last forward's time per listed layer, in
        ticks of getTickFrequency() (cv2's when installed); the total is
        their sum, as in OpenCV."""
        freq = getTickFrequency()
        ticks = np.zeros(len(self._nodes), dtype=np.float64)
        for i, node in enumerate(self._nodes.values()):
            ticks[i] = round(self._timings.get(node.name, 0.0) * freq)
        return int(ticks.sum()), ticks

    # ---- accepted and ignored -------------------------------------------------
    def setPreferableBackend(self, backend) -> None:  # noqa: N802
        """Accepted and ignored: netdef has one CPU backend."""

    def setPreferableTarget(self, target) -> None:  # noqa: N802
        """Accepted and ignored: netdef has one CPU target."""

    def enableFusion(self, fusion: bool) -> None:  # noqa: N802
        """Accepted and ignored (numbers do not depend on it)."""

    def empty(self) -> bool:
        return not self._nodes

    def __repr__(self) -> str:
        return f"<netdef.compat.cv2dnn.Net of {len(self._nodes)} layers: {self.net!r}>"


Net = DnnNet          # cv2.dnn.Net's name, for isinstance checks and annotations

__all__ = ["DNN_BACKEND_DEFAULT", "DNN_BACKEND_OPENCV", "DNN_TARGET_CPU", "DnnLayer",
           "DnnNet", "NMSBoxes", "Net", "blobFromImage", "blobFromImages", "getTickFrequency",
           "imagesFromBlob", "readNet", "readNetFromCaffe"]
