"""Neuron layers: shapes, forward against NumPy formulas, in place, errors,
PReLU's parameter and Dropout's TRAIN behaviour; backward against
tests/reference.py, finite differences, and in place against out of place."""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from layer_harness import check_gradients, fill_params, infer_shapes, make_layer, run_layer, wired
from reference import neuron_backward_reference, prelu_backward_reference

from netdef.errors import GraphError, ShapeError
from netdef.layers import create_layer
from netdef.frontend.schema import pb


def neuron(type_, params="", name="n", phase="TEST", bottom="x", top="y"):
    return make_layer(f'layer {{ name: "{name}" type: "{type_}" bottom: "{bottom}" '
                      f'top: "{top}" {params} }}', phase)


def uniform(*shape, lo=-1.0, hi=1.0, seed=0):
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# (type, parameter text, reference on float64 x)
CASES = [
    ("ReLU", "", lambda x: np.maximum(x, 0)),
    ("ReLU", "relu_param { negative_slope: 0.1 }", lambda x: np.where(x > 0, x, 0.1 * x)),
    ("ELU", "", lambda x: np.where(x > 0, x, np.exp(x) - 1)),
    ("ELU", "elu_param { alpha: 0.5 }", lambda x: np.where(x > 0, x, 0.5 * (np.exp(x) - 1))),
    ("Sigmoid", "", _sigmoid),
    ("TanH", "", np.tanh),
    ("AbsVal", "", np.abs),
    ("BNLL", "", lambda x: np.log(1 + np.exp(x))),
    ("Power", "", lambda x: x),
    ("Power", "power_param { power: 2 scale: 3 shift: 1 }", lambda x: (1 + 3 * x) ** 2),
    ("Power", "power_param { power: 0.5 scale: 0.5 shift: 2 }", lambda x: np.sqrt(2 + 0.5 * x)),
    ("Power", "power_param { power: 0 }", lambda x: np.ones_like(x)),
    ("Exp", "", np.exp),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", lambda x: 2.0 ** (1 + 0.5 * x)),
    ("Log", "log_param { shift: 2 }", lambda x: np.log(2 + x)),
    ("Log", "log_param { base: 10 scale: 2 shift: 3 }", lambda x: np.log10(3 + 2 * x)),
    ("Threshold", "threshold_param { threshold: 0.25 }", lambda x: (x > 0.25).astype(float)),
    ("Clip", "clip_param { min: -0.3 max: 0.6 }", lambda x: np.clip(x, -0.3, 0.6)),
    ("Swish", "", lambda x: x * _sigmoid(x)),
    ("Swish", "swish_param { beta: 2.5 }", lambda x: x * _sigmoid(2.5 * x)),
]


@pytest.mark.parametrize("type_,params,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,), (3, 5)])
def test_forward_matches_formula(type_, params, ref, shape):
    lay = neuron(type_, params)
    assert infer_shapes(lay, [shape]) == [shape]
    assert lay.kind == "activation"
    x = uniform(*shape)
    (y,) = run_layer(lay, [x])
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref(x.astype(np.float64)), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("type_,params,ref", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_in_place_forward(type_, params, ref):
    lay = neuron(type_, params, top="x")
    x = uniform(2, 3, 4)
    (y,) = run_layer(lay, [x], in_place=True)
    bottoms, tops = wired(lay)
    assert tops[0] is bottoms[0]
    np.testing.assert_allclose(y, ref(x.astype(np.float64)), rtol=2e-6, atol=2e-6)


def test_strided_top_array_is_written():
    lay = neuron("ReLU")
    x = uniform(4, 6)
    infer_shapes(lay, [x.shape])
    bottoms, tops = wired(lay)
    bottoms[0].data = x
    storage = np.zeros((6, 4), np.float32)
    tops[0].data = storage.T                 # a non-contiguous view
    lay.forward(bottoms, tops)
    np.testing.assert_array_equal(storage.T, np.maximum(x, 0))


@pytest.mark.parametrize("fields,message", [
    ({"min": -1.0}, "clip_param.max must be given"),
    ({}, "clip_param.min and max must be given"),
    ({"min": 2.0, "max": 1.0}, "is above max"),
])
def test_clip_parameter_errors(fields, message):
    # the parser already rejects a missing min/max; a LayerParameter built in
    # code reaches the layer
    param = pb.LayerParameter(name="clip7", type="Clip", bottom=["x"], top=["y"])
    for key, value in fields.items():
        setattr(param.clip_param, key, value)
    with pytest.raises(GraphError, match=message) as err:
        infer_shapes(create_layer(param), [(2, 3)])
    assert "layer 'clip7' (Clip)" in str(err.value)


@pytest.mark.parametrize("type_", ["Exp", "Log"])
@pytest.mark.parametrize("base", [0, -2])
def test_exp_log_reject_bad_base(type_, base):
    field = type_.lower() + "_param"
    with pytest.raises(GraphError, match="base must be strictly positive"):
        infer_shapes(neuron(type_, f"{field} {{ base: {base} }}"), [(2, 3)])


def test_arity_is_checked():
    lay = make_layer('layer { name: "r" type: "ReLU" bottom: "a" bottom: "b" top: "c" }')
    with pytest.raises(GraphError, match=r"layer 'r' \(ReLU\) takes exactly 1 bottom blob, got 2"):
        infer_shapes(lay, [(1, 2), (1, 2)])


# ---- PReLU -----------------------------------------------------------------
def test_prelu_parameter_shapes_and_default_filler():
    lay = neuron("PReLU")
    assert infer_shapes(lay, [(2, 5, 3, 3)]) == [(2, 5, 3, 3)]
    assert [b.shape for b in lay.blobs] == [(5,)] and lay.learnable == [True]
    assert (lay.fillers[0].type, lay.fillers[0].value) == ("constant", pytest.approx(0.25))
    assert lay.num_params == 5
    shared = neuron("PReLU", "prelu_param { channel_shared: true filler { type: 'constant' "
                             "value: 0.1 } }")
    infer_shapes(shared, [(2, 5, 3, 3)])
    assert shared.blobs[0].shape == () and shared.blobs[0].count == 1
    assert shared.fillers[0].value == pytest.approx(0.1)


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("in_place", [False, True])
def test_prelu_forward(shared, in_place):
    lay = neuron("PReLU", f"prelu_param {{ channel_shared: {str(shared).lower()} }}",
                 top="x" if in_place else "y")
    x = uniform(2, 4, 3, 2)
    infer_shapes(lay, [x.shape], in_place=in_place)
    (slope,) = fill_params(lay, seed=3)
    (y,) = run_layer(lay, [x], in_place=in_place)
    a = np.full(4, slope.reshape(-1)[0]) if shared else slope
    expected = np.where(x > 0, x, a[None, :, None, None] * x)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)
    if in_place:
        np.testing.assert_array_equal(lay.bottom_copy, x)   # kept for backward


def test_prelu_needs_a_channel_axis():
    with pytest.raises(ShapeError) as err:
        infer_shapes(neuron("PReLU", name="pr"), [(6,)])
    text = str(err.value)
    assert "layer 'pr' (PReLU)" in text and "'x' (6)" in text and "at least 2 axes" in text


def test_prelu_channel_change_is_a_shape_error():
    lay = neuron("PReLU", name="pr")
    infer_shapes(lay, [(2, 3, 4)])
    with pytest.raises(ShapeError, match=r"3 channels but the bottom has 5"):
        infer_shapes(lay, [(2, 5, 4)])


# ---- Dropout -----------------------------------------------------------------
def test_dropout_test_phase_is_identity():
    x = uniform(3, 4, 5)
    lay = neuron("Dropout", "dropout_param { dropout_ratio: 0.3 }")
    (y,) = run_layer(lay, [x])
    np.testing.assert_array_equal(y, x)
    assert lay.shares_data                      # the planner may alias top and bottom
    bottoms, tops = wired(lay)
    tops[0].share_data(bottoms[0])
    lay.forward(bottoms, tops)
    np.testing.assert_array_equal(tops[0].data, x)
    inplace = neuron("Dropout", top="x")
    (y,) = run_layer(inplace, [x], in_place=True)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("ratio", [0.5, 0.3, 0.8])
def test_dropout_train_statistics_and_scaling(ratio):
    lay = neuron("Dropout", f"dropout_param {{ dropout_ratio: {ratio} }}", phase="TRAIN")
    x = np.ones((100, 1000), np.float32)
    (y,) = run_layer(lay, [x])
    kept = y != 0
    assert abs(kept.mean() - (1 - ratio)) < 0.01          # 1e5 draws: sd < 0.002
    np.testing.assert_allclose(y[kept], 1.0 / (1.0 - ratio), rtol=1e-6)
    assert abs(y.mean() - 1.0) < 0.03                      # inverted dropout keeps the mean
    np.testing.assert_array_equal(lay.mask, kept)          # kept for backward
    assert not lay.shares_data
    assert lay.scale == pytest.approx(1.0 / (1.0 - ratio))


def test_dropout_train_in_place_and_values():
    lay = neuron("Dropout", top="x", phase="TRAIN")
    x = uniform(50, 40, lo=0.5, hi=1.5)
    (y,) = run_layer(lay, [x], in_place=True)
    np.testing.assert_allclose(y, np.where(lay.mask, 2.0 * x, 0.0), rtol=1e-6)


def test_dropout_rng_is_seeded_per_layer_and_reseedable():
    x = np.ones((64, 64), np.float32)

    def mask(name, seed=None):
        lay = neuron("Dropout", name=name, phase="TRAIN")
        infer_shapes(lay, [x.shape])
        if seed is not None:
            lay.reseed(seed)
        run_layer(lay, [x])
        return lay.mask.copy()

    np.testing.assert_array_equal(mask("d1"), mask("d1"))          # reproducible
    assert not np.array_equal(mask("d1"), mask("d2"))              # independent per layer
    np.testing.assert_array_equal(mask("d1", 7), mask("d1", 7))
    assert not np.array_equal(mask("d1", 7), mask("d1", 8))
    lay = neuron("Dropout", phase="TRAIN")
    first, second = run_layer(lay, [x])[0], run_layer(lay, [x])[0]
    assert not np.array_equal(first, second)                       # a fresh mask per forward


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_dropout_ratio_errors(ratio):
    with pytest.raises(GraphError, match=r"dropout_ratio must be in \[0, 1\)"):
        infer_shapes(neuron("Dropout", f"dropout_param {{ dropout_ratio: {ratio} }}"), [(2, 2)])


def test_shape_only_use_does_not_import_numba():
    """Shape inference of the neuron, structure, loss and data families never
    imports Numba (summary and draw stay fast)."""
    code = textwrap.dedent("""
        import sys
        from layer_harness import make_layer, infer_shapes
        cases = [("ReLU", 1, ""), ("PReLU", 1, ""), ("Dropout", 1, ""),
                 ("Clip", 1, "clip_param { min: 0 max: 1 }"), ("Softmax", 1, ""),
                 ("Eltwise", 2, ""), ("Concat", 2, ""), ("ArgMax", 1, ""),
                 ("SoftmaxWithLoss", 2, ""), ("Accuracy", 2, ""),
                 ("Input", 0, "input_param { shape { dim: 2 dim: 3 } }")]
        shapes = {0: [], 1: [(2, 3)], 2: [(2, 3), (2, 3)]}
        for type_, n, params in cases:
            bottoms = " ".join('bottom: "b%d"' % i for i in range(n))
            lay = make_layer('layer { name: "a" type: "%s" %s top: "y" %s }'
                             % (type_, bottoms, params))
            labelled = type_ in ("SoftmaxWithLoss", "Accuracy")
            infer_shapes(lay, [(2, 3), (2,)] if labelled else shapes[n])
        assert "numba" not in sys.modules, "numba was imported"
    """)
    here = pathlib.Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent)])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


# ---- backward ------------------------------------------------------------------
# (type, parameter text, reference parameters, kinks: inputs are kept away from them)
GRAD_CASES = [
    ("ReLU", "", {}, [0.0]),
    ("ReLU", "relu_param { negative_slope: 0.1 }", {"negative_slope": 0.1}, [0.0]),
    ("ReLU", "relu_param { negative_slope: -0.5 }", {"negative_slope": -0.5}, [0.0]),
    ("ELU", "", {}, [0.0]),
    ("ELU", "elu_param { alpha: 0.5 }", {"alpha": 0.5}, [0.0]),
    ("Sigmoid", "", {}, []),
    ("TanH", "", {}, []),
    ("AbsVal", "", {}, [0.0]),
    ("BNLL", "", {}, []),
    ("Power", "", {}, []),
    ("Power", "power_param { power: 1 scale: -2 shift: 3 }",
     {"power": 1, "scale": -2, "shift": 3}, []),
    ("Power", "power_param { power: 2 scale: 3 shift: 1 }", {"power": 2, "scale": 3, "shift": 1},
     []),
    ("Power", "power_param { power: 2 scale: 0.5 }", {"power": 2, "scale": 0.5}, []),
    ("Power", "power_param { power: 3 scale: 2 }", {"power": 3, "scale": 2}, []),
    ("Power", "power_param { power: 0.5 scale: 0.5 shift: 2 }",
     {"power": 0.5, "scale": 0.5, "shift": 2}, []),
    ("Power", "power_param { power: -1.5 shift: 2 }", {"power": -1.5, "shift": 2}, []),
    ("Power", "power_param { power: 0 scale: 2 shift: 1 }", {"power": 0, "scale": 2, "shift": 1},
     []),
    ("Power", "power_param { power: 2 scale: 0 shift: 3 }", {"power": 2, "scale": 0, "shift": 3},
     []),
    ("Exp", "", {}, []),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", {"base": 2, "scale": 0.5, "shift": 1}, []),
    ("Log", "log_param { shift: 2 }", {"shift": 2}, []),
    ("Log", "log_param { base: 10 scale: 2 shift: 3 }", {"base": 10, "scale": 2, "shift": 3}, []),
    ("Clip", "clip_param { min: -0.3 max: 0.6 }", {"min": -0.3, "max": 0.6}, [-0.3, 0.6]),
    ("Swish", "", {}, []),
    ("Swish", "swish_param { beta: 2.5 }", {"beta": 2.5}, []),
]
GRAD_IDS = [f"{c[0]}-{i}" for i, c in enumerate(GRAD_CASES)]


def away_from(x, kinks, margin=0.05):
    """x with every element within ``margin`` of a kink pushed out to the margin
    (finite differences across a kink mean nothing)."""
    x = x.copy()
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] = np.where(x[near] >= k, k + margin, k - margin)
    return x


def forward_backward(lay, x, dy, in_place=False, propagate=True):
    """Forward x, backward dy; returns (top data, bottom diff) copies."""
    (y,) = run_layer(lay, [x], in_place=in_place)
    bottoms, tops = wired(lay)
    tops[0].diff = dy.copy()
    lay.backward(tops, [propagate], bottoms)
    return y, bottoms[0].diff.copy()


@pytest.mark.parametrize("type_,params,ref,kinks", GRAD_CASES, ids=GRAD_IDS)
def test_backward_matches_reference(type_, params, ref, kinks):
    x = away_from(uniform(2, 3, 4, 5), kinks)
    dy = uniform(2, 3, 4, 5, seed=1)
    _, dx = forward_backward(neuron(type_, params), x, dy)
    assert dx.dtype == np.float32
    want = neuron_backward_reference(type_, x, dy, **ref)
    np.testing.assert_allclose(dx, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("type_,params,ref,kinks", GRAD_CASES, ids=GRAD_IDS)
def test_gradient_check(type_, params, ref, kinks):
    x = away_from(uniform(2, 3, 4, 5, seed=2), kinks)
    assert check_gradients(neuron(type_, params), [x], stepsize=2e-3) == x.size


@pytest.mark.parametrize("type_,params,ref,kinks", GRAD_CASES, ids=GRAD_IDS)
def test_in_place_backward_equals_out_of_place(type_, params, ref, kinks):
    x = away_from(uniform(3, 4, 5, seed=3), kinks)
    dy = uniform(3, 4, 5, seed=4)
    y, dx = forward_backward(neuron(type_, params), x, dy)
    y_in, dx_in = forward_backward(neuron(type_, params, top="x"), x, dy, in_place=True)
    np.testing.assert_array_equal(y_in, y)
    np.testing.assert_array_equal(dx_in, dx)


def test_backward_without_propagate_down_writes_nothing():
    lay = neuron("Sigmoid")
    x = uniform(3, 4)
    run_layer(lay, [x])
    bottoms, tops = wired(lay)
    bottoms[0].diff = np.full(x.shape, 7.0, np.float32)
    tops[0].diff = uniform(3, 4, seed=1)
    lay.backward(tops, [False], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, 7.0)


def test_relu_kink_takes_the_negative_slope():
    lay = neuron("ReLU", "relu_param { negative_slope: 0.25 }")
    x = np.array([-1.0, 0.0, 1.0, np.nan], np.float32)
    _, dx = forward_backward(lay, x, np.full(4, 2.0, np.float32))
    np.testing.assert_array_equal(dx, [0.5, 0.5, 2.0, 0.0])


def test_strided_diff_arrays_are_written():
    lay = neuron("TanH")
    x = uniform(4, 6)
    run_layer(lay, [x])
    bottoms, tops = wired(lay)
    dy = uniform(6, 4, seed=1).T                  # non-contiguous views
    storage = np.zeros((6, 4), np.float32)
    tops[0].diff, bottoms[0].diff = dy, storage.T
    lay.backward(tops, [True], bottoms)
    np.testing.assert_allclose(storage.T, neuron_backward_reference("TanH", x, dy),
                               rtol=1e-5, atol=1e-6)


def test_threshold_has_no_gradient():
    lay = neuron("Threshold", "threshold_param { threshold: 0.1 }", name="th", bottom="score")
    x = uniform(2, 3)
    run_layer(lay, [x])
    bottoms, tops = wired(lay)
    bottoms[0].diff = np.full(x.shape, 3.0, np.float32)
    lay.backward(tops, [False], bottoms)             # not asked: nothing happens
    np.testing.assert_array_equal(bottoms[0].diff, 3.0)
    with pytest.raises(GraphError) as err:
        lay.backward(tops, [True], bottoms)
    text = str(err.value)
    assert "layer 'th' (Threshold)" in text and "'score'" in text
    assert "propagate_down: false" in text


# ---- PReLU backward --------------------------------------------------------------
def prelu_layer(shared, in_place=False):
    return neuron("PReLU", f"prelu_param {{ channel_shared: {str(shared).lower()} }}",
                  top="x" if in_place else "y")


def prelu_forward_backward(shared, x, dy, slope, in_place=False, propagate=True):
    lay = prelu_layer(shared, in_place)
    infer_shapes(lay, [x.shape], in_place=in_place)
    lay.blobs[0].data = slope
    y, dx = forward_backward(lay, x, dy, in_place=in_place, propagate=propagate)
    return lay, y, dx


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 4, 2), (4, 3)])
def test_prelu_backward_matches_reference(shared, shape):
    x, dy = uniform(*shape), uniform(*shape, seed=1)
    slope = np.float32(0.3) if shared else uniform(3, seed=2, lo=-0.5, hi=0.5)
    lay, _, dx = prelu_forward_backward(shared, x, dy, slope)
    want_dx, want_slope = prelu_backward_reference(x, slope, dy)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lay.blobs[0].diff.reshape(-1), want_slope, rtol=1e-5, atol=1e-5)
    assert lay.blobs[0].diff.shape == (() if shared else (3,))
    # parameter diffs accumulate: a second backward adds the same again
    bottoms, tops = wired(lay)
    tops[0].diff = dy.copy()
    lay.backward(tops, [True], bottoms)
    np.testing.assert_allclose(lay.blobs[0].diff.reshape(-1), 2 * want_slope, rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_gradient_check(shared):
    x = away_from(uniform(2, 3, 3, 2, seed=5), [0.0])
    lay = prelu_layer(shared)
    infer_shapes(lay, [x.shape])
    lay.blobs[0].data = np.float32(0.2) if shared else np.array([0.25, -0.4, 0.7], np.float32)
    assert check_gradients(lay, [x]) == x.size + lay.blobs[0].count


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_in_place_backward_equals_out_of_place(shared):
    x, dy = uniform(2, 3, 4, seed=6), uniform(2, 3, 4, seed=7)
    slope = np.float32(-0.3) if shared else np.array([0.25, -0.4, 0.7], np.float32)
    out, y, dx = prelu_forward_backward(shared, x, dy, slope)
    inp, y_in, dx_in = prelu_forward_backward(shared, x, dy, slope, in_place=True)
    np.testing.assert_array_equal(y_in, y)
    np.testing.assert_array_equal(dx_in, dx)
    np.testing.assert_array_equal(inp.blobs[0].diff, out.blobs[0].diff)


def test_prelu_slope_gradient_alone_leaves_the_in_place_diff():
    x, dy = uniform(2, 3, 4), uniform(2, 3, 4, seed=1)
    slope = np.array([0.25, -0.4, 0.7], np.float32)
    lay, _, dx = prelu_forward_backward(False, x, dy, slope, in_place=True, propagate=False)
    np.testing.assert_array_equal(dx, dy)       # the shared top/bottom diff is untouched
    _, want_slope = prelu_backward_reference(x, slope, dy)
    np.testing.assert_allclose(lay.blobs[0].diff, want_slope, rtol=1e-5, atol=1e-5)
    lay.param_propagate_down = [False]
    bottoms, tops = wired(lay)
    before = lay.blobs[0].diff.copy()
    lay.backward(tops, [False], bottoms)
    np.testing.assert_array_equal(lay.blobs[0].diff, before)


# ---- Dropout backward ------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.5, 0.2])
def test_dropout_train_backward_uses_the_forward_mask(ratio):
    lay = neuron("Dropout", f"dropout_param {{ dropout_ratio: {ratio} }}", phase="TRAIN")
    x, dy = uniform(6, 50), uniform(6, 50, seed=1)
    y, dx = forward_backward(lay, x, dy)
    scale = np.float32(1.0 / (1.0 - ratio))
    np.testing.assert_array_equal(dx, dy * lay.mask * scale)
    np.testing.assert_array_equal(y, x * lay.mask * scale)
    assert 0 < lay.mask.sum() < lay.mask.size


@pytest.mark.parametrize("ratio", [0.5, 0.0])
def test_dropout_gradient_check_train(ratio):
    lay = neuron("Dropout", f"dropout_param {{ dropout_ratio: {ratio} }}", phase="TRAIN")
    x = uniform(3, 4, 5, seed=8)
    assert check_gradients(lay, [x]) == x.size


def test_dropout_test_phase_backward_is_identity():
    lay = neuron("Dropout", "dropout_param { dropout_ratio: 0.4 }")
    x, dy = uniform(3, 5), uniform(3, 5, seed=1)
    _, dx = forward_backward(lay, x, dy)
    np.testing.assert_array_equal(dx, dy)
    _, dx_in = forward_backward(neuron("Dropout", top="x"), x, dy, in_place=True)
    np.testing.assert_array_equal(dx_in, dy)
    assert check_gradients(neuron("Dropout"), [x]) == x.size


def test_dropout_in_place_backward_equals_out_of_place():
    x, dy = uniform(8, 9, seed=2), uniform(8, 9, seed=3)
    y, dx = forward_backward(neuron("Dropout", name="d", phase="TRAIN"), x, dy)
    y_in, dx_in = forward_backward(neuron("Dropout", name="d", phase="TRAIN", top="x"), x, dy,
                                   in_place=True)
    np.testing.assert_array_equal(y_in, y)
    np.testing.assert_array_equal(dx_in, dx)


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT", "0") != "0",
                    reason="no compiled signatures without the JIT")
def test_backward_kernels_compile_one_signature():
    for type_, params, _, _ in GRAD_CASES:
        for shape in [(2, 3), (2, 3, 4, 5)]:
            forward_backward(neuron(type_, params), uniform(*shape, lo=0.1), uniform(*shape))
    prelu_forward_backward(False, uniform(2, 3, 4), uniform(2, 3, 4), uniform(3))
    from netdef.kernels import compiled_signatures

    multi = {k: v for k, v in compiled_signatures().items()
             if k.startswith("elementwise.") and len(v) > 1}
    assert not multi
