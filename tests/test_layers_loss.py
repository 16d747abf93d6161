"""Loss layers and Accuracy: shapes, hand-computed values, ignore_label and
every normalization mode, label checks; backward against the loop references
of tests/reference.py and against finite differences."""
from __future__ import annotations

import math

import numpy as np
import pytest
from layer_harness import check_gradients, infer_shapes, make_layer, run_layer, wired
from reference import (
    accuracy_reference,
    contrastive_loss_reference,
    euclidean_loss_reference,
    hinge_loss_reference,
    infogain_loss_reference,
    multinomial_logistic_reference,
    sigmoid_cross_entropy_reference,
    softmax_loss_reference,
    softmax_reference,
)

from netdef.errors import GraphError, InputError, ShapeError
from netdef.frontend.schema import pb

LN2 = math.log(2.0)


def loss_layer(type_, params="", bottoms=("x", "label"), tops=("loss",), name="loss"):
    text = " ".join(f'bottom: "{b}"' for b in bottoms) + " " + " ".join(f'top: "{t}"' for t in tops)
    return make_layer(f'layer {{ name: "{name}" type: "{type_}" {text} {params} }}')


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


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
    bottoms, tops = wired(lay)
    tops[0].diff[...] = 1.0
    lay.backward(tops, [True, False], bottoms)
    assert (bottoms[0].diff == 0).all()


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
    ref_loss, _, ref_prob = softmax_loss_reference(x, labels, axis % len(shape), ignore=255)
    assert float(loss) == pytest.approx(ref_loss, rel=1e-5)
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


@pytest.mark.parametrize("params,divisor", [
    ("", 2),                                            # BATCH_SIZE by default
    ("loss_param { normalization: FULL }", 6),
    ("loss_param { normalization: VALID }", 6),
    ("loss_param { normalization: NONE }", 1),
    ("loss_param { normalize: true }", 6),
    ("loss_param { normalize: false }", 2),
])
def test_sigmoid_cross_entropy(params, divisor):
    x = rand(2, 3) * 3
    t = np.random.default_rng(5).uniform(0, 1, (2, 3)).astype(np.float32)
    lay = loss_layer("SigmoidCrossEntropyLoss", params, bottoms=("x", "t"))
    assert infer_shapes(lay, [(2, 3), (2, 3)]) == [()]
    (y,) = run_layer(lay, [x, t])
    total, _ = sigmoid_cross_entropy_reference(x, t, normalization="NONE")
    assert float(y) == pytest.approx(total / divisor, rel=1e-5)
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
    return infogain_loss_reference(x, labels, h, axis, normalization="NONE")[0]


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
    np.testing.assert_allclose(prob, softmax_reference(x), rtol=1e-5)


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


# =====================================================================================
# Backward: every loss against its loop reference (with a loss weight), then against
# finite differences (GradientChecker: L = loss^2 / 2, so the top diff is the loss).
# =====================================================================================
MODES = ["VALID", "FULL", "BATCH_SIZE", "NONE"]


def objective_for(mode):
    """check_gradients' objective: L^2 / 2 (the top diff is then the loss), or,
    for an unnormalised sum (NONE), L itself: with L of order 10 the
    curvature of L^2 / 2 makes the finite-difference error at step 1e-2
    exceed the tolerance."""
    return {"top_index": 0, "top_element": 0} if mode == "NONE" else {"top_index": 0}


def backward(lay, arrays, weight=1.0, propagate=None, top_count=None):
    """Forward, seed the loss top's diff with ``weight`` (as the net does with a
    loss weight), run backward, return (loss, bottom diffs). Diffs start as
    NaN so that a gradient backward should write but does not shows up."""
    (*outs,) = run_layer(lay, arrays, top_count=top_count)
    bottoms, tops = wired(lay)
    for top in tops:
        top.diff[...] = 0.0
    if tops:
        tops[0].diff[...] = weight
    if propagate is None:
        propagate = [True] + [False] * (len(bottoms) - 1)
    for blob in bottoms:
        blob.diff[...] = np.nan
    lay.backward(tops, propagate, bottoms)
    return lay.loss, [b.diff.copy() for b in bottoms]


def loss_param_text(mode=None, ignore=None):
    fields = (f"normalization: {mode} " if mode else "") + (
        f"ignore_label: {ignore}" if ignore is not None else "")
    return f"loss_param {{ {fields} }}" if fields else ""


def class_labels(shape, classes, seed, ignore=None):
    labels = np.random.default_rng(seed).integers(0, classes, shape).astype(np.float32)
    if ignore is not None:
        labels.reshape(-1)[1::3] = ignore
    return labels


# ---- SoftmaxWithLoss -------------------------------------------------------------------
@pytest.mark.parametrize("mode", [None, *MODES])
@pytest.mark.parametrize("ignore", [None, 255])
@pytest.mark.parametrize("weight", [1.0, 2.5])
def test_softmax_loss_backward_reference(mode, ignore, weight):
    x = rand(2, 4, 3) * 2
    labels = class_labels((2, 3), 4, 1, ignore)
    lay = loss_layer("SoftmaxWithLoss", loss_param_text(mode, ignore))
    loss, (dx, dlabel) = backward(lay, [x, labels], weight)
    ref_loss, ref_dx, _ = softmax_loss_reference(x, labels, 1, ignore, mode or "VALID")
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(dx, weight * ref_dx, rtol=1e-5, atol=1e-7)
    assert np.isnan(dlabel).all()                     # propagate_down False: untouched
    if ignore is not None:
        assert (dx[:, :, 1] == 0).all() and (dx[0, :, 0] != 0).all()


@pytest.mark.parametrize("params,mode", [
    ("loss_param { ignore_label: 2 normalize: true }", "VALID"),
    ("loss_param { ignore_label: 2 normalize: false }", "BATCH_SIZE"),
    ("loss_param { ignore_label: 2 normalize: false normalization: FULL }", "FULL"),
])
def test_softmax_loss_backward_legacy_normalize(params, mode):
    x, labels = rand(3, 4, 2), class_labels((3, 2), 4, 2, ignore=2)
    loss, (dx, _) = backward(loss_layer("SoftmaxWithLoss", params), [x, labels])
    ref_loss, ref_dx, _ = softmax_loss_reference(x, labels, 1, 2, mode)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("axis,shape", [(1, (2, 3, 2, 2)), (2, (2, 3, 4)), (-1, (3, 2, 5))])
def test_softmax_loss_backward_axis_and_prob_top(axis, shape):
    x = rand(*shape, seed=3) * 2
    label_shape = tuple(d for i, d in enumerate(shape) if i != axis % len(shape))
    labels = class_labels(label_shape, shape[axis], 4, ignore=-1)
    lay = loss_layer("SoftmaxWithLoss", f"softmax_param {{ axis: {axis} }} "
                     "loss_param { ignore_label: -1 }", tops=("loss", "prob"))
    run_layer(lay, [x, labels])
    _, tops = wired(lay)
    tops[1].diff[...] = 7.0            # Caffe passes nothing back from the probabilities
    bottoms, _ = wired(lay)
    tops[0].diff[...] = 1.5
    lay.backward(tops, [True, False], bottoms)
    _, ref_dx, _ = softmax_loss_reference(x, labels, axis % len(shape), ignore=-1)
    np.testing.assert_allclose(bottoms[0].diff, 1.5 * ref_dx, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [None, 1])
def test_softmax_loss_gradient_check(mode, ignore):
    x = rand(2, 4, 3, seed=5) * 2
    labels = class_labels((2, 3), 4, 6)
    if ignore is not None:
        labels[0, 1] = labels[1, 2] = ignore      # and label 1 elsewhere is ignored too
    lay = loss_layer("SoftmaxWithLoss", loss_param_text(mode, ignore))
    assert check_gradients(lay, [x, labels], check_bottoms=[0], **objective_for(mode)) == x.size


def test_softmax_loss_gradient_check_axis():
    x = rand(2, 3, 5, seed=6)
    labels = class_labels((2, 3), 5, 7, ignore=9)
    lay = loss_layer("SoftmaxWithLoss", "softmax_param { axis: 2 } loss_param { ignore_label: 9 }",
                     tops=("loss", "prob"))
    assert check_gradients(lay, [x, labels], check_bottoms=[0], top_index=0) == x.size


def test_loss_without_top_uses_its_loss_weight():
    x, labels = rand(2, 3), np.array([0, 2], np.float32)
    lay = make_layer('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" '
                     'loss_weight: 3 }')
    _, (dx, _) = backward(lay, [x, labels], top_count=0)
    _, ref_dx, _ = softmax_loss_reference(x, labels)
    np.testing.assert_allclose(dx, 3 * ref_dx, rtol=1e-5, atol=1e-7)


# ---- InfogainLoss ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", [None, *MODES])
@pytest.mark.parametrize("ignore", [None, 0])
def test_infogain_backward_reference(mode, ignore):
    x = rand(2, 3, 4, seed=8) * 2
    labels = class_labels((2, 4), 3, 9, ignore)
    h = np.random.default_rng(10).uniform(0, 2, (3, 3)).astype(np.float32)
    lay = loss_layer("InfogainLoss", loss_param_text(mode, ignore), bottoms=("x", "label", "H"))
    loss, (dx, dl, dh) = backward(lay, [x, labels, h], weight=0.5)
    ref_loss, ref_dx = infogain_loss_reference(x, labels, h, 1, ignore, mode or "VALID")
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(dx, 0.5 * ref_dx, rtol=1e-5, atol=1e-7)
    assert np.isnan(dl).all() and np.isnan(dh).all()


def test_infogain_identity_gradient_is_softmax_loss_gradient():
    x, labels = rand(4, 3, seed=11), np.array([0, 2, 1, 1], np.float32)
    _, (dx, *_) = backward(loss_layer("InfogainLoss", bottoms=("x", "l", "H")),
                           [x, labels, np.eye(3, dtype=np.float32)])
    _, (ref, _) = backward(loss_layer("SoftmaxWithLoss"), [x, labels])
    np.testing.assert_allclose(dx, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [None, 2])
def test_infogain_gradient_check(mode, ignore):
    x = rand(3, 3, 2, seed=12) * 2
    labels = class_labels((3, 2), 3, 13, ignore)
    h = np.random.default_rng(14).uniform(0, 1, (3, 3)).astype(np.float32)
    lay = loss_layer("InfogainLoss", loss_param_text(mode, ignore), bottoms=("x", "label", "H"))
    assert check_gradients(lay, [x, labels, h], check_bottoms=[0],
                           **objective_for(mode)) == x.size


def test_infogain_gradient_check_source_and_axis(tmp_path, monkeypatch):
    h = np.random.default_rng(15).uniform(0, 2, (4, 4)).astype(np.float32)
    proto = pb.BlobProto()
    proto.shape.dim.extend([1, 1, 4, 4])
    proto.data.extend(h.reshape(-1).tolist())
    (tmp_path / "H.binaryproto").write_bytes(proto.SerializeToString())
    monkeypatch.chdir(tmp_path)
    lay = loss_layer("InfogainLoss", "infogain_loss_param { source: 'H.binaryproto' axis: 2 }")
    x, labels = rand(2, 3, 4, seed=16), class_labels((2, 3), 4, 17)
    _, (dx, _) = backward(lay, [x, labels])
    ref_loss, ref_dx = infogain_loss_reference(x, labels, h, axis=2)
    assert lay.loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-5, atol=1e-7)
    assert check_gradients(lay, [x, labels], check_bottoms=[0], top_index=0) == x.size


# ---- SigmoidCrossEntropyLoss -----------------------------------------------------------
@pytest.mark.parametrize("mode", [None, *MODES])
@pytest.mark.parametrize("ignore", [None, -1])
def test_sigmoid_cross_entropy_backward_reference(mode, ignore):
    x = rand(2, 3, 2, seed=18) * 2
    t = np.random.default_rng(19).uniform(0, 1, x.shape).astype(np.float32)
    if ignore is not None:
        t.reshape(-1)[::4] = ignore
    lay = loss_layer("SigmoidCrossEntropyLoss", loss_param_text(mode, ignore), bottoms=("x", "t"))
    loss, (dx, dt) = backward(lay, [x, t], weight=2.0)
    ref_loss, ref_dx = sigmoid_cross_entropy_reference(x, t, ignore, mode or "BATCH_SIZE")
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(dx, 2.0 * ref_dx, rtol=1e-5, atol=1e-7)
    assert np.isnan(dt).all()
    if ignore is not None:
        assert (dx.reshape(-1)[::4] == 0).all()


def test_sigmoid_cross_entropy_backward_is_finite_for_large_inputs():
    x = np.array([[100.0, -100.0, 30.0]], np.float32)
    t = np.array([[0.0, 1.0, 1.0]], np.float32)
    _, (dx, _) = backward(loss_layer("SigmoidCrossEntropyLoss", bottoms=("x", "t")), [x, t])
    np.testing.assert_allclose(dx, [[1.0, -1.0, 0.0]], atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [None, -1])
def test_sigmoid_cross_entropy_gradient_check(mode, ignore):
    x = rand(2, 3, 2, seed=20) * 2
    t = np.random.default_rng(21).uniform(0, 1, x.shape).astype(np.float32)
    if ignore is not None:
        t.reshape(-1)[1::3] = ignore
    lay = loss_layer("SigmoidCrossEntropyLoss", loss_param_text(mode, ignore), bottoms=("x", "t"))
    assert check_gradients(lay, [x, t], check_bottoms=[0], **objective_for(mode)) == x.size


# ---- EuclideanLoss ---------------------------------------------------------------------
@pytest.mark.parametrize("weight", [1.0, -0.5])
def test_euclidean_backward_reference_both_bottoms(weight):
    a, b = rand(3, 2, 2, seed=22), rand(3, 4, seed=23)          # same count per item
    lay = loss_layer("EuclideanLoss", bottoms=("a", "b"))
    loss, (da, db) = backward(lay, [a, b], weight, propagate=[True, True])
    ref_loss, ref_da, ref_db = euclidean_loss_reference(a, b)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(da, weight * ref_da, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, weight * ref_db, rtol=1e-6, atol=1e-7)
    assert db.shape == (3, 4)
    _, (da, db) = backward(lay, [a, b], weight, propagate=[False, True])
    assert np.isnan(da).all()
    np.testing.assert_allclose(db, weight * ref_db, rtol=1e-6, atol=1e-7)


def test_euclidean_gradient_check():
    a, b = rand(3, 2, 2, seed=24), rand(3, 4, seed=25)
    lay = loss_layer("EuclideanLoss", bottoms=("a", "b"))
    assert check_gradients(lay, [a, b], check_bottoms=[0, 1], top_index=0) == 24


# ---- HingeLoss -------------------------------------------------------------------------
def hinge_data(seed):
    """Scores away from the hinges at +-1 (true class at 1, others at -1)."""
    x = np.random.default_rng(seed).uniform(-2.0, 2.0, (4, 5)).astype(np.float32)
    near = np.abs(np.abs(x) - 1.0) < 0.15
    x[near] += np.float32(0.4) * np.sign(x[near])
    return x, np.array([0, 3, 4, 1], np.float32)


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_backward_reference(norm):
    x, labels = hinge_data(26)
    lay = loss_layer("HingeLoss", f"hinge_loss_param {{ norm: {norm} }}")
    loss, (dx, _) = backward(lay, [x, labels], weight=1.5)
    ref_loss, ref_dx = hinge_loss_reference(x, labels, norm)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(dx, 1.5 * ref_dx, rtol=1e-5, atol=1e-7)
    assert (dx == 0).any() and (dx != 0).any()              # both sides of the hinge


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_gradient_check(norm):
    x, labels = hinge_data(27)
    lay = loss_layer("HingeLoss", f"hinge_loss_param {{ norm: {norm} }}")
    assert check_gradients(lay, [x, labels], check_bottoms=[0], top_index=0) == x.size


# ---- ContrastiveLoss -------------------------------------------------------------------
def siamese_pairs(distances, channels=3, seed=28):
    """Feature pairs (a, b) at exactly the given distances, so that no pair sits
    at the margin's kink."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((len(distances), channels))
    u = rng.standard_normal((len(distances), channels))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    b = a + u * np.asarray(distances)[:, None]
    return a.astype(np.float32), b.astype(np.float32)


PAIR_DISTANCES = [0.3, 0.6, 1.4, 0.8, 2.0, 0.5]
PAIR_SIMILAR = np.array([1, 0, 0, 0, 1, 0], np.float32)


@pytest.mark.parametrize("margin", [1.0, 2.0])
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_backward_reference(margin, legacy):
    a, b = siamese_pairs(PAIR_DISTANCES)
    lay = loss_layer("ContrastiveLoss", f"contrastive_loss_param {{ margin: {margin} "
                     f"legacy_version: {str(legacy).lower()} }}", bottoms=("a", "b", "sim"))
    loss, (da, db, dsim) = backward(lay, [a, b, PAIR_SIMILAR], 0.7, propagate=[True, True, False])
    ref_loss, ref_da, ref_db = contrastive_loss_reference(a, b, PAIR_SIMILAR, margin, legacy)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(da, 0.7 * ref_da, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, 0.7 * ref_db, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(da, -db)
    assert np.isnan(dsim).all()


@pytest.mark.parametrize("margin", [1.0, 2.0])
@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_gradient_check(margin, legacy):
    # legacy hinges at d^2 = margin: the distances keep d^2 away from 1 and 2
    a, b = siamese_pairs(PAIR_DISTANCES, seed=29)
    lay = loss_layer("ContrastiveLoss", f"contrastive_loss_param {{ margin: {margin} "
                     f"legacy_version: {str(legacy).lower()} }}", bottoms=("a", "b", "sim"))
    assert check_gradients(lay, [a, b, PAIR_SIMILAR], check_bottoms=[0, 1], top_index=0) == 36


def test_contrastive_siamese_example(shared_models):
    """The layer as written in Caffe's mnist siamese example: feat and feat_p
    (N, 2) from the two towers, sim from the data layer, margin 1."""
    from netdef.frontend.source import read_net

    source = read_net(shared_models / "siamese" / "mnist_siamese_train_test.prototxt")
    (param,) = [p for p in source.param.layer if p.type == "ContrastiveLoss"]
    assert list(param.bottom) == ["feat", "feat_p", "sim"]
    lay = make_layer(f"layer {{ {param} }}")
    a, b = siamese_pairs([0.2, 0.5, 0.7, 1.3, 0.4, 1.8, 0.9, 0.1], channels=2, seed=30)
    sim = np.array([1, 0, 0, 0, 1, 0, 1, 0], np.float32)
    loss, (da, db, _) = backward(lay, [a, b, sim], propagate=[True, True, False])
    ref_loss, ref_da, ref_db = contrastive_loss_reference(a, b, sim, margin=1.0)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(da, ref_da, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(db, ref_db, rtol=1e-5, atol=1e-7)
    assert check_gradients(lay, [a, b, sim], check_bottoms=[0, 1], top_index=0) == 32


# ---- MultinomialLogisticLoss -----------------------------------------------------------
def test_multinomial_logistic_backward_reference_and_gradient_check():
    p = np.random.default_rng(31).uniform(0.2, 1.0, (4, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 2], np.float32).reshape(4, 1, 1, 1)
    lay = loss_layer("MultinomialLogisticLoss")
    loss, (dp, _) = backward(lay, [p, labels], weight=2.0)
    ref_loss, ref_dp = multinomial_logistic_reference(p, labels)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    np.testing.assert_allclose(dp, 2.0 * ref_dp, rtol=1e-5)
    # 1/p curves fast: a smaller step keeps the central difference accurate
    assert check_gradients(lay, [p, labels], check_bottoms=[0], top_index=0,
                           stepsize=1e-3) == p.size


def test_multinomial_logistic_backward_clamps_like_forward():
    p = np.array([[0.0, 1.0]], np.float32)
    _, (dp, _) = backward(loss_layer("MultinomialLogisticLoss"), [p, np.zeros(1, np.float32)])
    assert dp[0, 0] == np.float32(-1e20) and dp[0, 1] == 0


# ---- Accuracy --------------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("ignore", [None, 1])
@pytest.mark.parametrize("axis,shape", [(1, (3, 4, 2)), (-1, (2, 3, 4))])
def test_accuracy_against_reference(top_k, ignore, axis, shape):
    x = np.round(rand(*shape, seed=32) * 2) / 2          # coarse values: plenty of ties
    label_shape = tuple(d for i, d in enumerate(shape) if i != axis % len(shape))
    labels = class_labels(label_shape, shape[axis], 33)
    params = f"accuracy_param {{ top_k: {top_k} axis: {axis} " + (
        f"ignore_label: {ignore} }}" if ignore is not None else "}")
    lay = loss_layer("Accuracy", params, tops=("acc", "per_class"))
    acc, per_class = run_layer(lay, [x, labels])
    ref_acc, ref_per_class = accuracy_reference(x, labels, top_k, axis % len(shape), ignore)
    assert float(acc) == pytest.approx(ref_acc, rel=1e-6)
    np.testing.assert_allclose(per_class, ref_per_class, rtol=1e-6)


def test_accuracy_has_no_backward():
    lay = loss_layer("Accuracy", tops=("acc",), name="acc1")
    run_layer(lay, [SCORES, TRUTH])
    bottoms, tops = wired(lay)
    lay.backward(tops, [False, False], bottoms)            # nothing asked: nothing done
    assert lay.no_force_backward == (0, 1)
    for down in ([True, False], [False, True]):
        with pytest.raises(GraphError, match=r"layer 'acc1' \(Accuracy\) cannot backpropagate"
                                             ".*metric"):
            lay.backward(tops, down, bottoms)


# ---- labels get no gradient ----------------------------------------------------------------
LABEL_CASES = [
    ("SoftmaxWithLoss", ("x", "label"), [rand(2, 3), np.array([0, 2], np.float32)], 1, ""),
    ("InfogainLoss", ("x", "label", "H"),
     [rand(2, 3), np.array([0, 2], np.float32), np.eye(3, dtype=np.float32)], 1, ""),
    ("InfogainLoss", ("x", "label", "H"),
     [rand(2, 3), np.array([0, 2], np.float32), np.eye(3, dtype=np.float32)], 2, "infogain"),
    ("SigmoidCrossEntropyLoss", ("x", "t"), [rand(2, 3), np.ones((2, 3), np.float32)], 1,
     "targets"),
    ("HingeLoss", ("x", "label"), [rand(2, 3), np.array([0, 2], np.float32)], 1, ""),
    ("MultinomialLogisticLoss", ("p", "label"),
     [np.full((2, 3), 1 / 3, np.float32), np.array([0, 2], np.float32)], 1, ""),
    ("ContrastiveLoss", ("a", "b", "sim"), [rand(2, 3), rand(2, 3, seed=1),
                                           np.array([1, 0], np.float32)], 2, "similarity"),
]


@pytest.mark.parametrize("type_,bottoms,arrays,index,words", LABEL_CASES)
def test_label_gradient_is_refused(type_, bottoms, arrays, index, words):
    lay = loss_layer(type_, bottoms=bottoms, name="lossy")
    assert index in lay.no_force_backward
    down = [i == 0 or i == index for i in range(len(bottoms))]
    with pytest.raises(GraphError) as err:
        backward(lay, arrays, propagate=down)
    text = str(err.value)
    assert f"layer 'lossy' ({type_}) cannot backpropagate to bottom {index} '{bottoms[index]}'" \
        in text and "propagate_down: false" in text and words in text
    # nothing asked: nothing written
    _, diffs = backward(lay, arrays, propagate=[False] * len(bottoms))
    assert all(np.isnan(d).all() for d in diffs)


def test_euclidean_refuses_nothing():
    assert loss_layer("EuclideanLoss", bottoms=("a", "b")).no_force_backward == ()
