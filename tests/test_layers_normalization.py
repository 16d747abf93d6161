"""BatchNorm, Scale, Bias and MVN against tests/reference.py: forward,
backward, finite differences, and in place against out of place."""
from __future__ import annotations

import os

import numpy as np
import pytest
from layer_harness import check_gradients, fill_params, infer_shapes, make_layer, run_layer, wired
from reference import (affine_backward_reference, batchnorm_backward_reference,
                       batchnorm_reference, mvn_backward_reference, mvn_reference)

from netdef.blob import Blob

from netdef.errors import GraphError, ShapeError

RTOL, ATOL = 1e-4, 1e-5


def layer(type_name, body="", bottoms=("data",), name="L", phase="TEST", top="out"):
    wiring = " ".join(f'bottom: "{b}"' for b in bottoms)
    return make_layer(f'layer {{ name: "{name}" type: "{type_name}" {wiring} top: "{top}" '
                      f'{body} }}', phase)


def rand(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def set_stats(lay, mean, var, factor):
    lay.blobs[0].data = mean
    lay.blobs[1].data = var
    lay.blobs[2].data = np.array([factor], np.float32)


# -------------------------------------------------------------- BatchNorm ----
def test_batchnorm_blobs_are_stored_not_learned():
    lay = layer("BatchNorm")
    assert infer_shapes(lay, [(2, 5, 3, 3)]) == [(2, 5, 3, 3)]
    assert [b.shape for b in lay.blobs] == [(5,), (5,), (1,)]
    assert lay.learnable == [False] * 3
    assert lay.num_params == 0 and lay.num_stored == 11
    assert all((f.type, f.value) == ("constant", 0.0) for f in lay.fillers)
    assert lay.use_global_stats and lay.macs(*wired(lay)) == 0
    train = layer("BatchNorm", phase="TRAIN")
    infer_shapes(train, [(2, 5)])
    assert not train.use_global_stats


@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (6, 3), (2, 3, 4)])
@pytest.mark.parametrize("factor", [1.0, 2.5, 0.0])
def test_batchnorm_global_stats(shape, factor):
    c = shape[1]
    mean, var = rand(c, seed=2), np.abs(rand(c, seed=3)) + 0.5
    lay = layer("BatchNorm", "batch_norm_param { eps: 0.001 }")
    infer_shapes(lay, [shape])
    set_stats(lay, mean, var, factor)
    x = rand(*shape)
    (y,) = run_layer(lay, [x])
    ref = batchnorm_reference(x, mean, var, eps=1e-3, scale_factor=factor)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)


def test_batchnorm_train_uses_batch_stats_and_updates_moving_averages():
    lay = layer("BatchNorm", "batch_norm_param { moving_average_fraction: 0.9 }", phase="TRAIN")
    x = rand(3, 4, 5, 2)
    infer_shapes(lay, [x.shape])
    assert not lay.use_global_stats
    (y,) = run_layer(lay, [x])
    np.testing.assert_allclose(y, batchnorm_reference(x), rtol=RTOL, atol=1e-4)
    m = 3 * 5 * 2
    x64 = x.astype(np.float64)
    mean1, var1 = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    np.testing.assert_allclose(lay.blobs[2].data, [1.0])
    np.testing.assert_allclose(lay.blobs[0].data, mean1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lay.blobs[1].data, var1 * m / (m - 1), rtol=1e-5)
    x2 = rand(3, 4, 5, 2, seed=9) * 2 + 1
    run_layer(lay, [x2])
    x2 = x2.astype(np.float64)
    mean2, var2 = x2.mean(axis=(0, 2, 3)), x2.var(axis=(0, 2, 3))
    np.testing.assert_allclose(lay.blobs[2].data, [0.9 * 1 + 1], rtol=1e-6)
    np.testing.assert_allclose(lay.blobs[0].data, 0.9 * mean1 + mean2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lay.blobs[1].data, 0.9 * var1 * m / (m - 1) + var2 * m / (m - 1),
                               rtol=1e-5)
    # the stored statistics, divided by the factor, reproduce a TEST forward
    test = layer("BatchNorm")
    infer_shapes(test, [x.shape])
    set_stats(test, *(b.data for b in lay.blobs[:2]), float(lay.blobs[2].data[0]))
    (yt,) = run_layer(test, [x])
    f = 1.9
    ref = batchnorm_reference(x, lay.blobs[0].data / f, lay.blobs[1].data / f)
    np.testing.assert_allclose(yt, ref, rtol=RTOL, atol=1e-4)


def test_batchnorm_explicit_use_global_stats_and_in_place():
    lay = layer("BatchNorm", "batch_norm_param { use_global_stats: true }", phase="TRAIN",
                top="data")
    x = rand(2, 3, 2, 2)
    infer_shapes(lay, [x.shape], in_place=True)
    assert lay.use_global_stats
    set_stats(lay, rand(3, seed=4), np.ones(3, np.float32), 1.0)
    (y,) = run_layer(lay, [x], in_place=True)
    ref = batchnorm_reference(x, lay.blobs[0].data, lay.blobs[1].data)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=ATOL)
    off = layer("BatchNorm", "batch_norm_param { use_global_stats: false }")
    infer_shapes(off, [x.shape])
    assert not off.use_global_stats
    (y2,) = run_layer(off, [x])
    np.testing.assert_allclose(y2, batchnorm_reference(x), rtol=RTOL, atol=1e-4)


def test_batchnorm_channel_change_is_shape_error():
    lay = layer("BatchNorm", name="bn1", bottoms=("conv1",))
    infer_shapes(lay, [(1, 4, 2, 2)])
    with pytest.raises(ShapeError) as err:
        infer_shapes(lay, [(1, 5, 2, 2)])
    assert "layer 'bn1' (BatchNorm)" in str(err.value)
    assert "'conv1' (1, 5, 2, 2)" in str(err.value)


# ------------------------------------------------------------ Scale/Bias ----
def affine_reference(x, s, b, axis):
    """x * s + b with s, b aligned to x's axes from ``axis``."""
    s = np.asarray(s, np.float64)
    b = np.asarray(b, np.float64)
    pad = (1,) * axis

    def align(v):
        return v.reshape(pad + v.shape + (1,) * (x.ndim - axis - v.ndim))
    return x.astype(np.float64) * align(s) + align(b)


@pytest.mark.parametrize("axis,num_axes,operand,ref_axis", [
    (1, 1, (3,), 1),
    (1, 2, (3, 4), 1),
    (1, -1, (3, 4, 5), 1),
    (1, 0, (), 0),
    (-1, 1, (5,), 3),
    (0, 1, (2,), 0),
    (2, -1, (4, 5), 2),
])
@pytest.mark.parametrize("bias_term", [False, True])
def test_scale_learned(axis, num_axes, operand, ref_axis, bias_term):
    body = (f"scale_param {{ axis: {axis} num_axes: {num_axes} "
            f"bias_term: {str(bias_term).lower()} }}")
    lay = layer("Scale", body)
    shape = (2, 3, 4, 5)
    assert infer_shapes(lay, [shape]) == [shape]
    assert [b.shape for b in lay.blobs] == [operand] * (2 if bias_term else 1)
    assert lay.fillers[0].type == "constant" and lay.fillers[0].value == 1.0
    if bias_term:
        assert (lay.fillers[1].type, lay.fillers[1].value) == ("constant", 0.0)
    assert lay.num_params == int(np.prod(operand)) * (2 if bias_term else 1)
    blobs = fill_params(lay)
    x = rand(*shape)
    (y,) = run_layer(lay, [x])
    b = blobs[1] if bias_term else np.zeros(operand)
    np.testing.assert_allclose(y, affine_reference(x, blobs[0], b, ref_axis), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("axis,operand,ref_axis", [
    (1, (3,), 1), (1, (3, 4), 1), (0, (2, 3, 4, 5), 0), (-2, (4, 5), 2), (1, (), 0), (3, (), 0),
])
def test_scale_two_bottoms(axis, operand, ref_axis):
    lay = layer("Scale", f"scale_param {{ axis: {axis} bias_term: true }}",
                bottoms=("data", "gamma"))
    shape = (2, 3, 4, 5)
    assert infer_shapes(lay, [shape, operand]) == [shape]
    assert [b.shape for b in lay.blobs] == [operand]          # only the bias is learned
    (bias,) = fill_params(lay)
    x, s = rand(*shape), rand(*operand, seed=7)
    (y,) = run_layer(lay, [x, s])
    np.testing.assert_allclose(y, affine_reference(x, s, bias, ref_axis), rtol=RTOL, atol=ATOL)


def test_scale_in_place():
    lay = layer("Scale", "scale_param { bias_term: true }", top="data")
    x = rand(2, 3, 2, 2)
    infer_shapes(lay, [x.shape], in_place=True)
    s, b = fill_params(lay)
    (y,) = run_layer(lay, [x], in_place=True)
    np.testing.assert_allclose(y, affine_reference(x, s, b, 1), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("type_name", ["Scale", "Bias"])
def test_operand_shape_mismatch(type_name):
    field = type_name.lower() + "_param"
    lay = layer(type_name, f"{field} {{ axis: 1 }}", bottoms=("data", "op"), name="sc")
    with pytest.raises(ShapeError) as err:
        infer_shapes(lay, [(2, 3, 4, 5), (4,)])
    text = str(err.value)
    assert f"layer 'sc' ({type_name})" in text and "'op' (4)" in text
    assert "'data' (2, 3, 4, 5)" in text and "which are (3)" in text
    too_many = layer(type_name, f"{field} {{ axis: 2 num_axes: 3 }}", name="sc")
    with pytest.raises(ShapeError) as err:
        infer_shapes(too_many, [(2, 3, 4, 5)])
    assert "num_axes 3" in str(err.value)
    bad = layer(type_name, f"{field} {{ num_axes: -2 }}", name="sc")
    with pytest.raises(GraphError) as err:
        infer_shapes(bad, [(2, 3, 4, 5)])
    assert "num_axes must be >= 0" in str(err.value)


@pytest.mark.parametrize("axis,num_axes,operand,ref_axis", [
    (1, 1, (3,), 1), (1, -1, (3, 4, 5), 1), (1, 0, (), 0), (-1, 1, (5,), 3),
])
def test_bias_learned(axis, num_axes, operand, ref_axis):
    lay = layer("Bias", f"bias_param {{ axis: {axis} num_axes: {num_axes} }}")
    shape = (2, 3, 4, 5)
    assert infer_shapes(lay, [shape]) == [shape]
    assert [b.shape for b in lay.blobs] == [operand] and lay.learnable == [True]
    assert (lay.fillers[0].type, lay.fillers[0].value) == ("constant", 0.0)
    (b,) = fill_params(lay)
    x = rand(*shape)
    (y,) = run_layer(lay, [x])
    np.testing.assert_allclose(y, affine_reference(x, np.ones(operand), b, ref_axis),
                               rtol=RTOL, atol=ATOL)


def test_bias_two_bottoms():
    lay = layer("Bias", bottoms=("data", "b"))
    x, b = rand(2, 3, 4), rand(3, 4, seed=3)
    (y,) = run_layer(lay, [x, b])
    assert lay.blobs == []
    np.testing.assert_allclose(y, x + b[None], rtol=1e-6)


# -------------------------------------------------------------------- MVN ----
@pytest.mark.parametrize("normalize_variance", [True, False])
@pytest.mark.parametrize("across_channels", [True, False])
def test_mvn_matches_reference(normalize_variance, across_channels):
    body = (f"mvn_param {{ normalize_variance: {str(normalize_variance).lower()} "
            f"across_channels: {str(across_channels).lower()} eps: 0.001 }}")
    lay = layer("MVN", body)
    x = rand(2, 3, 4, 5) * 3 + 1
    assert infer_shapes(lay, [x.shape]) == [x.shape]
    (y,) = run_layer(lay, [x])
    ref = mvn_reference(x, normalize_variance, across_channels, eps=1e-3)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=1e-4)
    assert lay.blobs == []


def test_mvn_default_eps_and_2d_bottom():
    lay = layer("MVN", "mvn_param { across_channels: true }")
    assert lay.param.mvn_param.eps == pytest.approx(1e-9)
    x = rand(4, 6)
    (y,) = run_layer(lay, [x])
    ref = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-9)
    np.testing.assert_allclose(y, ref, rtol=RTOL, atol=1e-4)


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT", "0") != "0",
                    reason="no compiled signatures without the JIT")
def test_normalization_kernels_compile_one_signature():
    x = rand(2, 3, 4, 5)
    for lay in (layer("BatchNorm"), layer("BatchNorm", phase="TRAIN"), layer("Scale"),
                layer("Bias"), layer("MVN")):
        run_layer(lay, [x])
    from netdef.kernels import compiled_signatures

    sigs = compiled_signatures()
    for name in ("normalization.channel_affine", "normalization.channel_mean_var",
                 "normalization.mvn_forward"):
        assert len(sigs[name]) == 1, (name, sigs[name])


# ================================================================ backward ====
def forward_backward(lay, xs, dy, in_place=False, propagate=None):
    """Forward the bottoms ``xs``, backward ``dy``; (top, [bottom diffs]) copies."""
    (y,) = run_layer(lay, xs, in_place=in_place)
    bottoms, tops = wired(lay)
    tops[0].diff = dy.copy()
    propagate = [True] * len(xs) if propagate is None else propagate
    lay.backward(tops, propagate, bottoms)
    return y, [b.diff.copy() for b in bottoms]


# -------------------------------------------------------------- BatchNorm ----
@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (6, 3), (2, 3, 4)])
@pytest.mark.parametrize("mode", ["batch", "global"])
def test_batchnorm_backward_matches_reference(shape, mode):
    c = shape[1]
    x, dy = rand(*shape) * 2 + 0.5, rand(*shape, seed=5)
    if mode == "batch":
        lay = layer("BatchNorm", "batch_norm_param { eps: 0.001 }", phase="TRAIN")
        _, (dx,) = forward_backward(lay, [x], dy)
        want = batchnorm_backward_reference(x, dy, eps=1e-3)
    else:
        lay = layer("BatchNorm", "batch_norm_param { eps: 0.001 }")
        infer_shapes(lay, [shape])
        mean, var = rand(c, seed=2), np.abs(rand(c, seed=3)) + 0.5
        set_stats(lay, mean, var, 2.5)
        _, (dx,) = forward_backward(lay, [x], dy)
        want = batchnorm_backward_reference(x, dy, eps=1e-3, var=var / 2.5)
    np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 2, 3), (5, 2)])
def test_batchnorm_gradient_check_train(shape):
    lay = layer("BatchNorm", "batch_norm_param { eps: 0.001 }", phase="TRAIN")
    x = rand(*shape, seed=6) * 2 + 1
    count = x.size
    # 1/2 sum(y^2) is nearly constant for batch-normalised y: check single outputs
    for element in (0, count // 2 + 1, count - 1):
        assert check_gradients(lay, [x], top_index=0, top_element=element) == count
    assert check_gradients(lay, [x]) == count
    # the moving averages moved at every checker forward, yet never reached the diffs
    assert float(lay.blobs[2].data[0]) > 1.0
    assert all(not b.diff.any() for b in lay.blobs)


@pytest.mark.parametrize("factor", [2.5, 0.0])
def test_batchnorm_gradient_check_global_stats(factor):
    lay = layer("BatchNorm", "batch_norm_param { use_global_stats: true }", phase="TRAIN")
    infer_shapes(lay, [(2, 3, 2, 3)])
    set_stats(lay, rand(3, seed=2), np.abs(rand(3, seed=3)) + 0.5, factor)
    assert check_gradients(lay, [rand(2, 3, 2, 3, seed=7)]) == 36


def test_batchnorm_train_output_ignores_the_drifting_statistics():
    lay = layer("BatchNorm", "batch_norm_param { moving_average_fraction: 0.5 }",
                phase="TRAIN")
    x = rand(3, 2, 4)
    first = run_layer(lay, [x])[0]
    stored = [b.data.copy() for b in lay.blobs]
    second = run_layer(lay, [x])[0]
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(stored[2], lay.blobs[2].data)     # the factor moved on


def test_batchnorm_backward_never_touches_the_stored_blobs():
    lay = layer("BatchNorm", phase="TRAIN")
    x, dy = rand(2, 3, 4), rand(2, 3, 4, seed=2)
    infer_shapes(lay, [x.shape])
    assert lay.param_propagate_down == [False] * 3
    lay.param_propagate_down = [True] * 3       # even when asked, as the checker does
    for b in lay.blobs:
        b.diff = np.full(b.shape, 5.0, np.float32)
    run_layer(lay, [x])
    data = [b.data.copy() for b in lay.blobs]
    bottoms, tops = wired(lay)
    tops[0].diff = dy
    lay.backward(tops, [True], bottoms)
    for b, d in zip(lay.blobs, data):
        np.testing.assert_array_equal(b.diff, 5.0)
        np.testing.assert_array_equal(b.data, d)


@pytest.mark.parametrize("phase,body", [("TRAIN", ""), ("TEST", "")])
def test_batchnorm_in_place_backward_equals_out_of_place(phase, body):
    x, dy = rand(2, 3, 2, 2) * 3, rand(2, 3, 2, 2, seed=4)

    def run(in_place):
        lay = layer("BatchNorm", body, phase=phase, top="data" if in_place else "out")
        infer_shapes(lay, [x.shape], in_place=in_place)
        set_stats(lay, rand(3, seed=4), np.ones(3, np.float32) * 2, 2.0)
        return forward_backward(lay, [x], dy, in_place=in_place)

    y, (dx,) = run(False)
    y_in, (dx_in,) = run(True)
    np.testing.assert_array_equal(y_in, y)
    np.testing.assert_array_equal(dx_in, dx)


def test_batchnorm_scale_relu_chain_in_place():
    """ResNet's conv -> BatchNorm -> Scale -> ReLU, the last three in place on one
    blob: each layer's top is overwritten by the next, and backward still gives
    the out-of-place gradients (BatchNorm keeps y, Scale keeps its input)."""
    x, dy = rand(2, 3, 2, 2) * 2 + 1, rand(2, 3, 2, 2, seed=3)
    gamma, beta = np.array([0.5, -1.5, 2.0], np.float32), np.array([0.1, 0.0, -0.3], np.float32)

    def run(in_place):
        names = ["data"] * 4 if in_place else ["data", "bn", "sc", "relu"]
        blobs = [Blob(x.shape, name=n) for n in names]
        if in_place:
            blobs = [blobs[0]] * 4
        chain = [layer("BatchNorm", phase="TRAIN", top=names[1]),
                 layer("Scale", "scale_param { bias_term: true }", bottoms=(names[1],),
                       top=names[2], phase="TRAIN"),
                 layer("ReLU", bottoms=(names[2],), top=names[3], phase="TRAIN")]
        for lay, (b, t) in zip(chain, zip(blobs[:-1], blobs[1:])):
            lay.layer_setup([b], [t])
        chain[1].blobs[0].data, chain[1].blobs[1].data = gamma, beta
        blobs[0].data = x.copy()
        for lay, (b, t) in zip(chain, zip(blobs[:-1], blobs[1:])):
            lay.forward([b], [t])
        y = blobs[-1].data.copy()
        blobs[-1].diff = dy.copy()
        for lay, (b, t) in reversed(list(zip(chain, zip(blobs[:-1], blobs[1:])))):
            lay.backward([t], [True], [b])
        return y, blobs[0].diff.copy(), [d.diff.copy() for d in chain[1].blobs]

    y, dx, (dgamma, dbeta) = run(False)
    y_in, dx_in, (dgamma_in, dbeta_in) = run(True)
    np.testing.assert_array_equal(y_in, y)
    np.testing.assert_allclose(dx_in, dx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dgamma_in, dgamma, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dbeta_in, dbeta, rtol=1e-6, atol=1e-7)
    assert np.abs(dgamma).sum() > 0 and np.abs(dx).sum() > 0


# ------------------------------------------------------------ Scale/Bias ----
SCALE_CASES = [(1, 1, (3,), 1), (1, 2, (3, 4), 1), (1, 0, (), 0), (-1, 1, (5,), 3),
               (0, -1, (2, 3, 4, 5), 0)]


@pytest.mark.parametrize("axis,num_axes,operand,ref_axis", SCALE_CASES)
@pytest.mark.parametrize("bias_term", [False, True])
def test_scale_backward_matches_reference(axis, num_axes, operand, ref_axis, bias_term):
    body = (f"scale_param {{ axis: {axis} num_axes: {num_axes} "
            f"bias_term: {str(bias_term).lower()} }}")
    lay = layer("Scale", body)
    shape = (2, 3, 4, 5)
    infer_shapes(lay, [shape])
    blobs = fill_params(lay)
    x, dy = rand(*shape), rand(*shape, seed=2)
    _, (dx,) = forward_backward(lay, [x], dy)
    want_dx, want_ds, want_db = affine_backward_reference(x, blobs[0], dy, ref_axis)
    np.testing.assert_allclose(dx, want_dx, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(lay.blobs[0].diff, want_ds, rtol=RTOL, atol=1e-4)
    if bias_term:
        np.testing.assert_allclose(lay.blobs[1].diff, want_db, rtol=RTOL, atol=1e-4)
    # parameter diffs accumulate
    bottoms, tops = wired(lay)
    tops[0].diff = dy.copy()
    lay.backward(tops, [True], bottoms)
    np.testing.assert_allclose(lay.blobs[0].diff, 2 * want_ds, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("axis,operand,ref_axis", [(1, (3,), 1), (-2, (4, 5), 2), (1, (), 0)])
def test_scale_two_bottoms_backward(axis, operand, ref_axis):
    lay = layer("Scale", f"scale_param {{ axis: {axis} bias_term: true }}",
                bottoms=("data", "gamma"))
    shape = (2, 3, 4, 5)
    infer_shapes(lay, [shape, operand])
    fill_params(lay)
    x, s, dy = rand(*shape), rand(*operand, seed=7), rand(*shape, seed=8)
    _, (dx, ds) = forward_backward(lay, [x, s], dy)
    want_dx, want_ds, want_db = affine_backward_reference(x, s, dy, ref_axis)
    np.testing.assert_allclose(dx, want_dx, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ds, want_ds, rtol=RTOL, atol=1e-4)
    np.testing.assert_allclose(lay.blobs[0].diff, want_db, rtol=RTOL, atol=1e-4)
    # bottom 1's diff is overwritten, not accumulated
    _, (_, ds2) = forward_backward(lay, [x, s], dy)
    np.testing.assert_allclose(ds2, want_ds, rtol=RTOL, atol=1e-4)


@pytest.mark.parametrize("axis,num_axes", [(1, 1), (1, 2), (1, 0), (-1, 1)])
@pytest.mark.parametrize("bias_term", [False, True])
def test_scale_gradient_check(axis, num_axes, bias_term):
    body = (f"scale_param {{ axis: {axis} num_axes: {num_axes} "
            f"bias_term: {str(bias_term).lower()} }}")
    lay = layer("Scale", body)
    infer_shapes(lay, [(2, 3, 4, 2)])
    fill_params(lay, seed=3)
    n_params = sum(b.count for b in lay.blobs)
    assert check_gradients(lay, [rand(2, 3, 4, 2, seed=4)]) == 48 + n_params


@pytest.mark.parametrize("operand", [(3, 4), ()])
def test_scale_two_bottoms_gradient_check(operand):
    lay = layer("Scale", "scale_param { axis: 1 bias_term: true }", bottoms=("data", "gamma"))
    infer_shapes(lay, [(2, 3, 4, 2), operand])
    fill_params(lay, seed=3)
    x, s = rand(2, 3, 4, 2, seed=4), rand(*operand, seed=5)
    n = check_gradients(lay, [x, s])
    assert n == x.size + s.size + lay.blobs[0].count


@pytest.mark.parametrize("two_bottoms", [False, True])
def test_scale_in_place_backward_equals_out_of_place(two_bottoms):
    x, dy, s = rand(2, 3, 2, 2), rand(2, 3, 2, 2, seed=2), rand(3, seed=3)

    def run(in_place):
        bottoms = ("data", "gamma") if two_bottoms else ("data",)
        lay = layer("Scale", "scale_param { bias_term: true }", bottoms=bottoms,
                    top="data" if in_place else "out")
        infer_shapes(lay, [x.shape] + ([s.shape] if two_bottoms else []), in_place=in_place)
        fill_params(lay, seed=5)
        if not two_bottoms:
            lay.blobs[0].data = s
        y, diffs = forward_backward(lay, [x, s] if two_bottoms else [x], dy, in_place=in_place)
        return y, diffs, [b.diff.copy() for b in lay.blobs]

    y, diffs, params = run(False)
    y_in, diffs_in, params_in = run(True)
    np.testing.assert_array_equal(y_in, y)
    for a, b in zip(diffs_in + params_in, diffs + params):
        np.testing.assert_array_equal(a, b)


def test_scale_frozen_in_place_keeps_no_copy_and_no_diff():
    lay = layer("Scale", top="data")
    x = rand(2, 3, 2)
    infer_shapes(lay, [x.shape], in_place=True)
    lay.param_propagate_down = [False]
    fill_params(lay)
    _, (dx,) = forward_backward(lay, [x], rand(2, 3, 2, seed=2), in_place=True)
    assert lay._input_copy is None
    assert not lay.blobs[0].diff.any()
    np.testing.assert_allclose(dx, rand(2, 3, 2, seed=2) * lay.blobs[0].data[None, :, None],
                               rtol=1e-6)


@pytest.mark.parametrize("axis,num_axes,operand,ref_axis", SCALE_CASES)
def test_bias_backward_and_gradient_check(axis, num_axes, operand, ref_axis):
    lay = layer("Bias", f"bias_param {{ axis: {axis} num_axes: {num_axes} }}")
    shape = (2, 3, 4, 5)
    infer_shapes(lay, [shape])
    fill_params(lay)
    x, dy = rand(*shape), rand(*shape, seed=2)
    _, (dx,) = forward_backward(lay, [x], dy)
    _, _, want_db = affine_backward_reference(x, np.ones(operand), dy, ref_axis)
    np.testing.assert_array_equal(dx, dy)
    np.testing.assert_allclose(lay.blobs[0].diff, want_db, rtol=RTOL, atol=1e-4)
    small = layer("Bias", f"bias_param {{ axis: {axis} num_axes: {num_axes} }}")
    infer_shapes(small, [(2, 3, 4, 5)])
    fill_params(small)
    assert check_gradients(small, [x]) == x.size + small.blobs[0].count


def test_bias_two_bottoms_backward_and_in_place():
    x, b, dy = rand(2, 3, 4), rand(3, 4, seed=3), rand(2, 3, 4, seed=4)
    lay = layer("Bias", bottoms=("data", "b"))
    _, (dx, db) = forward_backward(lay, [x, b], dy)
    np.testing.assert_array_equal(dx, dy)
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-6)
    assert check_gradients(layer("Bias", bottoms=("data", "b")), [x, b]) == x.size + b.size
    inp = layer("Bias", bottoms=("data", "b"), top="data")
    y_in, (dx_in, db_in) = forward_backward(inp, [x, b], dy, in_place=True)
    np.testing.assert_allclose(y_in, x + b[None], rtol=1e-6)
    np.testing.assert_array_equal(dx_in, dy)
    np.testing.assert_array_equal(db_in, db)


# -------------------------------------------------------------------- MVN ----
MVN_CASES = [(True, False), (True, True), (False, False), (False, True)]


@pytest.mark.parametrize("normalize_variance,across_channels", MVN_CASES)
def test_mvn_backward_matches_reference(normalize_variance, across_channels):
    body = (f"mvn_param {{ normalize_variance: {str(normalize_variance).lower()} "
            f"across_channels: {str(across_channels).lower()} eps: 0.001 }}")
    x, dy = rand(2, 3, 4, 5) * 3 + 1, rand(2, 3, 4, 5, seed=2)
    _, (dx,) = forward_backward(layer("MVN", body), [x], dy)
    want = mvn_backward_reference(x, dy, normalize_variance, across_channels, eps=1e-3)
    np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("normalize_variance,across_channels", MVN_CASES)
def test_mvn_gradient_check(normalize_variance, across_channels):
    body = (f"mvn_param {{ normalize_variance: {str(normalize_variance).lower()} "
            f"across_channels: {str(across_channels).lower()} }}")
    lay = layer("MVN", body)
    x = rand(2, 2, 3, 3, seed=3) * 2 + 1
    # with normalize_variance, 1/2 sum(y^2) is constant per row: check single outputs too
    for element in (0, 20):
        assert check_gradients(lay, [x], top_index=0, top_element=element) == x.size
    assert check_gradients(lay, [x]) == x.size


@pytest.mark.parametrize("normalize_variance,across_channels", MVN_CASES)
def test_mvn_in_place_backward_equals_out_of_place(normalize_variance, across_channels):
    body = (f"mvn_param {{ normalize_variance: {str(normalize_variance).lower()} "
            f"across_channels: {str(across_channels).lower()} }}")
    x, dy = rand(2, 3, 2, 2) * 2, rand(2, 3, 2, 2, seed=2)
    y, (dx,) = forward_backward(layer("MVN", body), [x], dy)
    y_in, (dx_in,) = forward_backward(layer("MVN", body, top="data"), [x], dy, in_place=True)
    np.testing.assert_array_equal(y_in, y)
    np.testing.assert_array_equal(dx_in, dx)


@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT", "0") != "0",
                    reason="no compiled signatures without the JIT")
def test_normalization_backward_kernels_compile_one_signature():
    x = rand(2, 3, 4, 5)
    for lay in (layer("BatchNorm"), layer("BatchNorm", phase="TRAIN"), layer("Scale"),
                layer("Bias"), layer("MVN"), layer("Scale", "scale_param { num_axes: 0 }")):
        infer_shapes(lay, [x.shape])
        forward_backward(lay, [x], rand(2, 3, 4, 5, seed=2))
    from netdef.kernels import compiled_signatures

    sigs = compiled_signatures()
    for name in ("normalization.channel_sums", "normalization.channel_affine_pair",
                 "normalization.mvn_backward", "normalization.channel_affine"):
        assert len(sigs[name]) == 1, (name, sigs[name])
