"""Structure layers: Concat, Slice, Split, Flatten, Reshape, Crop, Tile,
Silence, Parameter, Eltwise, Reduction, Softmax, ArgMax -- shapes (Caffe's
rules and errors), forward against NumPy, and backward: finite differences,
the loop references of tests/reference.py, in place and aliased diffs."""
from __future__ import annotations

import numpy as np
import pytest
from layer_harness import check_gradients, fill_params, infer_shapes, make_layer, run_layer, wired
from reference import (
    concat_backward_reference,
    crop_backward_reference,
    eltwise_backward_reference,
    reduction_backward_reference,
    reduction_reference,
    softmax_backward_reference,
    softmax_reference,
    tile_backward_reference,
)

from netdef.errors import GraphError, NetdefError, ShapeError


def layer(type_, params="", bottoms=("x",), tops=("y",), name="L"):
    text = " ".join(f'bottom: "{b}"' for b in bottoms) + " " + " ".join(f'top: "{t}"' for t in tops)
    return make_layer(f'layer {{ name: "{name}" type: "{type_}" {text} {params} }}')


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ---- Concat / Slice ------------------------------------------------------------
@pytest.mark.parametrize("params,shapes,expected,axis", [
    ("", [(2, 3, 4), (2, 5, 4)], (2, 8, 4), 1),
    ("concat_param { axis: 0 }", [(1, 3), (4, 3), (2, 3)], (7, 3), 0),
    ("concat_param { axis: -1 }", [(2, 3, 1), (2, 3, 6)], (2, 3, 7), 2),
    ("concat_param { concat_dim: 2 }", [(2, 3, 1, 5), (2, 3, 2, 5)], (2, 3, 3, 5), 2),
    ("", [(2, 3)], (2, 3), 1),
])
def test_concat(params, shapes, expected, axis):
    names = [f"b{i}" for i in range(len(shapes))]
    lay = layer("Concat", params, bottoms=names)
    assert infer_shapes(lay, shapes) == [expected]
    xs = [rand(*s, seed=i) for i, s in enumerate(shapes)]
    (y,) = run_layer(lay, xs)
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=axis))


def test_concat_mismatch_lists_every_bottom():
    lay = layer("Concat", bottoms=("a", "b", "c"), name="cat")
    with pytest.raises(ShapeError) as err:
        infer_shapes(lay, [(2, 3, 4), (2, 5, 4), (2, 5, 3)])
    text = str(err.value)
    assert "layer 'cat' (Concat)" in text and "except along axis 1" in text
    for part in ("'a' (2, 3, 4)", "'b' (2, 5, 4)", "'c' (2, 5, 3)"):
        assert part in text
    with pytest.raises(ShapeError, match="same shape except"):
        infer_shapes(layer("Concat", bottoms=("a", "b")), [(2, 3), (2, 3, 1)])


def test_concat_axis_errors():
    with pytest.raises(GraphError, match="either axis or concat_dim"):
        infer_shapes(layer("Concat", "concat_param { axis: 1 concat_dim: 1 }", ("a", "b")),
                     [(1, 2), (1, 2)])
    with pytest.raises(ShapeError, match="axis 3 is out of range for a 2-axis bottom"):
        infer_shapes(layer("Concat", "concat_param { axis: 3 }", ("a", "b")), [(1, 2), (1, 2)])


@pytest.mark.parametrize("params,shape,tops", [
    ("slice_param { slice_point: 1 slice_point: 4 }", (2, 6, 3), [(2, 1, 3), (2, 3, 3), (2, 2, 3)]),
    ("", (2, 6, 3), [(2, 2, 3)] * 3),
    ("slice_param { axis: -1 }", (2, 6, 4), [(2, 6, 2), (2, 6, 2)]),
    ("slice_param { slice_dim: 0 slice_point: 3 }", (5, 2), [(3, 2), (2, 2)]),
])
def test_slice_and_concat_round_trip(params, shape, tops):
    names = [f"t{i}" for i in range(len(tops))]
    sl = layer("Slice", params, tops=names)
    assert infer_shapes(sl, [shape]) == tops
    x = rand(*shape)
    parts = run_layer(sl, [x])
    axis = next(i for i in range(len(shape)) if tops[0][i] != shape[i])
    cat = layer("Concat", f"concat_param {{ axis: {axis} }}", bottoms=names)
    (back,) = run_layer(cat, parts)
    np.testing.assert_array_equal(back, x)


@pytest.mark.parametrize("params,ntops,error,message", [
    ("slice_param { slice_point: 2 }", 3, GraphError, "1 slice_point"),
    ("slice_param { slice_point: 3 slice_point: 2 }", 3, ShapeError, "non-empty increasing"),
    ("slice_param { slice_point: 6 }", 2, ShapeError, "non-empty increasing"),
    ("slice_param { slice_point: 0 }", 2, ShapeError, "non-empty increasing"),
    ("", 4, ShapeError, "cannot be split into 4 equal parts"),
    ("slice_param { axis: 1 slice_dim: 1 }", 2, GraphError, "either axis or slice_dim"),
])
def test_slice_errors(params, ntops, error, message):
    lay = layer("Slice", params, tops=[f"t{i}" for i in range(ntops)], name="sl")
    with pytest.raises(error, match=message) as err:
        infer_shapes(lay, [(2, 6)])
    assert "layer 'sl' (Slice)" in str(err.value)


# ---- Split / Flatten / Reshape -------------------------------------------------
def test_split_copies_or_aliases():
    lay = layer("Split", tops=("a", "b", "c"))
    assert infer_shapes(lay, [(2, 3)]) == [(2, 3)] * 3
    assert lay.shares_data and lay.kind == "structure"
    x = rand(2, 3)
    for y in run_layer(lay, [x]):
        np.testing.assert_array_equal(y, x)
    bottoms, tops = wired(lay)
    for top in tops:                          # what the memory planner does
        top.share_data(bottoms[0])
    bottoms[0].data[...] = 5.0
    lay.forward(bottoms, tops)
    assert all(np.shares_memory(t.data, bottoms[0].data) and (t.data == 5).all() for t in tops)


@pytest.mark.parametrize("type_", ["Split", "Flatten", "Reshape"])
def test_no_in_place(type_):
    lay = layer(type_, "reshape_param { shape { dim: -1 } }" if type_ == "Reshape" else "",
                tops=("x",), name="r")
    with pytest.raises(GraphError, match="cannot run in place"):
        infer_shapes(lay, [(2, 3)], in_place=True)


@pytest.mark.parametrize("params,shape,expected", [
    ("", (2, 3, 4, 5), (2, 60)),
    ("flatten_param { axis: 2 }", (2, 3, 4, 5), (2, 3, 20)),
    ("flatten_param { axis: 0 end_axis: -2 }", (2, 3, 4, 5), (24, 5)),
    ("flatten_param { axis: 1 end_axis: 1 }", (2, 3, 4), (2, 3, 4)),
    ("flatten_param { axis: 0 }", (7,), (7,)),
])
def test_flatten(params, shape, expected):
    lay = layer("Flatten", params)
    assert infer_shapes(lay, [shape]) == [expected]
    x = rand(*shape)
    (y,) = run_layer(lay, [x])
    np.testing.assert_array_equal(y, x.reshape(expected))


def test_flatten_errors():
    with pytest.raises(ShapeError, match="comes before"):
        infer_shapes(layer("Flatten", "flatten_param { axis: 2 end_axis: 1 }"), [(2, 3, 4)])
    with pytest.raises(ShapeError, match="end_axis 5 is out of range"):
        infer_shapes(layer("Flatten", "flatten_param { end_axis: 5 }"), [(2, 3, 4)])


def reshape_layer(dims, extra=""):
    shape = " ".join(f"dim: {d}" for d in dims)
    return layer("Reshape", f"reshape_param {{ shape {{ {shape} }} {extra} }}", name="rs")


@pytest.mark.parametrize("dims,extra,expected", [
    ([6, 2, 3, 5], "", (6, 2, 3, 5)),
    ([0, -1], "", (2, 90)),
    ([-1, 0, 0], "", (10, 3, 6)),
    ([0, 0, 0, 0], "", (2, 3, 6, 5)),
    ([0, 3, -1, 5, 1], "", (2, 3, 6, 5, 1)),
    ([1, 1, 1], "axis: 0 num_axes: 0", (1, 1, 1, 2, 3, 6, 5)),
    ([1, 1, 1], "axis: 2 num_axes: 0", (2, 3, 1, 1, 1, 6, 5)),
    ([1, 1, 1], "axis: -1 num_axes: 0", (2, 3, 6, 5, 1, 1, 1)),
    ([-1], "axis: 1 num_axes: 2", (2, 18, 5)),
    ([0, -1], "axis: 1", (2, 3, 30)),
    ([5, 1], "axis: -2", (2, 3, 6, 5, 1)),
])
def test_reshape_rules(dims, extra, expected):
    lay = reshape_layer(dims, extra)
    assert infer_shapes(lay, [(2, 3, 6, 5)]) == [expected]
    x = rand(2, 3, 6, 5)
    (y,) = run_layer(lay, [x])
    np.testing.assert_array_equal(y, x.reshape(expected))


@pytest.mark.parametrize("dims,extra,shape,error,message", [
    ([-1, -1], "", (2, 3), GraphError, "more than one -1"),
    ([2, -3], "", (2, 3), GraphError, "negative dimension -3"),
    ([4, 2], "", (2, 3), ShapeError, r"new shape \(4, 2\) has 8 elements, the bottom \(2, 3\) has 6"),
    ([0, 0, 0], "", (2, 3), ShapeError, "no bottom axis to copy"),
    ([2, 3], "axis: 1 num_axes: 1", (2, 3, 5), ShapeError,
     r"new shape \(2, 2, 3, 5\) has 60 elements, the bottom \(2, 3, 5\) has 30"),
    ([0, 0], "axis: 1", (2, 3), ShapeError, "no bottom axis to copy"),
    ([4, -1], "", (2, 3), ShapeError, r"count \(6\) is not divisible by the product .* \(4\)"),
    ([-1], "axis: 3", (2, 3), ShapeError, "axis 3 is out of range"),
    ([-1], "axis: -4", (2, 3), ShapeError, "axis -4 is out of range"),
    ([-1], "axis: 1 num_axes: 2", (2, 3), ShapeError, "goes past the bottom's last axis"),
    ([-1], "num_axes: -2", (2, 3), GraphError, "num_axes must be >= -1"),
])
def test_reshape_errors(dims, extra, shape, error, message):
    with pytest.raises(error, match=message) as err:
        infer_shapes(reshape_layer(dims, extra), [shape])
    assert "layer 'rs' (Reshape)" in str(err.value)
    if error is ShapeError:
        assert f"'x' {shape}".replace(",)", ")") in str(err.value)


def test_reshape_follows_new_bottom_shapes():
    lay = reshape_layer([0, -1])
    assert infer_shapes(lay, [(2, 3, 4)]) == [(2, 12)]
    assert infer_shapes(lay, [(5, 3, 4)]) == [(5, 12)]


# ---- Crop / Tile / Silence / Parameter -----------------------------------------------
@pytest.mark.parametrize("params,big,ref,index", [
    ("crop_param { offset: 1 offset: 2 }", (2, 3, 10, 12), (1, 1, 5, 6),
     np.s_[:, :, 1:6, 2:8]),
    ("crop_param { offset: 3 }", (2, 3, 10, 12), (1, 1, 5, 6), np.s_[:, :, 3:8, 3:9]),
    ("", (2, 3, 10, 12), (9, 9, 5, 6), np.s_[:, :, 0:5, 0:6]),
    ("crop_param { axis: 1 offset: 1 offset: 0 offset: 2 }", (2, 3, 10, 12), (7, 2, 4, 4),
     np.s_[:, 1:3, 0:4, 2:6]),
    ("crop_param { axis: -1 offset: 4 }", (2, 3, 10, 12), (1, 1, 1, 8), np.s_[..., 4:12]),
])
def test_crop(params, big, ref, index):
    lay = layer("Crop", params, bottoms=("big", "ref"))
    x = rand(*big)
    expected = x[index]
    assert infer_shapes(lay, [big, ref]) == [expected.shape]
    (y,) = run_layer(lay, [x, np.zeros(ref, np.float32)])
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize("params,ref,message", [
    ("crop_param { offset: 1 offset: 2 offset: 3 }", (1, 1, 5, 6), "3 crop offsets for 2"),
    ("crop_param { offset: 6 }", (1, 1, 5, 6), "cropping axis 2 to 5 at offset 6 goes past"),
    ("", (1, 1, 5, 13), "cropping axis 3 to 13 at offset 0 goes past its size 12"),
    ("", (1, 5, 6), "same number of axes"),
])
def test_crop_errors(params, ref, message):
    lay = layer("Crop", params, bottoms=("big", "ref"), name="crop")
    with pytest.raises(ShapeError, match=message) as err:
        infer_shapes(lay, [(2, 3, 10, 12), ref])
    assert "'big' (2, 3, 10, 12)" in str(err.value)


@pytest.mark.parametrize("params,shape,expected,reps", [
    ("tile_param { tiles: 3 }", (2, 3, 4), (2, 9, 4), (1, 3, 1)),
    ("tile_param { axis: -1 tiles: 2 }", (2, 3), (2, 6), (1, 2)),
    ("tile_param { axis: 0 tiles: 1 }", (2, 3), (2, 3), (1, 1)),
])
def test_tile(params, shape, expected, reps):
    lay = layer("Tile", params)
    assert infer_shapes(lay, [shape]) == [expected]
    x = rand(*shape)
    (y,) = run_layer(lay, [x])
    np.testing.assert_array_equal(y, np.tile(x, reps))


@pytest.mark.parametrize("params", ["", "tile_param { tiles: 0 }", "tile_param { tiles: -2 }"])
def test_tile_needs_positive_tiles(params):
    with pytest.raises(GraphError, match="tiles must be given and positive"):
        infer_shapes(layer("Tile", params), [(2, 3)])


def test_silence_has_no_tops():
    lay = layer("Silence", bottoms=("a", "b"), tops=())
    assert infer_shapes(lay, [(2, 3), (4,)]) == []
    assert run_layer(lay, [rand(2, 3), rand(4)]) == []


def test_parameter_layer_outputs_its_blob():
    lay = make_layer('layer { name: "p" type: "Parameter" top: "w" '
                     'parameter_param { shape { dim: 3 dim: 4 } } }')
    assert infer_shapes(lay, []) == [(3, 4)]
    assert [b.shape for b in lay.blobs] == [(3, 4)] and lay.learnable == [True]
    assert lay.num_params == 12
    (w,) = fill_params(lay, seed=2)
    (y,) = run_layer(lay, [])
    np.testing.assert_array_equal(y, w)


# ---- Eltwise / Reduction -------------------------------------------------------------
@pytest.mark.parametrize("params,ref", [
    ("", lambda a, b, c: a + b + c),
    ("eltwise_param { operation: SUM coeff: 1 coeff: -2 coeff: 0.5 }",
     lambda a, b, c: a - 2 * b + 0.5 * c),
    ("eltwise_param { operation: PROD }", lambda a, b, c: a * b * c),
    ("eltwise_param { operation: MAX }", lambda a, b, c: np.maximum(np.maximum(a, b), c)),
])
def test_eltwise(params, ref):
    lay = layer("Eltwise", params, bottoms=("a", "b", "c"))
    assert infer_shapes(lay, [(2, 3, 4)] * 3) == [(2, 3, 4)]
    xs = [rand(2, 3, 4, seed=i) for i in range(3)]
    (y,) = run_layer(lay, xs)
    np.testing.assert_allclose(y, ref(*[x.astype(np.float64) for x in xs]), rtol=1e-6, atol=1e-6)


def test_eltwise_max_mask_follows_caffe_ties():
    lay = layer("Eltwise", "eltwise_param { operation: MAX }", bottoms=("a", "b", "c"))
    a = np.array([1, 2, 3, 5], np.float32)
    b = np.array([1, 3, 2, 5], np.float32)
    c = np.array([0, 3, 4, 5], np.float32)
    (y,) = run_layer(lay, [a, b, c])
    np.testing.assert_array_equal(y, [1, 3, 4, 5])
    np.testing.assert_array_equal(lay.mask, [1, 1, 2, 1])


def test_eltwise_sum_in_place_with_coeff():
    lay = layer("Eltwise", "eltwise_param { coeff: 3 coeff: 1 }", bottoms=("a", "b"),
                tops=("a",))
    a, b = rand(5, seed=1), rand(5, seed=2)
    (y,) = run_layer(lay, [a, b], in_place=True)
    np.testing.assert_allclose(y, 3 * a + b, rtol=1e-6)


@pytest.mark.parametrize("params,message", [
    ("eltwise_param { coeff: 1 coeff: 2 coeff: 3 }", "3 coeff values for 2 bottoms"),
    ("eltwise_param { operation: PROD coeff: 1 coeff: 2 }", "only allowed with operation SUM"),
])
def test_eltwise_parameter_errors(params, message):
    with pytest.raises(GraphError, match=message):
        infer_shapes(layer("Eltwise", params, bottoms=("a", "b")), [(2,), (2,)])


def test_eltwise_shape_mismatch_and_arity():
    with pytest.raises(ShapeError) as err:
        infer_shapes(layer("Eltwise", bottoms=("a", "b"), name="add"), [(2, 3), (3, 2)])
    assert "'a' (2, 3), 'b' (3, 2)" in str(err.value) and "layer 'add' (Eltwise)" in str(err.value)
    with pytest.raises(GraphError, match="at least 2 bottom"):
        infer_shapes(layer("Eltwise", bottoms=("a",)), [(2, 3)])


@pytest.mark.parametrize("op,fn", [
    ("SUM", lambda r: r.sum(1)),
    ("ASUM", lambda r: np.abs(r).sum(1)),
    ("SUMSQ", lambda r: (r * r).sum(1)),
    ("MEAN", lambda r: r.mean(1)),
])
@pytest.mark.parametrize("axis,expected", [(0, ()), (1, (2,)), (-1, (2, 3, 4)), (2, (2, 3))])
def test_reduction(op, fn, axis, expected):
    lay = layer("Reduction", f"reduction_param {{ operation: {op} axis: {axis} coeff: 1.5 }}")
    assert infer_shapes(lay, [(2, 3, 4, 5)]) == [expected]
    x = rand(2, 3, 4, 5)
    (y,) = run_layer(lay, [x])
    rows = x.astype(np.float64).reshape(int(np.prod(expected)), -1)
    np.testing.assert_allclose(y, (1.5 * fn(rows)).reshape(expected), rtol=1e-5, atol=1e-5)


def test_reduction_default_is_sum_to_scalar():
    x = rand(3, 4)
    (y,) = run_layer(layer("Reduction"), [x])
    assert y.shape == () and y == pytest.approx(x.astype(np.float64).sum(), rel=1e-5)


# ---- Softmax / ArgMax ------------------------------------------------------------------
def softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_softmax_along_axes(axis):
    lay = layer("Softmax", f"softmax_param {{ axis: {axis} }}")
    x = rand(2, 3, 4, 5) * 4
    assert infer_shapes(lay, [x.shape]) == [x.shape]
    (y,) = run_layer(lay, [x])
    np.testing.assert_allclose(y, softmax_ref(x.astype(np.float64), axis), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-5)


def test_softmax_default_axis_in_place_and_large_values():
    lay = layer("Softmax", tops=("x",))
    x = np.array([[1000.0, 1001.0, 999.0], [-5.0, -5.0, -5.0]], np.float32)
    (y,) = run_layer(lay, [x], in_place=True)
    np.testing.assert_allclose(y, softmax_ref(x.astype(np.float64), 1), rtol=1e-6)
    with pytest.raises(ShapeError, match="axis 2 is out of range"):
        infer_shapes(layer("Softmax", "softmax_param { axis: 2 }"), [(2, 3)])


@pytest.mark.parametrize("params,shape,expected", [
    ("", (4, 10), (4, 1, 1)),
    ("argmax_param { out_max_val: true }", (4, 10), (4, 2, 1)),
    ("argmax_param { top_k: 3 }", (4, 10), (4, 1, 3)),
    ("argmax_param { top_k: 3 out_max_val: true }", (4, 5, 2), (4, 2, 3)),
    ("argmax_param { top_k: 2 }", (4, 3, 2, 2), (4, 1, 2, 1)),
    ("argmax_param { top_k: 2 out_max_val: true }", (4, 3, 2, 2, 1), (4, 2, 2, 1, 1)),
    ("", (6,), (6, 1, 1)),
    ("argmax_param { axis: 1 }", (4, 10, 3), (4, 1, 3)),
    ("argmax_param { axis: 1 top_k: 4 out_max_val: true }", (4, 10, 3), (4, 4, 3)),
    ("argmax_param { axis: -1 top_k: 2 }", (4, 10, 3), (4, 10, 2)),
    ("argmax_param { axis: 0 }", (4, 10), (1, 10)),
])
def test_argmax_shapes(params, shape, expected):
    assert infer_shapes(layer("ArgMax", params), [shape]) == [expected]


def argmax_ref(x2, k):
    """Per row: (indices, values) of the k largest, larger index first on ties."""
    idx, val = [], []
    for row in x2:
        order = sorted(range(len(row)), key=lambda j: (row[j], j), reverse=True)[:k]
        idx.append(order)
        val.append([row[j] for j in order])
    return np.array(idx, np.float64), np.array(val, np.float64)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("out_max_val", [False, True])
def test_argmax_without_axis(k, out_max_val):
    x = np.round(rand(3, 2, 4), 0)           # rounding makes ties
    lay = layer("ArgMax", f"argmax_param {{ top_k: {k} out_max_val: {str(out_max_val).lower()} }}")
    (y,) = run_layer(lay, [x])
    idx, val = argmax_ref(x.reshape(3, -1), k)
    flat = y.reshape(3, -1)
    np.testing.assert_array_equal(flat[:, :k], idx)
    if out_max_val:
        np.testing.assert_array_equal(flat[:, k:], val)


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("out_max_val", [False, True])
def test_argmax_with_axis(axis, out_max_val):
    x = np.round(rand(3, 4, 5), 0)
    k = 2
    lay = layer("ArgMax", f"argmax_param {{ axis: {axis} top_k: {k} "
                          f"out_max_val: {str(out_max_val).lower()} }}")
    (y,) = run_layer(lay, [x])
    moved = np.moveaxis(x, axis, -1)
    idx, val = argmax_ref(moved.reshape(-1, moved.shape[-1]), k)
    expected = (val if out_max_val else idx).reshape(*moved.shape[:-1], k)
    np.testing.assert_array_equal(y, np.moveaxis(expected, -1, axis))


def test_argmax_tie_prefers_larger_index():
    (y,) = run_layer(layer("ArgMax"), [np.array([[1, 7, 7, 2]], np.float32)])
    assert y.reshape(-1)[0] == 2


@pytest.mark.parametrize("params,shape,message", [
    ("argmax_param { top_k: 11 }", (4, 10), r"top_k \(11\) is larger than the 10 values"),
    ("argmax_param { axis: 1 top_k: 4 }", (4, 3, 5), r"top_k \(4\) is larger than axis 1"),
])
def test_argmax_top_k_errors(params, shape, message):
    with pytest.raises(ShapeError, match=message) as err:
        infer_shapes(layer("ArgMax", params, name="am"), [shape])
    assert "layer 'am' (ArgMax)" in str(err.value)


def test_kinds():
    kinds = {t: layer(t, bottoms=("a", "b") if t in ("Eltwise", "Concat") else ("a",)).kind
             for t in ("Concat", "Slice", "Split", "Flatten", "Reshape", "Eltwise", "Reduction",
                       "Softmax", "ArgMax", "Silence")}
    assert kinds == {"Concat": "structure", "Slice": "structure", "Split": "structure",
                     "Flatten": "structure", "Reshape": "structure", "Eltwise": "elementwise",
                     "Reduction": "elementwise", "Softmax": "softmax", "ArgMax": "output",
                     "Silence": "structure"}


# =====================================================================================
# Backward: finite differences (check_gradients), NumPy references, in place
# =====================================================================================
def backward_of(lay, xs, dys, down=None, top_count=None, in_place=False):
    """Forward ``xs``, set the top diffs to ``dys``, run backward; the bottom diffs
    (None where propagate_down is False, their arrays left as they were)."""
    run_layer(lay, xs, top_count=top_count, in_place=in_place)
    bottoms, tops = wired(lay)
    for top, dy in zip(tops, dys, strict=True):
        top.diff[...] = dy
    down = [True] * len(bottoms) if down is None else down
    lay.backward(tops, down, bottoms)
    return [b.diff.copy() if d else None for b, d in zip(bottoms, down, strict=True)]


def distinct(*shape, count=1, seed=0, gap=0.1):
    """``count`` arrays whose values are all distinct by at least ``gap`` (no max
    ties within a finite-difference step)."""
    n = int(np.prod(shape))
    values = (np.random.default_rng(seed).permutation(n * count) - n * count / 2) * gap
    return [values[i * n:(i + 1) * n].reshape(shape).astype(np.float32) for i in range(count)]


# ---- Concat / Slice / Split ----------------------------------------------------------
@pytest.mark.parametrize("params,shapes,axis", [
    ("", [(2, 3, 4), (2, 2, 4)], 1),
    ("concat_param { axis: 0 }", [(1, 3), (3, 3), (2, 3)], 0),
    ("concat_param { axis: -1 }", [(2, 3, 1), (2, 3, 3)], 2),
    ("concat_param { concat_dim: 2 }", [(2, 2, 1, 3), (2, 2, 2, 3)], 2),
    ("", [(2, 3)], 1),
])
def test_concat_backward(params, shapes, axis):
    names = [f"b{i}" for i in range(len(shapes))]
    xs = [rand(*s, seed=i) for i, s in enumerate(shapes)]
    assert check_gradients(layer("Concat", params, bottoms=names), xs) > 0
    top_shape = infer_shapes(layer("Concat", params, bottoms=names), shapes)[0]
    dy = rand(*top_shape, seed=9)
    got = backward_of(layer("Concat", params, bottoms=names), xs, [dy])
    for g, want in zip(got, concat_backward_reference(dy, shapes, axis), strict=True):
        np.testing.assert_array_equal(g, want)


def test_concat_backward_only_where_asked():
    xs = [rand(2, 2, seed=1), rand(2, 3, seed=2), rand(2, 1, seed=3)]
    lay = layer("Concat", bottoms=("a", "b", "c"))
    run_layer(lay, xs)
    bottoms, _ = wired(lay)
    bottoms[1].diff[...] = 7.0
    got = backward_of(lay, xs, [rand(2, 6, seed=4)], down=[True, False, True])
    assert got[1] is None and (bottoms[1].diff == 7.0).all()
    assert check_gradients(layer("Concat", bottoms=("a", "b", "c")), xs, [0, 2]) > 0


@pytest.mark.parametrize("params,shape,ntops,axis", [
    ("slice_param { slice_point: 1 slice_point: 4 }", (2, 6, 3), 3, 1),
    ("", (2, 6, 3), 3, 1),
    ("slice_param { axis: -1 }", (2, 3, 4), 2, 2),
    ("slice_param { slice_dim: 0 slice_point: 3 }", (5, 2), 2, 0),
    ("", (3, 4), 1, 1),
])
def test_slice_backward(params, shape, ntops, axis):
    names = [f"t{i}" for i in range(ntops)]
    x = rand(*shape)
    assert check_gradients(layer("Slice", params, tops=names), [x]) > 0
    tshapes = infer_shapes(layer("Slice", params, tops=names), [shape])
    dys = [rand(*s, seed=10 + i) for i, s in enumerate(tshapes)]
    (dx,) = backward_of(layer("Slice", params, tops=names), [x], dys)
    # the adjoint of Concat's backward: dx is the tops' diffs side by side
    parts = concat_backward_reference(dx, tshapes, axis)
    for part, dy in zip(parts, dys, strict=True):
        np.testing.assert_array_equal(part, dy)


@pytest.mark.parametrize("ntops", [1, 2, 3])
def test_split_backward_sums_every_top(ntops):
    names = [f"s{i}" for i in range(ntops)]
    x = rand(2, 3, 4)
    assert check_gradients(layer("Split", tops=names), [x]) > 0
    dys = [rand(2, 3, 4, seed=20 + i) for i in range(ntops)]
    (dx,) = backward_of(layer("Split", tops=names), [x], dys)
    np.testing.assert_allclose(dx, np.sum([d.astype(np.float64) for d in dys], axis=0),
                               rtol=1e-6, atol=1e-6)


def test_split_tops_share_data_but_own_their_diffs():
    lay = layer("Split", tops=("s0", "s1", "s2"))
    x = rand(3, 4)
    run_layer(lay, [x])
    (bottom,), tops = wired(lay)
    for top in tops:                      # as the memory planner binds them
        top.share_data(bottom)
    assert all(np.shares_memory(t.data, bottom.data) for t in tops)
    dys = [np.full((3, 4), v, np.float32) for v in (1.0, 10.0, 100.0)]
    for top, dy in zip(tops, dys, strict=True):
        top.diff[...] = dy
    assert not any(np.shares_memory(t.diff, bottom.diff) for t in tops)
    bottom.diff[...] = -5.0                # overwritten, not accumulated
    lay.backward(tops, [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, np.full((3, 4), 111.0))
    np.testing.assert_array_equal(tops[1].diff, dys[1])      # the tops' diffs are untouched


@pytest.mark.parametrize("alias", [0, 1, 2])
def test_split_backward_when_one_top_diff_is_the_bottom_diff(alias):
    lay = layer("Split", tops=("s0", "s1", "s2"))
    run_layer(lay, [rand(5)])
    (bottom,), tops = wired(lay)
    tops[alias].bind(diff=bottom.diff)
    for k, top in enumerate(tops):
        top.diff[...] = 10.0 ** k
    lay.backward(tops, [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, np.full(5, 111.0))


# ---- Flatten / Reshape -------------------------------------------------------------------
FLAT_CASES = [
    ("Flatten", "", (2, 3, 4, 2)),
    ("Flatten", "flatten_param { axis: 2 }", (2, 3, 4, 2)),
    ("Reshape", "reshape_param { shape { dim: 0 dim: -1 dim: 2 } }", (2, 3, 4, 2)),
    ("Reshape", "reshape_param { shape { dim: 4 dim: 3 } axis: 1 num_axes: 2 }", (2, 3, 4, 2)),
]


@pytest.mark.parametrize("type_,params,shape", FLAT_CASES)
def test_flatten_reshape_backward(type_, params, shape):
    x = rand(*shape)
    assert check_gradients(layer(type_, params), [x]) > 0
    lay = layer(type_, params)
    (top_shape,) = infer_shapes(lay, [shape])
    dy = rand(*top_shape, seed=3)
    (dx,) = backward_of(lay, [x], [dy])
    np.testing.assert_array_equal(dx, dy.reshape(shape))


@pytest.mark.parametrize("type_,params,shape", FLAT_CASES)
@pytest.mark.parametrize("share", ["data", "data+diff"])
def test_flatten_reshape_backward_on_aliased_blobs(type_, params, shape, share):
    """The net may bind the top's data (shares_data) and later its diff to the
    bottom's arrays: backward must give the same bottom diff either way."""
    lay = layer(type_, params)
    assert lay.shares_data
    x = rand(*shape)
    run_layer(lay, [x])
    (bottom,), (top,) = wired(lay)
    top.share_data(bottom)
    if share == "data+diff":
        top.bind(diff=bottom.diff.reshape(top.shape))
        assert np.shares_memory(top.diff, bottom.diff)
    dy = rand(*top.shape, seed=4)
    lay.forward([bottom], [top])
    top.diff[...] = dy
    lay.backward([top], [True], [bottom])
    np.testing.assert_array_equal(bottom.diff, dy.reshape(shape))
    np.testing.assert_array_equal(top.data, x.reshape(top.shape))


# ---- Crop / Tile / Silence / Parameter ----------------------------------------------------
@pytest.mark.parametrize("params,big,ref,offsets", [
    ("crop_param { offset: 1 offset: 2 }", (2, 2, 5, 6), (1, 1, 3, 2), (0, 0, 1, 2)),
    ("crop_param { offset: 1 }", (2, 2, 5, 6), (1, 1, 3, 4), (0, 0, 1, 1)),
    ("", (2, 2, 4, 4), (9, 9, 3, 2), (0, 0, 0, 0)),
    ("crop_param { axis: 1 offset: 1 offset: 0 offset: 2 }", (2, 3, 4, 5), (7, 2, 3, 2),
     (0, 1, 0, 2)),
])
def test_crop_backward(params, big, ref, offsets):
    xs = [rand(*big), rand(*ref, seed=1)]
    assert check_gradients(layer("Crop", params, bottoms=("big", "ref")), xs, [0]) > 0
    lay = layer("Crop", params, bottoms=("big", "ref"))
    (top_shape,) = infer_shapes(lay, [big, ref])
    dy = rand(*top_shape, seed=2)
    run_layer(lay, xs)
    bottoms, _ = wired(lay)
    bottoms[0].diff[...] = 3.0             # stale values must not survive
    bottoms[1].diff[...] = 3.0
    dx, dref = backward_of(lay, xs, [dy])
    np.testing.assert_array_equal(dx, crop_backward_reference(dy, big, offsets))
    np.testing.assert_array_equal(dref, np.zeros(ref))     # a shape only: gradient 0


@pytest.mark.parametrize("params,shape,axis", [
    ("tile_param { tiles: 3 }", (2, 3, 2), 1),
    ("tile_param { axis: -1 tiles: 2 }", (2, 3), 1),
    ("tile_param { axis: 0 tiles: 2 }", (2, 3), 0),
    ("tile_param { axis: 0 tiles: 1 }", (2, 3), 0),
])
def test_tile_backward(params, shape, axis):
    x = rand(*shape)
    assert check_gradients(layer("Tile", params), [x]) > 0
    lay = layer("Tile", params)
    (top_shape,) = infer_shapes(lay, [shape])
    dy = rand(*top_shape, seed=5)
    (dx,) = backward_of(lay, [x], [dy])
    np.testing.assert_allclose(dx, tile_backward_reference(dy, shape, axis), rtol=1e-6,
                               atol=1e-6)


def test_silence_backward_zeroes_asked_bottoms_only():
    lay = layer("Silence", bottoms=("a", "b"), tops=())
    xs = [rand(2, 3), rand(4)]
    run_layer(lay, xs)
    bottoms, tops = wired(lay)
    for b in bottoms:
        b.diff[...] = 5.0
    lay.backward(tops, [True, False], bottoms)
    np.testing.assert_array_equal(bottoms[0].diff, np.zeros((2, 3)))
    np.testing.assert_array_equal(bottoms[1].diff, np.full(4, 5.0))


def test_parameter_backward_accumulates_into_its_blob():
    text = ('layer { name: "p" type: "Parameter" top: "w" '
            'parameter_param { shape { dim: 3 dim: 2 } } }')
    lay = make_layer(text)
    infer_shapes(lay, [])
    fill_params(lay, seed=1)
    assert check_gradients(lay, []) == 6
    run_layer(lay, [])
    _, (top,) = wired(lay)
    blob = lay.blobs[0]
    blob.diff[...] = 1.0
    top.diff[...] = rand(3, 2, seed=2)
    lay.param_propagate_down = [True]
    lay.backward([top], [], [])
    lay.backward([top], [], [])
    np.testing.assert_allclose(blob.diff, 1.0 + 2 * rand(3, 2, seed=2), rtol=1e-6)
    lay.param_propagate_down = [False]       # lr_mult: 0
    lay.backward([top], [], [])
    np.testing.assert_allclose(blob.diff, 1.0 + 2 * rand(3, 2, seed=2), rtol=1e-6)


# ---- Eltwise -------------------------------------------------------------------------------
ELTWISE_CASES = [
    ("", "SUM", None, 2),
    ("eltwise_param { coeff: 1 coeff: -2 coeff: 0.5 }", "SUM", [1.0, -2.0, 0.5], 3),
    ("eltwise_param { operation: PROD }", "PROD", None, 2),
    ("eltwise_param { operation: PROD }", "PROD", None, 3),
    ("eltwise_param { operation: MAX }", "MAX", None, 2),
    ("eltwise_param { operation: MAX }", "MAX", None, 3),
]


def eltwise_inputs(op, n, shape=(2, 3, 2), zeros=False):
    if op == "MAX":
        return distinct(*shape, count=n)
    xs = [rand(*shape, seed=i) for i in range(n)]
    if zeros:                              # exact zeros, one of them in two inputs
        xs[0].reshape(-1)[[0, 3]] = 0.0
        xs[1].reshape(-1)[[3, 5]] = 0.0
    return xs


@pytest.mark.parametrize("params,op,coeff,n", ELTWISE_CASES)
def test_eltwise_backward(params, op, coeff, n):
    names = "abc"[:n]
    xs = eltwise_inputs(op, n)
    assert check_gradients(layer("Eltwise", params, bottoms=names), xs) > 0
    dy = rand(2, 3, 2, seed=7)
    got = backward_of(layer("Eltwise", params, bottoms=names), xs, [dy])
    for g, want in zip(got, eltwise_backward_reference(xs, dy, op, coeff), strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("n", [2, 3])
def test_eltwise_prod_backward_with_zeros_is_exact(n):
    names = "abc"[:n]
    params = "eltwise_param { operation: PROD }"
    xs = eltwise_inputs("PROD", n, zeros=True)
    assert check_gradients(layer("Eltwise", params, bottoms=names), xs) > 0
    dy = rand(2, 3, 2, seed=7)
    got = backward_of(layer("Eltwise", params, bottoms=names), xs, [dy])
    for g, want in zip(got, eltwise_backward_reference(xs, dy, "PROD"), strict=True):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, want, rtol=1e-6, atol=1e-6)


def test_eltwise_prod_unstable_grad_divides_like_caffe():
    params = "eltwise_param { operation: PROD stable_prod_grad: false }"
    xs = eltwise_inputs("PROD", 3)
    assert check_gradients(layer("Eltwise", params, bottoms="abc"), xs) > 0
    dy = rand(2, 3, 2, seed=7)
    got = backward_of(layer("Eltwise", params, bottoms="abc"), xs, [dy])
    ref = eltwise_backward_reference(xs, dy, "PROD", stable_prod_grad=False)
    for g, want in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)
    xs = eltwise_inputs("PROD", 2, zeros=True)   # Caffe's 0 / 0: NaN where x_i is 0
    got = backward_of(layer("Eltwise", params, bottoms="ab"), xs, [dy])
    assert np.isnan(got[0].reshape(-1)[[0, 3]]).all()
    assert np.isfinite(np.delete(got[0].reshape(-1), [0, 3])).all()


def test_eltwise_max_backward_follows_the_forward_mask():
    lay = layer("Eltwise", "eltwise_param { operation: MAX }", bottoms="abc")
    a = np.array([1, 2, 3, 5], np.float32)
    b = np.array([1, 3, 2, 5], np.float32)
    c = np.array([0, 3, 4, 5], np.float32)
    dy = np.array([10, 20, 30, 40], np.float32)
    da, db, dc = backward_of(lay, [a, b, c], [dy])
    np.testing.assert_array_equal(da, [0, 0, 0, 0])
    np.testing.assert_array_equal(db, [10, 20, 0, 40])
    np.testing.assert_array_equal(dc, [0, 0, 30, 0])


@pytest.mark.parametrize("params,op,coeff,n", ELTWISE_CASES + [
    ("eltwise_param { coeff: 3 coeff: 1 }", "SUM", [3.0, 1.0], 2),
    ("eltwise_param { operation: PROD stable_prod_grad: false }", "PROD", None, 3),
])
def test_eltwise_backward_in_place(params, op, coeff, n):
    names = "abc"[:n]
    xs = eltwise_inputs(op, n, zeros=op == "PROD" and "stable" not in params)
    dy = rand(2, 3, 2, seed=7)
    want = backward_of(layer("Eltwise", params, bottoms=names), xs, [dy])
    lay = layer("Eltwise", params, bottoms=names, tops=("a",))
    got = backward_of(lay, xs, [dy], in_place=True)
    bottoms, tops = wired(lay)
    assert tops[0] is bottoms[0]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_eltwise_backward_only_where_asked():
    xs = eltwise_inputs("PROD", 3)
    lay = layer("Eltwise", "eltwise_param { operation: PROD }", bottoms="abc")
    got = backward_of(lay, xs, [rand(2, 3, 2, seed=7)], down=[False, True, False])
    assert got[0] is None and got[2] is None and got[1] is not None
    assert check_gradients(layer("Eltwise", "eltwise_param { operation: MAX }", bottoms="abc"),
                           eltwise_inputs("MAX", 3), [2]) > 0


# ---- Reduction -----------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_reduction_backward(op, axis):
    params = f"reduction_param {{ operation: {op} axis: {axis} coeff: 1.5 }}"
    x = rand(2, 3, 2) * 0.5
    x[np.abs(x) < 0.02] = 0.3              # |x| keeps ASUM away from its kink at 0
    assert check_gradients(layer("Reduction", params), [x]) > 0
    lay = layer("Reduction", params)
    (top_shape,) = infer_shapes(lay, [x.shape])
    dy = rand(*top_shape, seed=8)
    (dx,) = backward_of(lay, [x], [dy])
    ax = axis % 3
    np.testing.assert_allclose(dx, reduction_backward_reference(x, dy, op, ax, 1.5),
                               rtol=1e-5, atol=1e-6)
    (y,) = run_layer(layer("Reduction", params), [x])
    np.testing.assert_allclose(y, reduction_reference(x, op, ax, 1.5), rtol=1e-5, atol=1e-6)


def test_reduction_asum_gradient_is_zero_at_zero():
    lay = layer("Reduction", "reduction_param { operation: ASUM axis: 1 }")
    x = np.array([[0.0, -2.0, 3.0]], np.float32)
    (dx,) = backward_of(lay, [x], [np.array([2.0], np.float32)])
    np.testing.assert_array_equal(dx, [[0.0, -2.0, 2.0]])


# ---- Softmax / ArgMax ------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis", [
    ((2, 5), 1), ((2, 3, 2, 2), 1), ((2, 3, 4), -1), ((3, 2, 2), 0), ((1, 4, 600), 1),
])
def test_softmax_backward(shape, axis):
    params = f"softmax_param {{ axis: {axis} }}"
    x = rand(*shape) * 2
    assert check_gradients(layer("Softmax", params), [x]) > 0
    dy = rand(*shape, seed=6)
    (dx,) = backward_of(layer("Softmax", params), [x], [dy])
    y = softmax_reference(x, axis)
    np.testing.assert_allclose(dx, softmax_backward_reference(y, dy, axis), rtol=1e-5,
                               atol=1e-6)


def test_softmax_backward_in_place():
    x = rand(2, 4, 3) * 3
    dy = rand(2, 4, 3, seed=6)
    (want,) = backward_of(layer("Softmax"), [x], [dy])
    lay = layer("Softmax", tops=("x",))
    (got,) = backward_of(lay, [x], [dy], in_place=True)
    (bottom,), (top,) = wired(lay)
    assert top is bottom
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_softmax_backward_on_a_large_spatial_extent():
    shape = (2, 8, 3000)
    x, dy = rand(*shape), rand(*shape, seed=1)
    (dx,) = backward_of(layer("Softmax"), [x], [dy])
    y = softmax_reference(x, 1)
    want = y * (dy - (dy * y).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(dx, want, rtol=1e-4, atol=1e-6)


def test_argmax_backward_is_refused_only_when_asked():
    lay = layer("ArgMax", "argmax_param { top_k: 2 }", name="am")
    x = rand(2, 5)
    run_layer(lay, [x])
    bottoms, tops = wired(lay)
    lay.backward(tops, [False], bottoms)              # nothing asked: nothing done
    with pytest.raises(NetdefError, match="layer 'am' \\(ArgMax\\): is not differentiable") as err:
        lay.backward(tops, [True], bottoms)
    assert "'x' (2, 5)" in str(err.value)
    assert lay.no_force_backward == (0,)


def test_structure_layers_backward_in_a_net():
    """Through the net: Flatten (a view), Softmax, a Split with three readers
    (inserted by the graph; the diffs of its tops add up), Reduction, Eltwise."""
    import netdef
    from netdef.testing import GradientChecker

    net = netdef.Net('''
        force_backward: true
        layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 } } }
        layer { name: "in2" type: "Input" top: "s2" input_param { shape { dim: 2 } } }
        layer { name: "fl" type: "Flatten" bottom: "x" top: "f" }
        layer { name: "sm" type: "Softmax" bottom: "f" top: "p" }
        layer { name: "r1" type: "Reduction" bottom: "p" top: "a"
                reduction_param { operation: SUMSQ axis: 1 } }
        layer { name: "r2" type: "Reduction" bottom: "p" top: "b"
                reduction_param { operation: ASUM axis: 1 coeff: 2 } }
        layer { name: "sl" type: "Slice" bottom: "p" top: "p0" top: "p1"
                slice_param { slice_point: 5 } }
        layer { name: "r3" type: "Reduction" bottom: "p1" top: "c"
                reduction_param { operation: SUMSQ axis: 1 } }
        layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "s"
                eltwise_param { coeff: 1 coeff: -1 coeff: 3 } }
        layer { name: "q" type: "Eltwise" bottom: "s" bottom: "s2" top: "t"
                eltwise_param { operation: PROD } }
        layer { name: "l" type: "Reduction" bottom: "t" top: "loss" loss_weight: 1 }
        layer { name: "sil" type: "Silence" bottom: "p0" }
    ''')
    assert any(s.layer.type == "Split" and len(s.tops) == 3 for s in net._plan().steps)
    net.blobs["x"].data[...] = rand(2, 3, 4)
    net.blobs["s2"].data[...] = [1.5, -0.5]
    assert GradientChecker().check_net(net, ["x", "s2"]) == 26
