"""Loss layers and Accuracy: shapes, hand-computed values, ignore_label and
every normalization mode, label checks."""
from __future__ import annotations

import math

import numpy as np
import pytest
from layer_harness import infer_shapes, make_layer, run_layer

from netdef.errors import GraphError, InputError, ShapeError
from netdef.frontend.schema import pb

LN2 = math.log(2.0)


def loss_layer(type_, params="", bottoms=("x", "label"), tops=("loss",), name="loss"):
    text = " ".join(f'bottom: "{b}"' for b in bottoms) + " " + " ".join(f'top: "{t}"' for t in tops)
    return make_layer(f'layer {{ name: "{name}" type: "{type_}" {text} {params} }}')


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def softmax_ref(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---- SoftmaxWithLoss ------------------------------------------------------------------
# logits rows [0, 0] (p = 1/2, 1/2) and [ln 3, 0] (p = 3/4, 1/4); labels 0 and 1:
# -ln(1/2) - ln(1/4) = 3 ln 2 over 2 valid labels.
LOGITS = np.array([[0.0, 0.0], [math.log(3.0), 0.0]], np.float32)
LABELS = np.array([0.0, 1.0], np.float32)


@pytest.mark.parametrize("loss_param,expected", [
    ("", 1.5 * LN2),                                         # VALID is the default
    ("loss_param { normalization: VALID }", 1.5 * LN2),
    ("loss_param { normalization: FULL }", 1.5 * LN2),
    ("loss_param { normalization: BATCH_SIZE }", 1.5 * LN2),
    ("loss_param { normalization: NONE }", 3 * LN2),
    ("loss_param { ignore_label: 1 }", LN2),                 # VALID: 1 label left
    ("loss_param { ignore_label: 1 normalization: FULL }", LN2 / 2),
    ("loss_param { ignore_label: 1 normalization: BATCH_SIZE }", LN2 / 2),
    ("loss_param { ignore_label: 1 normalization: NONE }", LN2),
    ("loss_param { ignore_label: 1 normalize: true }", LN2),          # legacy -> VALID
    ("loss_param { ignore_label: 1 normalize: false }", LN2 / 2),     # legacy -> BATCH_SIZE
    ("loss_param { ignore_label: 1 normalize: false normalization: VALID }", LN2),
    ("loss_param { ignore_label: 0 }", 2 * LN2),
])
def test_softmax_loss_hand_computed(loss_param, expected):
    lay = loss_layer("SoftmaxWithLoss", loss_param)
    assert infer_shapes(lay, [(2, 2), (2,)]) == [()]
    assert lay.is_loss and lay.kind == "loss"
    (y,) = run_layer(lay, [LOGITS, LABELS])
    assert y.shape == () and y.dtype == np.float32
    assert float(y) == pytest.approx(expected, rel=1e-6)
    assert lay.loss == pytest.approx(expected, rel=1e-6)


def test_softmax_loss_all_ignored_is_zero():
    lay = loss_layer("SoftmaxWithLoss", "loss_param { ignore_label: 3 }")
    (y,) = run_layer(lay, [LOGITS, np.array([3, 3], np.float32)])
    assert float(y) == 0.0


def softmax_loss_ref(x, labels, axis, ignore=None):
    prob = softmax_ref(x.astype(np.float64), axis)
    moved = np.moveaxis(prob, axis, -1).reshape(-1, x.shape[axis])
    total, count = 0.0, 0
    for row, label in zip(moved, labels.reshape(-1), strict=True):
        if ignore is not None and int(label) == ignore:
            continue
        total -= math.log(max(row[int(label)], np.finfo(np.float32).tiny))
        count += 1
    return total, count, prob


@pytest.mark.parametrize("axis,shape", [(1, (2, 4, 3, 5)), (2, (2, 3, 4)), (-1, (3, 2, 6))])
def test_softmax_loss_spatial_and_axis(axis, shape):
    x = rand(*shape) * 3
    label_shape = tuple(d for i, d in enumerate(shape) if i != axis % len(shape))
    classes = shape[axis]
    labels = np.random.default_rng(1).integers(0, classes, label_shape).astype(np.float32)
    labels.reshape(-1)[::4] = 255
    lay = loss_layer("SoftmaxWithLoss", f"softmax_param {{ axis: {axis} }} "
                                        "loss_param { ignore_label: 255 }", tops=("loss", "prob"))
    assert infer_shapes(lay, [shape, label_shape]) == [(), shape]
    loss, prob = run_layer(lay, [x, labels])
    total, count, ref_prob = softmax_loss_ref(x, labels, axis % len(shape), ignore=255)
    assert float(loss) == pytest.approx(total / count, rel=1e-5)
    np.testing.assert_allclose(prob, ref_prob, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(lay.prob, ref_prob, rtol=1e-5, atol=1e-7)   # kept for backward


def test_softmax_loss_without_top_keeps_the_value():
    lay = loss_layer("SoftmaxWithLoss", tops=())
    assert infer_shapes(lay, [(2, 2), (2,)], top_count=0) == []
    assert run_layer(lay, [LOGITS, LABELS], top_count=0) == []
    assert lay.loss == pytest.approx(1.5 * LN2, rel=1e-6)


def test_softmax_loss_label_truncates_like_caffe():
    (y,) = run_layer(loss_layer("SoftmaxWithLoss"), [LOGITS, np.array([0.9, 1.7], np.float32)])
    assert float(y) == pytest.approx(1.5 * LN2, rel=1e-6)


@pytest.mark.parametrize("labels", [[0, 2], [-1, 0]])
def test_softmax_loss_label_out_of_range(labels):
    lay = loss_layer("SoftmaxWithLoss", name="sml")
    with pytest.raises(InputError) as err:
        run_layer(lay, [LOGITS, np.array(labels, np.float32)])
    text = str(err.value)
    assert "layer 'sml' (SoftmaxWithLoss)" in text and "outside [0, 2)" in text
    assert "ignore_label" in text


def test_softmax_loss_shape_errors():
    with pytest.raises(ShapeError) as err:
        infer_shapes(loss_layer("SoftmaxWithLoss", name="sml"), [(2, 3, 4), (2, 5)])
    text = str(err.value)
    assert "10 labels for 8 predictions" in text and "'x' (2, 3, 4), 'label' (2, 5)" in text
    with pytest.raises(ShapeError, match="same first dimension"):
        infer_shapes(loss_layer("SoftmaxWithLoss"), [(2, 3), (3,)])


# ---- Accuracy ------------------------------------------------------------------------
SCORES = np.array([[0.1, 0.5, 0.4],
                   [0.3, 0.3, 0.4],      # label 0 ties class 1: the tie counts against it
                   [0.9, 0.05, 0.05],
                   [0.2, 0.2, 0.6]], np.float32)
TRUTH = np.array([1, 0, 0, 0], np.float32)


@pytest.mark.parametrize("params,expected,per_class", [
    ("", 0.5, [1 / 3, 1.0, 0.0]),
    ("accuracy_param { top_k: 2 }", 0.5, [1 / 3, 1.0, 0.0]),
    ("accuracy_param { top_k: 3 }", 1.0, [1.0, 1.0, 0.0]),
    ("accuracy_param { ignore_label: 0 }", 1.0, [0.0, 1.0, 0.0]),
    ("accuracy_param { ignore_label: 1 }", 1 / 3, [1 / 3, 0.0, 0.0]),
])
def test_accuracy_hand_computed(params, expected, per_class):
    lay = loss_layer("Accuracy", params, tops=("acc", "per_class"))
    assert infer_shapes(lay, [(4, 3), (4,)]) == [(), (3,)]
    assert lay.kind == "loss" and not lay.is_loss
    acc, per = run_layer(lay, [SCORES, TRUTH])
    assert float(acc) == pytest.approx(expected, rel=1e-6)
    np.testing.assert_allclose(per, per_class, rtol=1e-6)


def test_accuracy_spatial_axis_against_loops():
    x = rand(2, 3, 5, 4)            # classes on axis 2
    labels = np.random.default_rng(3).integers(0, 5, (2, 3, 4)).astype(np.float32)
    lay = loss_layer("Accuracy", "accuracy_param { axis: 2 top_k: 2 }", tops=("acc",))
    assert infer_shapes(lay, [x.shape, labels.shape]) == [()]
    (acc,) = run_layer(lay, [x, labels])
    hits = 0
    for n in range(2):
        for c in range(3):
            for w in range(4):
                scores = x[n, c, :, w]
                true = scores[int(labels[n, c, w])]
                hits += (scores >= true).sum() - 1 < 2
    assert float(acc) == pytest.approx(hits / 24)


def test_accuracy_errors():
    with pytest.raises(ShapeError, match=r"top_k \(4\) is larger than the number of classes \(3\)"):
        infer_shapes(loss_layer("Accuracy", "accuracy_param { top_k: 4 }", tops=("a",)),
                     [(4, 3), (4,)])
    with pytest.raises(ShapeError, match="5 labels for 4 predictions"):
        infer_shapes(loss_layer("Accuracy", tops=("a",)), [(4, 3), (5,)])
    with pytest.raises(InputError, match=r"label 3 .* outside \[0, 3\)"):
        run_layer(loss_layer("Accuracy", tops=("a",)), [SCORES, np.array([3, 0, 0, 0], np.float32)])


# ---- EuclideanLoss / SigmoidCrossEntropyLoss --------------------------------------------
def test_euclidean_loss():
    a = np.array([[1, 2], [3, 4]], np.float32)
    b = np.array([[1, 0], [0, 4]], np.float32)
    lay = loss_layer("EuclideanLoss", bottoms=("a", "b"))
    assert infer_shapes(lay, [(2, 2), (2, 2)]) == [()]
    (y,) = run_layer(lay, [a, b])
    assert float(y) == pytest.approx(13 / 2 / 2)
    np.testing.assert_array_equal(lay.diff, a - b)
    lay2 = loss_layer("EuclideanLoss", bottoms=("a", "b"))
    (y2,) = run_layer(lay2, [a.reshape(2, 1, 2), b])          # same count per item
    assert float(y2) == pytest.approx(3.25)
    with pytest.raises(ShapeError, match="same number of values per item"):
        infer_shapes(loss_layer("EuclideanLoss", bottoms=("a", "b")), [(2, 3), (2, 2)])


def sigmoid_ce_ref(x, t):
    x, t = x.astype(np.float64), t.astype(np.float64)
    s = 1 / (1 + np.exp(-x))
    return -(t * np.log(s) + (1 - t) * np.log(1 - s))


@pytest.mark.parametrize("params,divisor", [
    ("", 2),                                            # BATCH_SIZE by default
    ("loss_param { normalization: FULL }", 6),
    ("loss_param { normalization: VALID }", 6),
    ("loss_param { normalization: NONE }", 1),
    ("loss_param { normalize: true }", 6),
])
def test_sigmoid_cross_entropy(params, divisor):
    x = rand(2, 3) * 3
    t = np.random.default_rng(5).uniform(0, 1, (2, 3)).astype(np.float32)
    lay = loss_layer("SigmoidCrossEntropyLoss", params, bottoms=("x", "t"))
    assert infer_shapes(lay, [(2, 3), (2, 3)]) == [()]
    (y,) = run_layer(lay, [x, t])
    assert float(y) == pytest.approx(sigmoid_ce_ref(x, t).sum() / divisor, rel=1e-5)
    np.testing.assert_allclose(lay.sigmoid, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-6)


def test_sigmoid_cross_entropy_is_stable_and_ignores():
    x = np.array([[100.0, -100.0, 0.0, 5.0]], np.float32)
    t = np.array([[0.0, 1.0, -1.0, 1.0]], np.float32)
    lay = loss_layer("SigmoidCrossEntropyLoss", "loss_param { ignore_label: -1 "
                                                "normalization: VALID }", bottoms=("x", "t"))
    (y,) = run_layer(lay, [x, t])
    expected = (100 + 100 + math.log1p(math.exp(-5))) / 3
    assert np.isfinite(y) and float(y) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ShapeError, match="same count"):
        infer_shapes(loss_layer("SigmoidCrossEntropyLoss", bottoms=("x", "t")), [(2, 3), (2, 2)])


# ---- ContrastiveLoss / HingeLoss / MultinomialLogisticLoss --------------------------------
FEAT_A = np.array([[0, 0], [0, 0], [1, 1]], np.float32)
FEAT_B = np.array([[3, 4], [0.6, 0], [0, 0]], np.float32)
SIMILAR = np.array([0, 0, 1], np.float32)


@pytest.mark.parametrize("params,expected", [
    ("", (0 + 0.16 + 2) / 3 / 2),
    ("contrastive_loss_param { legacy_version: true }", (0 + 0.64 + 2) / 3 / 2),
    ("contrastive_loss_param { margin: 6 }", (1 + 5.4 ** 2 + 2) / 3 / 2),
])
def test_contrastive_loss(params, expected):
    lay = loss_layer("ContrastiveLoss", params, bottoms=("a", "b", "sim"))
    assert infer_shapes(lay, [(3, 2), (3, 2), (3,)]) == [()]
    (y,) = run_layer(lay, [FEAT_A, FEAT_B, SIMILAR])
    assert float(y) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(lay.dist_sq, [25, 0.36, 2], rtol=1e-6)


def test_contrastive_loss_shapes():
    lay = loss_layer("ContrastiveLoss", bottoms=("a", "b", "sim"))
    assert infer_shapes(lay, [(3, 2, 1, 1), (3, 2, 1, 1), (3, 1, 1, 1)]) == [()]
    (y,) = run_layer(lay, [FEAT_A.reshape(3, 2, 1, 1), FEAT_B.reshape(3, 2, 1, 1),
                           SIMILAR.reshape(3, 1, 1, 1)])
    assert float(y) == pytest.approx(2.16 / 6, rel=1e-5)
    bad = loss_layer("ContrastiveLoss", bottoms=("a", "b", "sim"), name="cl")
    with pytest.raises(ShapeError, match=r"both have shape \(N, C\)") as err:
        infer_shapes(bad, [(3, 2, 2), (3, 2, 2), (3,)])
    assert "'a' (3, 2, 2)" in str(err.value)
    with pytest.raises(ShapeError, match="similarity bottom"):
        infer_shapes(loss_layer("ContrastiveLoss", bottoms=("a", "b", "s")),
                     [(3, 2), (3, 2), (3, 2)])


@pytest.mark.parametrize("norm,expected", [("L1", 3.5), ("L2", 7.19)])
def test_hinge_loss(norm, expected):
    scores = np.array([[1, -1, 0.5], [0.2, 0.3, -2]], np.float32)
    labels = np.array([0, 2], np.float32)
    lay = loss_layer("HingeLoss", f"hinge_loss_param {{ norm: {norm} }}")
    assert infer_shapes(lay, [(2, 3), (2,)]) == [()]
    (y,) = run_layer(lay, [scores, labels])
    assert float(y) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(InputError, match=r"outside \[0, 3\)"):
        run_layer(lay, [scores, np.array([0, 3], np.float32)])


def test_multinomial_logistic_loss():
    prob = np.array([[0.2, 0.8], [0.5, 0.5], [1e-30, 1.0]], np.float32)
    lay = loss_layer("MultinomialLogisticLoss")
    assert infer_shapes(lay, [(3, 2), (3, 1, 1, 1)]) == [()]
    (y,) = run_layer(lay, [prob, np.array([1, 0, 0], np.float32).reshape(3, 1, 1, 1)])
    expected = -(math.log(0.8) + math.log(0.5) + math.log(1e-20)) / 3
    assert float(y) == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ShapeError, match=r"shape \(N,\) or \(N, 1, 1, 1\)"):
        infer_shapes(loss_layer("MultinomialLogisticLoss"), [(3, 2), (3, 2)])


# ---- InfogainLoss --------------------------------------------------------------------
def infogain_ref(x, labels, h, axis=1):
    prob = softmax_ref(x.astype(np.float64), axis)
    moved = np.moveaxis(prob, axis, -1).reshape(-1, x.shape[axis])
    total = 0.0
    for row, label in zip(moved, labels.reshape(-1), strict=True):
        for k in range(len(row)):
            total -= h[int(label), k] * math.log(max(row[k], 1e-20))
    return total


def test_infogain_identity_matches_softmax_loss():
    x = rand(4, 3)
    labels = np.array([0, 2, 1, 1], np.float32)
    lay = loss_layer("InfogainLoss", bottoms=("x", "label", "H"))
    assert infer_shapes(lay, [(4, 3), (4,), (3, 3)]) == [()]
    (y,) = run_layer(lay, [x, labels, np.eye(3, dtype=np.float32)])
    (ref,) = run_layer(loss_layer("SoftmaxWithLoss"), [x, labels])
    assert float(y) == pytest.approx(float(ref), rel=1e-6)


def test_infogain_general_matrix_spatial_and_prob_top():
    x = rand(2, 3, 4)
    labels = np.random.default_rng(2).integers(0, 3, (2, 4)).astype(np.float32)
    h = np.random.default_rng(3).uniform(0, 1, (3, 3)).astype(np.float32)
    lay = loss_layer("InfogainLoss", "loss_param { normalization: NONE }",
                     bottoms=("x", "label", "H"), tops=("loss", "prob"))
    assert infer_shapes(lay, [(2, 3, 4), (2, 4), (1, 1, 3, 3)]) == [(), (2, 3, 4)]
    loss, prob = run_layer(lay, [x, labels, h.reshape(1, 1, 3, 3)])
    assert float(loss) == pytest.approx(infogain_ref(x, labels, h), rel=1e-5)
    np.testing.assert_allclose(prob, softmax_ref(x.astype(np.float64)), rtol=1e-5)


def test_infogain_matrix_from_source_file(tmp_path, monkeypatch):
    h = np.array([[1, 0.5], [0.25, 2]], np.float32)
    proto = pb.BlobProto()
    proto.shape.dim.extend([1, 1, 2, 2])
    proto.data.extend(h.reshape(-1).tolist())
    (tmp_path / "H.binaryproto").write_bytes(proto.SerializeToString())
    monkeypatch.chdir(tmp_path)
    lay = loss_layer("InfogainLoss", "infogain_loss_param { source: 'H.binaryproto' }")
    x, labels = rand(3, 2), np.array([0, 1, 1], np.float32)
    (y,) = run_layer(lay, [x, labels])
    assert float(y) == pytest.approx(infogain_ref(x, labels, h) / 3, rel=1e-5)
    with pytest.raises(ShapeError, match="the infogain matrix has 4 values; 3 classes need 3x3"):
        infer_shapes(loss_layer("InfogainLoss", "infogain_loss_param { source: 'H.binaryproto' }"),
                     [(3, 3), (3,)])


def test_infogain_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = loss_layer("InfogainLoss", "infogain_loss_param { source: 'nope.binaryproto' }",
                         name="ig")
    assert infer_shapes(missing, [(3, 2), (3,)]) == [()]       # shapes need no matrix
    with pytest.raises(InputError, match="cannot read infogain matrix 'nope.binaryproto'"):
        run_layer(missing, [rand(3, 2), np.zeros(3, np.float32)])
    with pytest.raises(GraphError, match="source must name the H matrix"):
        infer_shapes(loss_layer("InfogainLoss"), [(3, 2), (3,)])
    with pytest.raises(GraphError, match="normalize is not accepted"):
        infer_shapes(loss_layer("InfogainLoss", "loss_param { normalize: true }",
                                bottoms=("x", "l", "H")), [(3, 2), (3,), (2, 2)])
    with pytest.raises(ShapeError, match="has 9 values; 2 classes need 2x2"):
        infer_shapes(loss_layer("InfogainLoss", bottoms=("x", "l", "H")),
                     [(3, 2), (3,), (3, 3)])


def test_loss_arity():
    with pytest.raises(GraphError, match=r"takes exactly 3 bottom blobs, got 2"):
        infer_shapes(loss_layer("ContrastiveLoss", bottoms=("a", "b")), [(3, 2), (3, 2)])
    with pytest.raises(GraphError, match=r"takes 0 to 1 top blobs, got 2"):
        infer_shapes(loss_layer("EuclideanLoss", bottoms=("a", "b"), tops=("l", "m")),
                     [(3, 2), (3, 2)])
