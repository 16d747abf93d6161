"""The SSD layers (Normalize, Permute, PriorBox, DetectionOutput) against
tests/reference.py, finite differences, and OpenCV 4's DNN module (which has
its own implementation of each: an independent check of the fork's rules)."""
from __future__ import annotations

import numpy as np
import pytest
from layer_harness import check_gradients, fill_params, infer_shapes, make_layer, run_layer
from reference import (detection_output_reference, normalize_reference, permute_reference,
                       prior_box_reference)

from netdef.errors import GraphError, NetdefError, ShapeError

RTOL, ATOL = 1e-5, 1e-6


def layer(type_name, body="", bottoms=("data",), name="L", top="out"):
    wiring = " ".join(f'bottom: "{b}"' for b in bottoms)
    return make_layer(f'layer {{ name: "{name}" type: "{type_name}" {wiring} top: "{top}" '
                      f'{body} }}')


def rand(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def relative_error(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - b)) / max(np.max(np.abs(b)), 1e-12))


# ------------------------------------------------------------ OpenCV ----

def opencv_forward(tmp_path, body: str, inputs: dict, params=None):
    """Run one layer ``body`` (a layer { ... } block) on ``inputs`` in OpenCV.

    ``params``: arrays for the layer's blobs, saved through netdef's own
    Net.save, so OpenCV reads them from a .caffemodel as it would a model's.
    """
    cv2 = pytest.importorskip("cv2")
    header = "".join(f'input: "{n}" input_shape {{ {" ".join(f"dim: {d}" for d in a.shape)} }}\n'
                     for n, a in inputs.items())
    proto = tmp_path / "net.prototxt"
    proto.write_text('name: "t"\n' + header + body)
    args = [str(proto)]
    if params is not None:
        from netdef.net import Net

        net = Net(str(proto))
        for blob, value in zip(next(iter(net.params.values())), params, strict=True):
            blob.data = value
        weights = tmp_path / "net.caffemodel"
        net.save(str(weights))
        args.append(str(weights))
    peer = cv2.dnn.readNetFromCaffe(*args)
    peer.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    for n, a in inputs.items():
        peer.setInput(a, n)
    return peer.forward()


# --------------------------------------------------------- Normalize ----

NORM_CASES = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize("across,shared", NORM_CASES)
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4), (2, 3, 5)])
def test_normalize_matches_reference(across, shared, shape):
    lay = layer("Normalize", f"norm_param {{ across_spatial: {str(across).lower()} "
                             f"channel_shared: {str(shared).lower()} eps: 0.001 }}")
    assert infer_shapes(lay, [shape]) == [shape]
    assert lay.blobs[0].shape == ((1,) if shared else (shape[1],))
    (scale,) = fill_params(lay, seed=4)
    x = rand(*shape)
    (y,) = run_layer(lay, [x])
    ref = normalize_reference(x, scale, across, eps=1e-3)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_normalize_defaults_and_filler():
    lay = layer("Normalize", "norm_param { scale_filler { type: 'constant' value: 20 } "
                             "channel_shared: false across_spatial: false }")
    infer_shapes(lay, [(1, 4, 2, 2)])
    assert lay.fillers[0].value == 20 and lay.eps == pytest.approx(1e-10)
    plain = layer("Normalize")
    infer_shapes(plain, [(1, 4, 2, 2)])
    assert plain.across_spatial and plain.channel_shared
    assert (plain.fillers[0].type, plain.fillers[0].value) == ("constant", 1.0)


@pytest.mark.parametrize("across,shared", NORM_CASES)
def test_normalize_gradients(across, shared):
    lay = layer("Normalize", f"norm_param {{ across_spatial: {str(across).lower()} "
                             f"channel_shared: {str(shared).lower()} }}")
    x = rand(2, 3, 2, 3, seed=5)
    infer_shapes(lay, [x.shape])
    fill_params(lay, seed=6)
    assert check_gradients(lay, [x], stepsize=1e-2, threshold=1e-2) > 0


def test_normalize_in_place_equals_out_of_place():
    x = rand(2, 3, 2, 2, seed=7)
    a = layer("Normalize", "norm_param { across_spatial: false channel_shared: false }")
    b = layer("Normalize", "norm_param { across_spatial: false channel_shared: false }",
              top="data")
    for lay in (a, b):
        infer_shapes(lay, [x.shape], in_place=lay is b)
        fill_params(lay, seed=3)
    (ya,) = run_layer(a, [x])
    (yb,) = run_layer(b, [x], in_place=True)
    np.testing.assert_array_equal(ya, yb)


# OpenCV refuses a per-channel scale with across_spatial (scale.total() == numPlanes).
@pytest.mark.parametrize("across,shared", [c for c in NORM_CASES if c != (True, False)])
def test_normalize_matches_opencv(tmp_path, across, shared):
    x = rand(2, 3, 4, 5, seed=8)
    scale = (np.abs(rand(1 if shared else 3, seed=9)) + 1).astype(np.float32)
    body = (f'layer {{ name: "n" type: "Normalize" bottom: "x" top: "n" norm_param {{ '
            f'across_spatial: {str(across).lower()} channel_shared: {str(shared).lower()} }} }}')
    theirs = opencv_forward(tmp_path, body, {"x": x}, [scale])
    lay = layer("Normalize", body[body.index("norm_param"):-2], bottoms=("x",))
    infer_shapes(lay, [x.shape])
    lay.blobs[0].data = scale
    (ours,) = run_layer(lay, [x])
    assert relative_error(ours, theirs) <= 1e-4


def test_normalize_rank_1_is_an_error_naming_layer_and_shape():
    lay = layer("Normalize", name="conv4_3_norm")
    with pytest.raises(NetdefError, match=r"conv4_3_norm.*\(6\)"):
        infer_shapes(lay, [(6,)])


# ----------------------------------------------------------- Permute ----

@pytest.mark.parametrize("order,full", [((0, 2, 3, 1), (0, 2, 3, 1)), ((1, 0), (1, 0, 2, 3)),
                                        ((), (0, 1, 2, 3)), ((3, 1), (3, 1, 0, 2))])
def test_permute_matches_reference_and_backward(order, full):
    body = "permute_param { " + " ".join(f"order: {o}" for o in order) + " }"
    lay = layer("Permute", body)
    x = rand(2, 3, 4, 5)
    assert infer_shapes(lay, [x.shape]) == [tuple(x.shape[a] for a in full)]
    (y,) = run_layer(lay, [x])
    np.testing.assert_array_equal(y, permute_reference(x, full))
    assert check_gradients(lay, [x]) > 0


def test_permute_matches_opencv(tmp_path):
    x = rand(2, 3, 4, 5)
    body = ('layer { name: "p" type: "Permute" bottom: "x" top: "p" '
            'permute_param { order: 0 order: 2 order: 3 order: 1 } }')
    theirs = opencv_forward(tmp_path, body, {"x": x})
    (ours,) = run_layer(layer("Permute", "permute_param { order: 0 order: 2 order: 3 order: 1 }",
                              bottoms=("x",)), [x])
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("body,match", [("permute_param { order: 4 }", "not an axis"),
                                        ("permute_param { order: 1 order: 1 }", "twice")])
def test_permute_bad_order(body, match):
    with pytest.raises(GraphError, match=match):
        infer_shapes(layer("Permute", body, name="perm"), [(1, 2, 3, 4)])


# ---------------------------------------------------------- PriorBox ----

PRIOR_CASES = [
    ("min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false "
     "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: 8 offset: 0.5",
     dict(min_sizes=[30], max_sizes=[60], aspect_ratios=[2], variance=[.1, .1, .2, .2],
          step_hw=(8, 8))),
    ("min_size: 60 aspect_ratio: 2 aspect_ratio: 3 aspect_ratio: 2 clip: true variance: 0.1",
     dict(min_sizes=[60], aspect_ratios=[2, 3], clip=True, variance=[.1])),
    ("min_size: 10 min_size: 20 max_size: 15 max_size: 40 aspect_ratio: 2 flip: false "
     "clip: false variance: 0.2",
     dict(min_sizes=[10, 20], max_sizes=[15, 40], aspect_ratios=[2], flip=False,
          variance=[.2])),
    ("min_size: 16 aspect_ratio: 0.5 clip: false step_h: 6 step_w: 9 offset: 0.25 "
     "variance: 0.1 variance: 0.2 variance: 0.3 variance: 0.4",
     dict(min_sizes=[16], aspect_ratios=[0.5], step_hw=(6, 9), offset=0.25,
          variance=[.1, .2, .3, .4])),
]


@pytest.mark.parametrize("body,ref", PRIOR_CASES)
def test_prior_box_matches_reference(body, ref):
    lay = layer("PriorBox", f"prior_box_param {{ {body} }}", bottoms=("feat", "img"))
    feat, img = np.zeros((2, 4, 5, 6), np.float32), np.zeros((2, 3, 40, 54), np.float32)
    n_priors = lay_priors = None
    (out,) = run_layer(lay, [feat, img])
    lay_priors = lay.num_priors
    n_priors = (len(ref.get("min_sizes")) * (1 + len(set(ref.get("aspect_ratios", ())))
                * (2 if ref.get("flip", True) else 1)) + len(ref.get("max_sizes", ())))
    assert lay_priors == n_priors and out.shape == (1, 2, 5 * 6 * n_priors * 4)
    expected = prior_box_reference((5, 6), (40, 54), **ref)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("body,img", [("img_size: 100", (100, 100)),
                                      ("img_h: 80 img_w: 120", (80, 120))])
def test_prior_box_explicit_image_size(body, img):
    lay = layer("PriorBox", f"prior_box_param {{ min_size: 20 max_size: 50 aspect_ratio: 3 "
                            f"clip: false {body} }}", bottoms=("feat", "img"))
    (out,) = run_layer(lay, [np.zeros((1, 2, 3, 4), np.float32), np.zeros((1, 3, 7, 7),
                                                                          np.float32)])
    expected = prior_box_reference((3, 4), img, [20], [50], [3])
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("body,_", PRIOR_CASES)
def test_prior_box_matches_opencv(tmp_path, body, _):
    feat, img = rand(1, 4, 5, 6), rand(1, 3, 40, 54)
    text = f'layer {{ name: "pb" type: "PriorBox" bottom: "feat" bottom: "img" top: "pb" ' \
           f'prior_box_param {{ {body} }} }}'
    theirs = opencv_forward(tmp_path, text, {"feat": feat, "img": img})
    (ours,) = run_layer(layer("PriorBox", f"prior_box_param {{ {body} }}",
                              bottoms=("feat", "img")), [feat, img])
    assert ours.shape == theirs.shape
    assert relative_error(ours, theirs) <= 1e-5


@pytest.mark.parametrize("body,match", [
    ("aspect_ratio: 2", r"needs at least one min_size.*'f' \(1, 2, 3, 3\)"),
    ("min_size: 10 aspect_ratio: 0", r"aspect_ratio must be positive.*'f' \(1, 2, 3, 3\)"),
    ("min_size: 10 aspect_ratio: -2", "aspect_ratio must be positive"),
    ("min_size: 10 max_size: 5", "must exceed min_size"),
    ("min_size: 10 variance: 0.1 variance: 0.2", "1 or 4 values"),
    ("min_size: 10 step: 4 step_h: 2", "not both"),
])
def test_prior_box_bad_parameters(body, match):
    lay = layer("PriorBox", f"prior_box_param {{ {body} }}", bottoms=("f", "img"),
                name="conv4_3_norm_mbox_priorbox")
    with pytest.raises(GraphError, match="conv4_3_norm_mbox_priorbox") as err:
        infer_shapes(lay, [(1, 2, 3, 3), (1, 3, 30, 30)])
    assert err.match(match)


def test_prior_box_has_no_gradient():
    lay = layer("PriorBox", "prior_box_param { min_size: 4 }", bottoms=("f", "img"))
    run_layer(lay, [np.zeros((1, 1, 2, 2), np.float32), np.zeros((1, 1, 8, 8), np.float32)])
    from layer_harness import wired

    bottoms, tops = wired(lay)
    lay.backward(tops, [False, False], bottoms)        # nothing asked: nothing done
    with pytest.raises(GraphError, match="no gradient"):
        lay.backward(tops, [True, False], bottoms)


# --------------------------------------------------- DetectionOutput ----

def detection_inputs(num=2, num_classes=3, share=True, seed=0, grid=(4, 5), spread=0.6):
    """loc, softmaxed conf and priors for a small SSD head."""
    rng = np.random.default_rng(seed)
    prior = prior_box_reference(grid, (40, 50), [12], [25], [2], variance=[.1, .1, .2, .2])
    n_p = prior.shape[2] // 4
    n_loc = 1 if share else num_classes
    loc = (rng.standard_normal((num, n_p * n_loc * 4)) * spread).astype(np.float32)
    logits = rng.standard_normal((num, n_p, num_classes)) * 2
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return loc, conf.reshape(num, -1).astype(np.float32), prior.astype(np.float32)


def det_layer(num_classes=3, extra="", nms="nms_threshold: 0.45 top_k: 30", code="CENTER_SIZE",
              name="detection_out"):
    return layer("DetectionOutput",
                 f"detection_output_param {{ num_classes: {num_classes} nms_param {{ {nms} }} "
                 f"code_type: {code} {extra} }}", bottoms=("loc", "conf", "prior"), name=name)


DET_CASES = [
    # (num_classes, share_location, extra params, nms params, code_type, reference kwargs)
    (3, True, "keep_top_k: 20 confidence_threshold: 0.2", "nms_threshold: 0.45 top_k: 30",
     "CENTER_SIZE", dict(keep_top_k=20, confidence_threshold=0.2, nms_threshold=0.45,
                         top_k=30)),
    (3, True, "keep_top_k: 5 confidence_threshold: 0.1", "nms_threshold: 0.3",
     "CORNER", dict(keep_top_k=5, confidence_threshold=0.1, nms_threshold=0.3)),
    (4, False, "keep_top_k: 50 confidence_threshold: 0.15 background_label_id: 1",
     "nms_threshold: 0.5 top_k: 10", "CENTER_SIZE",
     dict(keep_top_k=50, confidence_threshold=0.15, background=1, nms_threshold=0.5,
          top_k=10)),
    (2, True, "keep_top_k: 200 confidence_threshold: 0.2 clip: true",
     "nms_threshold: 0.45 top_k: 400", "CENTER_SIZE",
     dict(keep_top_k=200, confidence_threshold=0.2, nms_threshold=0.45, top_k=400, clip=True)),
]
REF_ONLY_CASES = [
    (3, True, "", "nms_threshold: 0.4", "CORNER_SIZE", dict(nms_threshold=0.4)),
    (3, True, "variance_encoded_in_target: true keep_top_k: 7", "nms_threshold: 0.6 eta: 0.9",
     "CENTER_SIZE", dict(variance_encoded=True, keep_top_k=7, nms_threshold=0.6, eta=0.9)),
    (3, False, "background_label_id: -1 confidence_threshold: 0.3", "nms_threshold: 0.2 top_k: 8",
     "CORNER", dict(background=-1, confidence_threshold=0.3, nms_threshold=0.2, top_k=8)),
]


@pytest.mark.parametrize("classes,share,extra,nms,code,ref", DET_CASES + REF_ONLY_CASES)
def test_detection_output_matches_reference(classes, share, extra, nms, code, ref):
    loc, conf, prior = detection_inputs(num_classes=classes, share=share, seed=classes)
    share_text = "" if share else " share_location: false"
    lay = det_layer(classes, extra + share_text, nms, code)
    assert infer_shapes(lay, [loc.shape, conf.shape, prior.shape]) == [(1, 1, 1, 7)]
    (out,) = run_layer(lay, [loc, conf, prior])
    expected = detection_output_reference(loc, conf, prior, classes, share_location=share,
                                          code_type=code, **ref)
    assert out.shape == (1, 1, len(expected), 7) and len(expected) > 2
    np.testing.assert_array_equal(out[0, 0, :, :2], expected[:, :2])   # same order
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5, atol=1e-6)


def _fork_order(rows: np.ndarray) -> np.ndarray:
    """OpenCV sorts each image's rows by score; the fork groups them by label
    (within a label both are by descending score). A stable sort by (image,
    label) turns the first order into the second."""
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


@pytest.mark.parametrize("classes,share,extra,nms,code,_", DET_CASES)
def test_detection_output_matches_opencv(tmp_path, classes, share, extra, nms, code, _):
    loc, conf, prior = detection_inputs(num_classes=classes, share=share, seed=classes + 10)
    share_text = f" share_location: {str(share).lower()}"
    if "background_label_id" not in extra:       # OpenCV insists on these two
        share_text += " background_label_id: 0"
    params = (f"detection_output_param {{ num_classes: {classes} nms_param {{ {nms} }} "
              f"code_type: {code} {extra}{share_text} }}")
    body = f'layer {{ name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" ' \
           f'bottom: "prior" top: "det" {params} }}'
    theirs = opencv_forward(tmp_path, body, {"loc": loc, "conf": conf, "prior": prior})
    (ours,) = run_layer(det_layer(classes, extra + share_text, nms, code), [loc, conf, prior])
    rows = ours[0, 0]
    assert len(rows) > 2
    valid, padding = theirs[0, 0, :len(rows)], theirs[0, 0, len(rows):]
    assert not padding.any()                 # OpenCV pads with zero rows up to keep_top_k * N
    valid = _fork_order(valid)
    np.testing.assert_array_equal(rows[:, :2], valid[:, :2])          # images and labels
    assert relative_error(rows[:, 2], valid[:, 2]) <= 1e-4            # scores
    assert relative_error(rows[:, 3:], valid[:, 3:]) <= 1e-4          # boxes


def test_detection_output_empty_result_is_the_fork_convention(tmp_path):
    loc, conf, prior = detection_inputs(num=3)
    lay = det_layer(extra="confidence_threshold: 0.999 keep_top_k: 10")
    (out,) = run_layer(lay, [loc, conf, prior])
    expected = np.full((3, 7), -1.0, np.float32)
    expected[:, 0] = [0, 1, 2]
    np.testing.assert_array_equal(out[0, 0], expected)
    body = ('layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
            'bottom: "prior" top: "det" detection_output_param { num_classes: 3 nms_param { '
            'nms_threshold: 0.45 } code_type: CENTER_SIZE confidence_threshold: 0.999 '
            'share_location: true background_label_id: 0 '
            'keep_top_k: 10 } }')
    theirs = opencv_forward(tmp_path, body, {"loc": loc, "conf": conf, "prior": prior})
    assert not theirs.any()          # OpenCV's own convention: all-zero rows


def test_detection_output_reshapes_per_batch():
    lay = det_layer(extra="keep_top_k: 4 confidence_threshold: 0.2")
    loc, conf, prior = detection_inputs(num=2)
    (out,) = run_layer(lay, [loc, conf, prior])
    assert out.shape == (1, 1, 8, 7)
    loc1, conf1, _ = detection_inputs(num=1, seed=5)
    (out1,) = run_layer(lay, [loc1, conf1, prior])
    assert out1.shape[2] <= 4 and set(out1[0, 0, :, 0]) == {0}


@pytest.mark.parametrize("shapes,match", [
    ([(1, 80), (1, 60), (1, 2, 84)], r"bottom 0 \(loc\) holds 80 values.*21 priors"),
    ([(1, 84), (1, 60), (1, 2, 84)], r"bottom 1 \(conf\) holds 60 values.*21 priors"),
    ([(2, 84), (1, 63), (1, 2, 84)], "the same N"),
    ([(1, 84), (1, 63), (1, 84)], "must be"),
])
def test_detection_output_bottoms_disagree(shapes, match):
    lay = det_layer(name="detection_out")
    with pytest.raises(ShapeError, match="detection_out") as err:
        infer_shapes(lay, shapes)
    assert err.match(match)
    assert "'prior' (1, 2, 84)" in str(err.value) or "(1, 84)" in str(err.value)


@pytest.mark.parametrize("body,match", [
    ("detection_output_param { nms_param { nms_threshold: 0.4 } }", "num_classes"),
    ("detection_output_param { num_classes: 2 nms_param { eta: 1.5 } }", "eta"),
])
def test_detection_output_bad_parameters(body, match):
    lay = layer("DetectionOutput", body, bottoms=("loc", "conf", "prior"))
    with pytest.raises(GraphError, match=match):
        infer_shapes(lay, [(1, 84), (1, 42), (1, 2, 84)])


def test_detection_output_top_k_zero_keeps_nothing():
    """nms_param.top_k 0 keeps no candidate (the fork keeps top_k when top_k > -1)."""
    loc, conf, prior = detection_inputs(num=1)
    (out,) = run_layer(det_layer(nms="nms_threshold: 0.4 top_k: 0"), [loc, conf, prior])
    np.testing.assert_array_equal(out[0, 0], [[0, -1, -1, -1, -1, -1, -1]])


def test_best_first_matches_a_stable_sort_of_every_candidate():
    """DetectionOutput picks top_k candidates before sorting: the same
    boxes in the same order as stably sorting them all, ties included."""
    from netdef.layers.detection import _best_first

    rng = np.random.default_rng(21)
    for _ in range(500):
        n = int(rng.integers(0, 40))
        values = (rng.integers(0, 5, n) / 4).astype(np.float32)     # many ties
        cand = np.sort(rng.choice(100, n, replace=False))
        top_k = int(rng.integers(-1, 45))
        full = cand[np.argsort(-values, kind="stable")]
        want = full if top_k < 0 else full[:top_k]
        np.testing.assert_array_equal(_best_first(cand, values, top_k), want)
