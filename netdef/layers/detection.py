"""The SSD fork's detection layers: Normalize, Permute, PriorBox, DetectionOutput.

These are the layers of Wei Liu's SSD branch of Caffe, which OpenCV's face
detector (ResNet-10 SSD) and MobileNet-SSD use. Their parameters are that
fork's messages (norm_param, permute_param, prior_box_param,
detection_output_param) at its field numbers.

Normalize and Permute have Caffe's backward; PriorBox depends only on shapes
and DetectionOutput selects boxes, so neither has a gradient (backward is an
error only when a gradient is asked for).
"""
from __future__ import annotations

import math

import numpy as np

from netdef.frontend.schema import pb
from netdef.layers.base import Layer, filler_param, register, shape_text


def _no_gradient(layer: Layer, propagate_down) -> None:
    if any(propagate_down):
        raise layer.config_error(
            "has no gradient (as in the SSD fork), but backward was asked for one; "
            f"bottoms: {layer.bottoms_text()}",
            hint="give the layer propagate_down: false")


# ---------------------------------------------------------------- Normalize ----

@register("Normalize")
class Normalize(Layer):
    """y = s * x / sqrt(sum x^2 + eps), the L2 normalisation of SSD's conv4_3.

    The sum runs over each sample's C x H x W values (``across_spatial``,
    the default) or over the C channels at each spatial position. ``s`` is a
    learned scale: one value (``channel_shared``, the default) or one per
    channel, filled by ``scale_filler`` (default: constant 1). ``eps``
    (default 1e-10) sits inside the square root, as in the fork. Works for
    any bottom of rank >= 2 (axes after 1 are the spatial ones).

    Backward, with n the norm of x's group and g = dy * s:
    dx = g / n - x * sum(g * x) / n^3 over the group, and
    ds = sum(dy * x / n) over everything the scale covers.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "norm"

    def setup(self, bottoms, tops):
        p = self.param.norm_param
        shape = bottoms[0].shape
        if len(shape) < 2:
            raise self.config_error(
                f"needs a bottom of at least 2 axes (N, C, ...), got bottom "
                f"'{bottoms[0].name}' {shape_text(shape)}")
        self.across_spatial = p.across_spatial
        self.channel_shared = p.channel_shared
        self.eps = float(p.eps)
        self.channels = shape[1]
        self.add_param((1,) if self.channel_shared else (self.channels,),
                       filler_param(p, "scale_filler", type="constant", value=1.0))

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.require(len(shape) >= 2, "needs a bottom of at least 2 axes (N, C, ...)")
        self.require(shape[1] == self.channels,
                     f"bottom has {shape[1]} channels but the scale was made for {self.channels}")
        self.view = (shape[0], shape[1], math.prod(shape[2:]))
        tops[0].reshape(shape)

    def _norm_axes(self):
        return (1, 2) if self.across_spatial else (1,)

    def _scale(self) -> np.ndarray:
        s = self.blobs[0].data.reshape(-1)
        return s.reshape(1, 1, 1) if self.channel_shared else s.reshape(1, -1, 1)

    def forward(self, bottoms, tops):
        x = bottoms[0].data.reshape(self.view)
        norm = np.sqrt(np.einsum("nci,nci->n" + ("" if self.across_spatial else "i"), x, x)
                       + np.float32(self.eps)).astype(np.float32)
        norm = norm.reshape(-1, 1, 1) if self.across_spatial else norm[:, None, :]
        # Kept for backward; x too when in place (the top overwrites it).
        self._norm = norm
        self._x = x.copy() if tops[0] is bottoms[0] else None
        y = tops[0].data.reshape(self.view)
        np.divide(x, norm, out=y)
        y *= self._scale()

    def backward(self, tops, propagate_down, bottoms):
        x = self._x if self._x is not None else bottoms[0].data.reshape(self.view)
        dy = np.ascontiguousarray(tops[0].diff).reshape(self.view)
        norm = self._norm
        if self.param_propagate_down and self.param_propagate_down[0]:
            contrib = dy * x / norm
            ds = contrib.sum() if self.channel_shared else contrib.sum(axis=(0, 2))
            self.blobs[0].diff.reshape(-1)[...] += ds
        if not propagate_down[0]:
            return
        g = dy * self._scale()
        dot = (g * x).sum(axis=self._norm_axes(), keepdims=True)
        dx = g / norm - x * (dot / (norm * norm * norm))
        bottoms[0].diff[...] = dx.reshape(bottoms[0].shape)


# ------------------------------------------------------------------ Permute ----

@register("Permute")
class Permute(Layer):
    """Reorder axes: top axis i is bottom axis ``order[i]`` (permute_param.order).

    Axes the order does not name follow in their original order, as in the
    fork ((0, 2, 3, 1) turns NCHW into NHWC; an empty order copies). Every
    order value must name an axis, once. Backward applies the inverse order
    to the top diff.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "structure"

    def setup(self, bottoms, tops):
        ndim = len(bottoms[0].shape)
        order = [int(o) for o in self.param.permute_param.order]
        for o in order:
            if o >= ndim:
                raise self.config_error(
                    f"permute_param.order {o} is not an axis of bottom '{bottoms[0].name}' "
                    f"{shape_text(bottoms[0].shape)} ({ndim} axes)")
        if len(set(order)) != len(order):
            raise self.config_error(f"permute_param.order {order} names an axis twice")
        self.order = tuple(order + [a for a in range(ndim) if a not in order])
        self.inverse = tuple(int(i) for i in np.argsort(self.order))

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.require(len(shape) == len(self.order),
                     f"bottom has {len(shape)} axes, the order was made for {len(self.order)}")
        self.require(tops[0] is not bottoms[0], "cannot run in place")
        tops[0].reshape(tuple(shape[a] for a in self.order))

    def forward(self, bottoms, tops):
        tops[0].data[...] = bottoms[0].data.transpose(self.order)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            bottoms[0].diff[...] = tops[0].diff.transpose(self.inverse)


# ----------------------------------------------------------------- PriorBox ----

@register("PriorBox")
class PriorBox(Layer):
    """SSD's default boxes for every cell of bottom 0's H x W grid.

    Bottoms: a feature map (N, C, H, W) and the image (N, C, IH, IW). Top:
    (1, 2, H * W * num_priors * 4): channel 0 holds the boxes
    [xmin, ymin, xmax, ymax] divided by the image width/height, channel 1
    their 4 variances. Per cell, centred at ((w + offset) * step_w,
    (h + offset) * step_h), and per min_size m: an m x m box; with max_size
    M, a sqrt(m M) square; then for each aspect ratio r != 1,
    m sqrt(r) x m / sqrt(r). The ratios are 1, then the given ones with
    duplicates dropped, each followed by 1/r when ``flip``. The image size
    comes from img_size / img_h + img_w, else bottom 1; the step from step /
    step_h + step_w, else image size / grid size. ``clip`` clamps every
    coordinate to [0, 1]. ``variance``: 4 values, one value for all four,
    or none (0.1). Only shapes matter, so there is no gradient.
    """

    num_bottoms = 2
    num_tops = 1
    kind = "other"

    def setup(self, bottoms, tops):
        p = self.param.prior_box_param
        where = f"; bottoms: {self.bottoms_text()}"
        self.min_sizes = [float(m) for m in p.min_size]
        if not self.min_sizes:
            raise self.config_error("prior_box_param needs at least one min_size" + where)
        if any(m <= 0 for m in self.min_sizes):
            raise self.config_error(f"min_size must be positive, got {self.min_sizes}" + where)
        self.max_sizes = [float(m) for m in p.max_size]
        if self.max_sizes:
            if len(self.max_sizes) != len(self.min_sizes):
                raise self.config_error(
                    f"{len(self.max_sizes)} max_size values for {len(self.min_sizes)} "
                    "min_size values: give one per min_size" + where)
            for lo, hi in zip(self.min_sizes, self.max_sizes, strict=True):
                if hi <= lo:
                    raise self.config_error(f"max_size {hi:g} must exceed min_size {lo:g}"
                                            + where)
        ratios = [1.0]
        for r in p.aspect_ratio:
            if r <= 0:
                raise self.config_error(f"aspect_ratio must be positive, got {r:g}" + where)
            if any(abs(r - q) < 1e-6 for q in ratios):
                continue
            ratios.append(float(r))
            if p.flip:
                ratios.append(1.0 / float(r))
        self.ratios = ratios
        self.num_priors = len(ratios) * len(self.min_sizes) + len(self.max_sizes)
        variance = [float(v) for v in p.variance]
        if len(variance) not in (0, 1, 4):
            raise self.config_error(f"variance takes 1 or 4 values, got {len(variance)}" + where)
        if any(v <= 0 for v in variance):
            raise self.config_error(f"variance must be positive, got {variance}" + where)
        self.variance = (variance * 4)[:4] if variance else [0.1] * 4
        if p.HasField("img_h") or p.HasField("img_w"):
            if p.HasField("img_size"):
                raise self.config_error("give img_size or img_h/img_w, not both" + where)
            self.img_hw = (int(p.img_h), int(p.img_w))
        elif p.HasField("img_size"):
            self.img_hw = (int(p.img_size),) * 2
        else:
            self.img_hw = (0, 0)
        if p.HasField("step_h") or p.HasField("step_w"):
            if p.HasField("step"):
                raise self.config_error("give step or step_h/step_w, not both" + where)
            self.step_hw = (float(p.step_h), float(p.step_w))
        elif p.HasField("step"):
            self.step_hw = (float(p.step),) * 2
        else:
            self.step_hw = (0.0, 0.0)
        if min(self.img_hw) < 0 or (any(self.img_hw) and not all(self.img_hw)):
            raise self.config_error(f"img_h and img_w must both be positive, got {self.img_hw}"
                                    + where)
        if any(self.step_hw) and min(self.step_hw) <= 0:
            raise self.config_error(f"step must be positive, got {self.step_hw}" + where)
        self.offset = float(p.offset)
        self.clip = p.clip
        self._cache = None

    def reshape(self, bottoms, tops):
        feat, img = bottoms[0].shape, bottoms[1].shape
        self.require(len(feat) == 4, "bottom 0 (the feature map) must be N x C x H x W")
        self.require(len(img) == 4 or all(self.img_hw),
                     "bottom 1 (the image) must be N x C x H x W")
        tops[0].reshape((1, 2, feat[2] * feat[3] * self.num_priors * 4))

    def _boxes(self, feat_hw, img_hw) -> np.ndarray:
        """(H*W*num_priors, 4) normalised boxes, in the fork's order."""
        lh, lw = feat_hw
        ih, iw = (self.img_hw if all(self.img_hw) else img_hw)
        sh, sw = self.step_hw if all(self.step_hw) else (ih / lh, iw / lw)
        sizes = []          # (box width, box height) per prior, in the fork's order
        for k, m in enumerate(self.min_sizes):
            sizes.append((m, m))
            if self.max_sizes:
                side = math.sqrt(m * self.max_sizes[k])
                sizes.append((side, side))
            for r in self.ratios:
                if abs(r - 1.0) < 1e-6:
                    continue
                sizes.append((m * math.sqrt(r), m / math.sqrt(r)))
        # float32 centres, as the fork computes them; the rest in double, then float
        cy = (np.arange(lh, dtype=np.float32) + np.float32(self.offset)) * np.float32(sh)
        cx = (np.arange(lw, dtype=np.float32) + np.float32(self.offset)) * np.float32(sw)
        bw = np.array([s[0] for s in sizes], np.float32).astype(np.float64)
        bh = np.array([s[1] for s in sizes], np.float32).astype(np.float64)
        cx = cx.astype(np.float64)[None, :, None]
        cy = cy.astype(np.float64)[:, None, None]
        out = np.empty((lh, lw, len(sizes), 4), np.float64)
        out[..., 0] = (cx - bw / 2.0) / iw
        out[..., 1] = (cy - bh / 2.0) / ih
        out[..., 2] = (cx + bw / 2.0) / iw
        out[..., 3] = (cy + bh / 2.0) / ih
        out = out.astype(np.float32).reshape(-1, 4)
        if self.clip:
            np.clip(out, 0.0, 1.0, out=out)
        return out

    def forward(self, bottoms, tops):
        key = (bottoms[0].shape[2:], bottoms[1].shape[2:4])
        if self._cache is None or self._cache[0] != key:
            boxes = self._boxes(*key)
            variances = np.broadcast_to(np.array(self.variance, np.float32), boxes.shape)
            self._cache = (key, np.stack([boxes.reshape(-1), variances.reshape(-1)])[None])
        tops[0].data[...] = self._cache[1]

    def backward(self, tops, propagate_down, bottoms):
        _no_gradient(self, propagate_down)


# ---------------------------------------------------------- DetectionOutput ----

_CODE_TYPES = {pb.PriorBoxParameter.CORNER: "CORNER",
               pb.PriorBoxParameter.CENTER_SIZE: "CENTER_SIZE",
               pb.PriorBoxParameter.CORNER_SIZE: "CORNER_SIZE"}


def _best_first(cand: np.ndarray, values: np.ndarray, top_k: int) -> np.ndarray:
    """cand sorted by values, highest first, ties in cand's order (a stable
    sort, as the fork's), cut to the first ``top_k`` unless it is -1. With
    more candidates than top_k, those top_k are picked first in linear time
    (every value above the top_k-th largest, then ties with it in order),
    so only they are sorted: with a low confidence threshold all 8,732 of
    the face detector's priors can be candidates (0.6 ms to sort)."""
    if -1 < top_k < len(cand):
        if top_k == 0:
            return cand[:0]
        kth = np.partition(values, len(values) - top_k)[len(values) - top_k]
        above = values > kth
        ties = np.flatnonzero(values == kth)[:top_k - int(above.sum())]
        above[ties] = True
        cand, values = cand[above], values[above]
    order = cand[np.argsort(-values, kind="stable")]
    return order if top_k < 0 else order[:top_k]


def decode_boxes(loc: np.ndarray, priors: np.ndarray, variances: np.ndarray | None,
                 code_type: str) -> np.ndarray:
    """Decode (..., P, 4) offsets against (P, 4) priors, float32 throughout.

    ``variances`` (P, 4) scale the offsets first, unless it is None
    (variance_encoded_in_target). CENTER_SIZE: centre moves by dx * prior
    width, size is exp(dw) * prior width; CORNER: offsets add to the
    corners; CORNER_SIZE: offsets times the prior's size add to the corners.
    """
    d = loc if variances is None else loc * variances
    pw = priors[:, 2] - priors[:, 0]
    ph = priors[:, 3] - priors[:, 1]
    out = np.empty(np.broadcast_shapes(d.shape, priors.shape), np.float32)
    if code_type == "CORNER":
        np.add(priors, d, out=out)
    elif code_type == "CORNER_SIZE":
        size = np.stack([pw, ph, pw, ph], axis=-1)
        np.add(priors, d * size, out=out)
    else:
        pcx = (priors[:, 0] + priors[:, 2]) * np.float32(0.5)
        pcy = (priors[:, 1] + priors[:, 3]) * np.float32(0.5)
        cx = d[..., 0] * pw + pcx
        cy = d[..., 1] * ph + pcy
        half_w = np.exp(d[..., 2]) * pw * np.float32(0.5)
        half_h = np.exp(d[..., 3]) * ph * np.float32(0.5)
        out[..., 0] = cx - half_w
        out[..., 1] = cy - half_h
        out[..., 2] = cx + half_w
        out[..., 3] = cy + half_h
    return out


@register("DetectionOutput")
class DetectionOutput(Layer):
    """SSD's detections: decode boxes, per-class NMS, keep the best per image.

    Bottoms: loc (N, P * L * 4) box offsets (L = 1 with ``share_location``,
    else num_classes), conf (N, P * num_classes) class scores (already
    softmaxed), and the priors (1, 2, P * 4) from PriorBox (boxes, then
    variances). Per image, exactly as the fork:

    1. decode every prior's offsets (``code_type`` CORNER, CENTER_SIZE or
       CORNER_SIZE; the variances scale the offsets unless
       ``variance_encoded_in_target``); ``clip`` (OpenCV's extension)
       clamps the decoded boxes to [0, 1];
    2. for every class but ``background_label_id``, in ascending order: the
       priors whose score is above ``confidence_threshold`` (all when
       unset), sorted by descending score (stable: ties keep prior order),
       the first ``nms_param.top_k`` of them, then greedy NMS: a box is
       kept when its IoU with every box kept so far is <= the threshold;
       the threshold is multiplied by ``eta`` after each keep while it is
       above 0.5 (eta 1: plain NMS);
    3. with ``keep_top_k`` >= 0 and more detections than that, the
       keep_top_k best scores over all classes survive.

    Top: (1, 1, D, 7), one row [image, label, score, xmin, ymin, xmax,
    ymax] per detection, grouped by image, then by label (ascending), then
    by descending score (the fork's order; OpenCV sorts each image's rows
    by score instead). With no detection in the whole batch the fork's
    convention holds: N rows [i, -1, -1, -1, -1, -1, -1]. D depends on the
    data, so shape inference reports (1, 1, 1, 7), as the fork's Reshape
    does, and forward reshapes the top. No gradient.
    """

    num_bottoms = 3
    num_tops = 1
    kind = "output"

    def setup(self, bottoms, tops):
        p = self.param.detection_output_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.config_error("detection_output_param.num_classes must be given (>= 1)")
        self.num_classes = int(p.num_classes)
        self.share_location = p.share_location
        self.num_loc_classes = 1 if self.share_location else self.num_classes
        self.background = int(p.background_label_id)
        nms = p.nms_param
        self.nms_threshold = float(nms.nms_threshold)
        if self.nms_threshold < 0:
            raise self.config_error(f"nms_threshold must be >= 0, got {self.nms_threshold:g}")
        self.eta = float(nms.eta)
        if not 0 < self.eta <= 1:
            raise self.config_error(f"nms_param.eta must be in (0, 1], got {self.eta:g}")
        self.top_k = int(nms.top_k) if nms.HasField("top_k") else -1
        self.code_type = _CODE_TYPES.get(p.code_type)
        if self.code_type is None:
            raise self.config_error(f"unknown code_type {p.code_type}")
        self.variance_in_target = p.variance_encoded_in_target
        self.keep_top_k = int(p.keep_top_k)
        self.confidence_threshold = (float(p.confidence_threshold)
                                     if p.HasField("confidence_threshold") else None)
        self.clip = p.clip

    def reshape(self, bottoms, tops):
        loc, conf, prior = (b.shape for b in bottoms)
        self.require(len(prior) == 3 and prior[2] % 4 == 0 and prior[1] in (1, 2),
                     "bottom 2 (the priors) must be (1, 2, num_priors * 4), as PriorBox makes it")
        self.require(prior[1] == 2 or self.variance_in_target,
                     "bottom 2 (the priors) has no variances (channel 1); they are needed "
                     "unless variance_encoded_in_target")
        self.num_priors = prior[2] // 4
        self.require(len(loc) >= 1 and len(conf) >= 1 and loc[0] == conf[0],
                     "bottoms 0 (loc) and 1 (conf) must have one row per image, the same N")
        per_loc, per_conf = math.prod(loc[1:]), math.prod(conf[1:])
        n_p = self.num_priors
        self.require(
            per_loc == n_p * self.num_loc_classes * 4,
            f"bottom 0 (loc) holds {per_loc} values per image but {n_p} priors (bottom 2) "
            f"x {self.num_loc_classes} location class(es) x 4 need "
            f"{n_p * self.num_loc_classes * 4}: the bottoms disagree on the number of priors")
        self.require(
            per_conf == n_p * self.num_classes,
            f"bottom 1 (conf) holds {per_conf} values per image but {n_p} priors (bottom 2) "
            f"x {self.num_classes} classes need {n_p * self.num_classes}: the bottoms "
            "disagree on the number of priors")
        tops[0].reshape((1, 1, 1, 7))

    def forward(self, bottoms, tops):
        rows = self.detect(bottoms[0].data, bottoms[1].data, bottoms[2].data)
        tops[0].reshape((1, 1, len(rows), 7))
        tops[0].data[...] = rows.reshape(1, 1, -1, 7)

    def detect(self, loc, conf, prior) -> np.ndarray:
        """(D, 7) float32 rows for a batch (the fork's empty convention included)."""
        from netdef.kernels.detection import nms_keep

        num, n_p = loc.shape[0], self.num_priors
        prior = prior.reshape(prior.shape[1], n_p, 4)
        priors = np.ascontiguousarray(prior[0], dtype=np.float32)
        variances = None if self.variance_in_target else np.ascontiguousarray(prior[1])
        locs = loc.reshape(num, n_p, self.num_loc_classes, 4).transpose(0, 2, 1, 3)
        confs = conf.reshape(num, n_p, self.num_classes)
        out = []
        for i in range(num):
            boxes = decode_boxes(locs[i], priors, variances, self.code_type)  # (L, P, 4)
            if self.clip:
                np.clip(boxes, 0.0, 1.0, out=boxes)
            scores = np.ascontiguousarray(confs[i].T)      # (C, P)
            kept: dict[int, np.ndarray] = {}
            for c in range(self.num_classes):
                if c == self.background:
                    continue
                s = scores[c]
                cand = (np.arange(n_p) if self.confidence_threshold is None
                        else np.flatnonzero(s > np.float32(self.confidence_threshold)))
                order = _best_first(cand, s[cand], self.top_k)
                label_boxes = boxes[0 if self.share_location else c]
                keep = np.empty(len(order), np.int64)
                count = nms_keep(label_boxes, order.astype(np.int64), self.nms_threshold,
                                 self.eta, keep)
                kept[c] = keep[:count]
            total = sum(len(k) for k in kept.values())
            if -1 < self.keep_top_k < total:
                labels = np.concatenate([np.full(len(k), c) for c, k in kept.items()])
                idx = np.concatenate(list(kept.values()))
                best = np.argsort(-scores[labels, idx], kind="stable")[:self.keep_top_k]
                kept = {c: idx[best][labels[best] == c] for c in kept}
            for c, idx in kept.items():
                if len(idx):
                    b = boxes[0 if self.share_location else c][idx]
                    rows = np.empty((len(idx), 7), np.float32)
                    rows[:, 0], rows[:, 1], rows[:, 2] = i, c, scores[c][idx]
                    rows[:, 3:] = b
                    out.append(rows)
        if not out:
            empty = np.full((num, 7), -1.0, np.float32)
            empty[:, 0] = np.arange(num)
            return empty
        return np.concatenate(out)

    def backward(self, tops, propagate_down, bottoms):
        _no_gradient(self, propagate_down)
