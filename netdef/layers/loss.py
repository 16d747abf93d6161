"""Loss layers, and Accuracy.

A loss layer's top is a scalar (shape (), Caffe's 0-axis blob) weighted by
``loss_weight`` (1 by default, ``is_loss``). Caffe gives a loss layer
written without a top an anonymous one (AutoTopBlobs); netdef accepts zero
tops and always keeps the last value in ``self.loss``.

Sums are accumulated in float64 and stored as float32. Labels are read as
Caffe reads them, ``static_cast<int>`` (truncation towards zero); a label
outside [0, classes) that is not ``ignore_label`` is an InputError (Caffe
only checks it in debug builds). Whatever backward needs (softmax
probabilities, differences, sigmoid outputs, label masks) is kept on the
layer by forward.

Backward follows Caffe: the gradient of the normalised loss, times
``top_weight`` (the loss top's diff: its loss weight in a net, dL/dloss in
the gradient checker). Labels (and InfogainLoss's H matrix) get no
gradient: a ``propagate_down`` asking for one is a GraphError, and
``no_force_backward`` lists those bottoms for ``force_backward``. A second
top (the probabilities) passes no gradient back, as in Caffe.
"""
from __future__ import annotations

import math

import numpy as np

from netdef.errors import GraphError, InputError
from netdef.layers.base import Layer, register
from netdef.layers.softmax import softmax_forward
from netdef.frontend.schema import pb

FLT_MIN = float(np.finfo(np.float32).tiny)   # SoftmaxWithLoss: log(max(p, FLT_MIN))
LOG_THRESHOLD = 1e-20                        # MultinomialLogistic/Infogain: log(max(p, 1e-20))
_MODE = pb.LossParameter


def _split(shape, axis: int) -> tuple[int, int, int]:
    """(outer, shape[axis], inner) around ``axis``."""
    return math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])


def _scratch(arr, shape) -> np.ndarray:
    """``arr`` when it already has ``shape``, else a new float32 array (the
    softmax probabilities are kept between forward and backward)."""
    return arr if arr is not None and arr.shape == shape else np.empty(shape, np.float32)


def _ones_after_first(shape) -> bool:
    """Caffe's legacy (N, 1, 1, 1) check: channels, height and width are 1."""
    return len(shape) <= 4 and all(d == 1 for d in shape[1:])


class _LabelReader(Layer):
    # Bottoms Caffe never differentiates (labels, targets, H): backward
    # refuses a gradient into them and force_backward leaves them alone
    # (Caffe's AllowForceBackward).
    no_force_backward: tuple[int, ...] = (1,)

    def refuse_gradients(self, propagate_down) -> None:
        """A GraphError when ``propagate_down`` asks for a bottom of
        ``no_force_backward`` (False there is accepted silently)."""
        for i in self.no_force_backward:
            if i < len(propagate_down) and propagate_down[i]:
                name = self._bottom_names[i] if i < len(self._bottom_names) else f"bottom{i}"
                raise GraphError(
                    f"layer '{self.name}' ({self.type}) cannot backpropagate to bottom {i} "
                    f"'{name}' ({self.gradient_free_text(i)}); bottoms: {self.bottoms_text()}",
                    where=self.where,
                    hint=f"write propagate_down: false for bottom {i} (one propagate_down "
                         "per bottom, in order)")

    def gradient_free_text(self, i: int) -> str:
        return "the labels"

    def read_labels(self, blob, shape, n_classes: int, ignore=None):
        """Integer labels of ``blob`` reshaped to ``shape`` and the mask of those
        not equal to ``ignore``; raises InputError for an out-of-range label."""
        labels = blob.data.reshape(shape).astype(np.int64)
        valid = labels != ignore if ignore is not None else np.ones(shape, bool)
        bad = np.flatnonzero(valid & ((labels < 0) | (labels >= n_classes)))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                f"layer '{self.name}' ({self.type}): label {labels.flat[i]} (element {i} of "
                f"'{blob.name}') is outside [0, {n_classes})", where=self.where,
                hint="set loss_param.ignore_label to skip such labels" if ignore is None else None)
        return labels, valid


class LossLayer(_LabelReader):
    """Base: bottoms (predictions, targets, ...) with equal first dimensions;
    top 0 is the scalar loss. Reads loss_param (ignore_label, normalization,
    legacy normalize)."""

    num_bottoms = 2
    num_tops = (0, 1)
    kind = "loss"
    is_loss = True
    # Mode when loss_param sets neither normalization nor normalize
    # (None: the schema's default, VALID).
    default_normalization: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.loss: float | None = None

    def setup(self, bottoms, tops):
        lp = self.param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            self.normalization = lp.normalization
        elif lp.HasField("normalize"):
            self.normalization = _MODE.VALID if lp.normalize else _MODE.BATCH_SIZE
        elif self.default_normalization is not None:
            self.normalization = self.default_normalization
        else:
            self.normalization = lp.normalization

    def reshape(self, bottoms, tops):
        a, b = bottoms[0].shape, bottoms[1].shape
        self.require(len(a) >= 1 and len(b) >= 1 and a[0] == b[0],
                     "the data and the label must have the same first dimension")
        if tops:
            tops[0].reshape(())

    def normalizer(self, valid_count: int, outer: int, inner: int) -> float:
        """Caffe's divisor for the summed loss, never below 1 (a batch whose
        labels are all ignored gives 0, not NaN)."""
        mode = self.normalization
        if mode == _MODE.FULL:
            n = outer * inner
        elif mode == _MODE.VALID:
            n = valid_count
        elif mode == _MODE.BATCH_SIZE:
            n = outer
        else:
            n = 1
        return float(max(1, n))

    def top_weight(self, tops) -> float:
        """The factor dL/d(this loss) for backward. As in Caffe, the net seeds
        a loss top's diff with its loss weight (the gradient checker seeds
        it with dL/dtop), so backward scales by ``tops[0].diff``; a loss
        written without a top uses its ``loss_weight`` (default 1)."""
        if tops:
            return float(tops[0].diff.reshape(-1)[0])
        return float(self.param.loss_weight[0]) if len(self.param.loss_weight) else 1.0

    def set_loss(self, tops, value: float) -> None:
        self.loss = float(value)
        if tops:
            tops[0].data[...] = value

    def loss_scale(self, tops, normalizer: float) -> float:
        """The factor every backward applies: top_weight / normalizer."""
        return self.top_weight(tops) / normalizer


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(LossLayer):
    """loss = -sum log(max(softmax(x)[label], FLT_MIN)) / normalizer, softmax
    along softmax_param.axis (default 1); labels have one entry per position
    of the other axes. Normalizer: loss_param.normalization (default VALID),
    or the legacy ``normalize`` (true: VALID, false: BATCH_SIZE) when
    normalization is not written. Gradient: (softmax(x) - onehot(label)) /
    normalizer, 0 at ignored positions. Optional top 1: the probabilities
    (kept in ``prob``; no gradient flows back from it)."""

    num_tops = (0, 2)

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        shape = bottoms[0].shape
        self.axis = self.canonical_axis(self.param.softmax_param.axis, len(shape))
        self.outer, self.classes, self.inner = _split(shape, self.axis)
        self.require(self.outer * self.inner == bottoms[1].count,
                     f"{bottoms[1].count} labels for {self.outer * self.inner} predictions; "
                     f"with softmax axis {self.axis} the label count must be the product of the "
                     "other axes")
        if len(tops) > 1:
            tops[1].reshape(shape)

    def forward(self, bottoms, tops):
        x = bottoms[0].data
        self.prob = _scratch(getattr(self, "prob", None), x.shape)
        softmax_forward(x, self.prob, self.axis)
        labels, valid = self.read_labels(bottoms[1], (self.outer, self.inner), self.classes,
                                         self.ignore_label)
        prob3 = self.prob.reshape(self.outer, self.classes, self.inner)
        self.labels = np.where(valid, labels, 0)
        self.valid = valid
        picked = np.take_along_axis(prob3, self.labels[:, None, :], axis=1)[:, 0]
        loss = -np.log(np.maximum(picked[valid].astype(np.float64), FLT_MIN)).sum()
        self.valid_count = int(valid.sum())
        self.set_loss(tops, loss / self.normalizer(self.valid_count, self.outer, self.inner))
        if len(tops) > 1:
            tops[1].data[...] = self.prob

    def backward(self, tops, propagate_down, bottoms):
        # d loss / d x = (softmax(x) - onehot(label)) * weight / normalizer,
        # 0 at ignored positions (the FLT_MIN clamp is not differentiated).
        self.refuse_gradients(propagate_down)
        if not propagate_down[0]:
            return
        scale = self.loss_scale(tops, self.normalizer(self.valid_count, self.outer, self.inner))
        grad = self.prob.reshape(self.outer, self.classes, self.inner) * np.float32(scale)
        outer_idx, inner_idx = np.nonzero(self.valid)
        grad[outer_idx, self.labels[outer_idx, inner_idx], inner_idx] -= np.float32(scale)
        if self.ignore_label is not None:
            grad *= self.valid[:, None, :]
        bottoms[0].diff[...] = grad.reshape(bottoms[0].shape)


@register("Accuracy")
class Accuracy(_LabelReader):
    """Fraction of (non-ignored) labels among the ``top_k`` highest scores along
    accuracy_param.axis (default 1). A tie with the true class's score counts
    against it, as in Caffe. Optional top 1: accuracy per class, shape (C,),
    0 for classes without labels. Not a loss (no loss weight) and no
    gradient: backward refuses any propagate_down."""

    num_bottoms = 2
    num_tops = (1, 2)
    kind = "loss"

    def setup(self, bottoms, tops):
        p = self.param.accuracy_param
        self.top_k = int(p.top_k)
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.axis = self.canonical_axis(self.param.accuracy_param.axis, len(shape))
        self.outer, self.classes, self.inner = _split(shape, self.axis)
        self.require(self.top_k <= self.classes,
                     f"top_k ({self.top_k}) is larger than the number of classes "
                     f"({self.classes})")
        self.require(self.outer * self.inner == bottoms[1].count,
                     f"{bottoms[1].count} labels for {self.outer * self.inner} predictions; "
                     f"with axis {self.axis} the label count must be the product of the other "
                     "axes")
        tops[0].reshape(())
        if len(tops) > 1:
            tops[1].reshape((self.classes,))

    def forward(self, bottoms, tops):
        x3 = bottoms[0].data.reshape(self.outer, self.classes, self.inner)
        labels, valid = self.read_labels(bottoms[1], (self.outer, self.inner), self.classes,
                                         self.ignore_label)
        safe = np.where(valid, labels, 0)
        true_score = np.take_along_axis(x3, safe[:, None, :], axis=1)
        # classes scoring at least the true class, the true class excluded
        better = (x3 >= true_score).sum(axis=1) - 1
        hit = valid & (better < self.top_k)
        total = int(valid.sum())
        tops[0].data[...] = hit.sum() / total if total else 0.0
        if len(tops) > 1:
            seen = np.bincount(labels[valid], minlength=self.classes)
            hits = np.bincount(labels[hit], minlength=self.classes)
            tops[1].data[...] = np.where(seen > 0, hits / np.maximum(seen, 1), 0.0)

    # A metric: neither the scores nor the labels get a gradient (Caffe's
    # NOT_IMPLEMENTED); force_backward leaves both alone.
    no_force_backward = (0, 1)

    def gradient_free_text(self, i):
        return "Accuracy is a metric and has no gradient"

    def backward(self, tops, propagate_down, bottoms):
        self.refuse_gradients(propagate_down)


@register("EuclideanLoss")
class EuclideanLoss(LossLayer):
    """loss = sum((a - b)^2) / N / 2 over two bottoms with the same count per item.
    Keeps ``diff`` = a - b; gradients (a - b) / N into a and -(a - b) / N
    into b (both bottoms are differentiable)."""

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        a, b = bottoms[0].shape, bottoms[1].shape
        self.require(math.prod(a[1:]) == math.prod(b[1:]),
                     "both bottoms must have the same number of values per item")

    def forward(self, bottoms, tops):
        self.diff = bottoms[0].data - bottoms[1].data.reshape(bottoms[0].shape)
        d = self.diff.reshape(-1).astype(np.float64)
        self.set_loss(tops, d @ d / bottoms[0].shape[0] / 2.0)

    # Both bottoms are differentiable (a regression target may be learnt).
    no_force_backward = ()

    def backward(self, tops, propagate_down, bottoms):
        # d loss / d a = (a - b) / N, d loss / d b = -(a - b) / N
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = sign * self.loss_scale(tops, bottoms[i].shape[0])
                bottoms[i].diff[...] = (self.diff * np.float32(alpha)).reshape(bottoms[i].shape)


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(LossLayer):
    """loss = -sum(t log s(x) + (1 - t) log(1 - s(x))) / normalizer, s the sigmoid,
    computed overflow-free as x (t - [x >= 0]) - log(1 + exp(x - 2 x [x >= 0])).

    Targets equal to ignore_label (compared as ints) are skipped. The
    normalization defaults to BATCH_SIZE (Caffe keeps this layer's
    historical divide-by-N), not VALID. Gradient: (s(x) - t) / normalizer,
    0 at ignored targets. Keeps ``sigmoid`` = s(x) for backward.
    """

    default_normalization = _MODE.BATCH_SIZE

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.require(bottoms[0].count == bottoms[1].count,
                     "the predictions and the targets must have the same count")

    def forward(self, bottoms, tops):
        x = bottoms[0].data.reshape(-1).astype(np.float64)
        t = bottoms[1].data.reshape(-1).astype(np.float64)
        pos = (x >= 0).astype(np.float64)
        terms = x * (t - pos) - np.log1p(np.exp(x - 2.0 * x * pos))
        valid = np.ones(x.size, bool)
        if self.ignore_label is not None:
            valid = t.astype(np.int64) != self.ignore_label
        self.valid = valid
        self.sigmoid = (1.0 / (1.0 + np.exp(-x))).astype(np.float32).reshape(bottoms[0].shape)
        outer = bottoms[0].shape[0]
        self.norm = self.normalizer(int(valid.sum()), outer, x.size // max(outer, 1))
        self.set_loss(tops, -terms[valid].sum() / self.norm)

    def backward(self, tops, propagate_down, bottoms):
        # d loss / d x = (sigmoid(x) - t) / normalizer, 0 where t is ignored
        self.refuse_gradients(propagate_down)
        if not propagate_down[0]:
            return
        grad = self.sigmoid.reshape(-1) - bottoms[1].data.reshape(-1)
        if self.ignore_label is not None:
            grad[~self.valid] = 0.0
        grad *= np.float32(self.loss_scale(tops, self.norm))
        bottoms[0].diff[...] = grad.reshape(bottoms[0].shape)

    def gradient_free_text(self, i):
        return "the targets"


@register("ContrastiveLoss")
class ContrastiveLoss(LossLayer):
    """Siamese loss over features a, b (N, C) and similarity y (N,):
    d^2 = |a - b|^2; loss = sum(y d^2 + (1 - y) max(margin - d, 0)^2) / N / 2,
    or with legacy_version max(margin - d^2, 0) for dissimilar pairs
    (y is read as an int: nonzero means similar). Both features get
    gradients, of opposite signs; y gets none. Keeps ``diff`` = a - b and
    ``dist_sq`` for backward."""

    num_bottoms = 3

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        a, b, y = (bl.shape for bl in bottoms)
        # Caffe's legacy accessors: a missing axis counts as 1
        self.require(a[1:2] == b[1:2] and _ones_after_first((1, *a[2:]))
                     and _ones_after_first((1, *b[2:])),
                     "the two features must both have shape (N, C) (or (N, C, 1, 1))")
        self.require(len(y) >= 1 and y[0] == a[0] and _ones_after_first(y),
                     "the similarity bottom must have shape (N,) (or (N, 1, 1, 1))")

    def forward(self, bottoms, tops):
        p = self.param.contrastive_loss_param
        n = bottoms[0].shape[0]
        self.diff = (bottoms[0].data - bottoms[1].data).reshape(n, -1)
        d = self.diff.astype(np.float64)
        self.dist_sq = (d * d).sum(axis=1)
        similar = bottoms[2].data.reshape(n).astype(np.int64) != 0
        self.similar = similar
        if p.legacy_version:
            apart = np.maximum(p.margin - self.dist_sq, 0.0)
        else:
            apart = np.maximum(p.margin - np.sqrt(self.dist_sq), 0.0) ** 2
        loss = np.where(similar, self.dist_sq, apart).sum()
        self.set_loss(tops, loss / n / 2.0)

    no_force_backward = (2,)

    def gradient_free_text(self, i):
        return "the similarity labels"

    def backward(self, tops, propagate_down, bottoms):
        # Per pair, d loss / d a (and minus it for b), over N:
        #   similar:    (a - b)
        #   dissimilar: -(margin - d) / (d + 1e-4) (a - b) while d < margin
        #               (Caffe's 1e-4 keeps d = 0 finite), or with
        #               legacy_version -(a - b) while d^2 < margin.
        self.refuse_gradients(propagate_down)
        p = self.param.contrastive_loss_param
        n = bottoms[0].shape[0]
        if p.legacy_version:
            apart = np.where(p.margin - self.dist_sq > 0.0, -1.0, 0.0)
        else:
            dist = np.sqrt(self.dist_sq)
            gap = p.margin - dist
            apart = np.where(gap > 0.0, -gap / (dist + 1e-4), 0.0)
        per_pair = np.where(self.similar, 1.0, apart)[:, None]
        for i, sign in ((0, 1.0), (1, -1.0)):
            if propagate_down[i]:
                alpha = sign * self.loss_scale(tops, n)
                grad = (alpha * per_pair) * self.diff
                bottoms[i].diff[...] = grad.reshape(bottoms[i].shape)


@register("HingeLoss")
class HingeLoss(LossLayer):
    """One-vs-all hinge loss over scores (N, K) and labels (N,):
    m_ik = max(0, 1 - d_ik x_ik) with d = +1 for the true class, -1 otherwise;
    loss = sum m / N (L1, default) or sum m^2 / N (L2). Gradient -d_ik (L1)
    or -2 m_ik d_ik (L2) over N where m_ik > 0. Keeps ``margins``."""

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.require(bottoms[1].count == bottoms[0].shape[0],
                     "the label bottom must hold one label per item")

    def forward(self, bottoms, tops):
        n = bottoms[0].shape[0]
        scores = bottoms[0].data.reshape(n, -1).astype(np.float64)
        labels, _ = self.read_labels(bottoms[1], (n,), scores.shape[1])
        sign = np.ones_like(scores)
        sign[np.arange(n), labels] = -1.0
        self.sign = sign
        self.margins = np.maximum(0.0, 1.0 + sign * scores)
        if self.param.hinge_loss_param.norm == pb.HingeLossParameter.L2:
            self.set_loss(tops, (self.margins ** 2).sum() / n)
        else:
            self.set_loss(tops, self.margins.sum() / n)

    def backward(self, tops, propagate_down, bottoms):
        # d m_ik / d x_ik = -d_ik where m_ik > 0: L1 gives that sign, L2 2 m times it
        self.refuse_gradients(propagate_down)
        if not propagate_down[0]:
            return
        if self.param.hinge_loss_param.norm == pb.HingeLossParameter.L2:
            grad = 2.0 * self.margins * self.sign
        else:
            grad = np.where(self.margins > 0.0, self.sign, 0.0)
        grad *= self.loss_scale(tops, bottoms[0].shape[0])
        bottoms[0].diff[...] = grad.reshape(bottoms[0].shape)


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(LossLayer):
    """loss = -sum log(max(p[label], 1e-20)) / N over probabilities (N, K) and
    labels (N,) or (N, 1, 1, 1). No ignore_label, no normalization (Caffe's).
    Gradient: -1 / max(p[label], 1e-20) / N at the labelled entry, else 0."""

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        self.require(_ones_after_first(bottoms[1].shape),
                     "the label bottom must have shape (N,) or (N, 1, 1, 1)")

    def forward(self, bottoms, tops):
        n = bottoms[0].shape[0]
        prob = bottoms[0].data.reshape(n, -1)
        labels, _ = self.read_labels(bottoms[1], (n,), prob.shape[1])
        self.labels = labels
        self.picked = np.maximum(prob[np.arange(n), labels].astype(np.float64), LOG_THRESHOLD)
        self.set_loss(tops, -np.log(self.picked).sum() / n)

    def backward(self, tops, propagate_down, bottoms):
        # only the labelled probability moves the loss: -1 / max(p, 1e-20) / N
        self.refuse_gradients(propagate_down)
        if not propagate_down[0]:
            return
        n = bottoms[0].shape[0]
        grad = np.zeros((n, bottoms[0].count // max(n, 1)), np.float32)
        grad[np.arange(n), self.labels] = -self.loss_scale(tops, n) / self.picked
        bottoms[0].diff[...] = grad.reshape(bottoms[0].shape)


@register("InfogainLoss")
class InfogainLoss(LossLayer):
    """loss = -sum_k H[label, k] log(max(softmax(x)_k, 1e-20)) / normalizer,
    softmax along infogain_loss_param.axis (default 1). H (K x K) is bottom 2,
    or read from infogain_loss_param.source (a binaryproto BlobProto). H = I
    gives SoftmaxWithLoss. Normalization as SoftmaxWithLoss's, but the legacy
    ``normalize`` is refused (as Caffe). Gradient: p_k sum_j H[label, j] -
    H[label, k] over the normalizer; H gets none. Optional top 1: the
    probabilities (``prob``)."""

    num_bottoms = (2, 3)
    num_tops = (0, 2)

    def setup(self, bottoms, tops):
        if self.param.loss_param.HasField("normalize"):
            raise self.config_error("loss_param.normalize is not accepted by InfogainLoss",
                                    hint="use loss_param.normalization")
        super().setup(bottoms, tops)
        self.matrix = None
        self.matrix_error = None
        if len(bottoms) < 3:
            source = self.param.infogain_loss_param.source
            if not source:
                raise self.config_error("with two bottoms, infogain_loss_param.source must "
                                        "name the H matrix file")
            try:
                with open(source, "rb") as f:
                    proto = pb.BlobProto.FromString(f.read())
                values = proto.double_data or proto.data
                self.matrix = np.asarray(values, np.float64)
            except Exception as err:   # shapes stay known; forward reports it
                self.matrix_error = f"cannot read infogain matrix '{source}': {err}"

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        shape = bottoms[0].shape
        self.axis = self.canonical_axis(self.param.infogain_loss_param.axis, len(shape))
        self.outer, self.classes, self.inner = _split(shape, self.axis)
        self.require(self.outer * self.inner == bottoms[1].count,
                     f"{bottoms[1].count} labels for {self.outer * self.inner} predictions")
        count = bottoms[2].count if len(bottoms) > 2 else (
            self.matrix.size if self.matrix is not None else None)
        self.require(count is None or count == self.classes ** 2,
                     f"the infogain matrix has {count} values; {self.classes} classes need "
                     f"{self.classes}x{self.classes}")
        if len(tops) > 1:
            tops[1].reshape(shape)

    def forward(self, bottoms, tops):
        if len(bottoms) > 2:
            h = bottoms[2].data.astype(np.float64)
        elif self.matrix is not None:
            h = self.matrix
        else:
            raise InputError(f"layer '{self.name}' (InfogainLoss): {self.matrix_error}",
                             where=self.where)
        h = h.reshape(self.classes, self.classes)
        x = bottoms[0].data
        self.prob = _scratch(getattr(self, "prob", None), x.shape)
        softmax_forward(x, self.prob, self.axis)
        labels, valid = self.read_labels(bottoms[1], (self.outer, self.inner), self.classes,
                                         self.ignore_label)
        logp = np.log(np.maximum(self.prob.reshape(self.outer, self.classes, self.inner)
                                 .astype(np.float64), LOG_THRESHOLD))
        self.h, self.labels, self.valid = h, np.where(valid, labels, 0), valid
        rows = h[self.labels]                               # (outer, inner, K)
        per_pos = np.einsum("oik,oki->oi", rows, logp)
        self.valid_count = int(valid.sum())
        loss = -per_pos[valid].sum()
        self.set_loss(tops, loss / self.normalizer(self.valid_count, self.outer, self.inner))
        if len(tops) > 1:
            tops[1].data[...] = self.prob

    no_force_backward = (1, 2)

    def gradient_free_text(self, i):
        return "the labels" if i == 1 else "the infogain matrix H"

    def backward(self, tops, propagate_down, bottoms):
        # d loss / d x_k = p_k sum_j H[label, j] - H[label, k] (over the
        # normaliser), 0 at ignored positions; the 1e-20 clamp is not
        # differentiated.
        self.refuse_gradients(propagate_down)
        if not propagate_down[0]:
            return
        row_sums = self.h.sum(axis=1)[self.labels]          # (outer, inner)
        prob3 = self.prob.reshape(self.outer, self.classes, self.inner).astype(np.float64)
        grad = prob3 * row_sums[:, None, :] - self.h[self.labels].transpose(0, 2, 1)
        grad *= self.valid[:, None, :]
        grad *= self.loss_scale(tops, self.normalizer(self.valid_count, self.outer, self.inner))
        bottoms[0].diff[...] = grad.reshape(bottoms[0].shape)
