"""BatchNorm, Scale, Bias and MVN against tests/reference.py."""
from __future__ import annotations

import os

import numpy as np
import pytest
from layer_harness import fill_params, infer_shapes, make_layer, run_layer, wired
from reference import batchnorm_reference, mvn_reference

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
