"""Structure layers: Concat, Slice, Split, Flatten, Reshape, Crop, Tile,
Silence, Parameter, Eltwise, Reduction, Softmax, ArgMax -- shapes (Caffe's
rules and errors) and forward against NumPy."""
from __future__ import annotations

import numpy as np
import pytest
from layer_harness import fill_params, infer_shapes, make_layer, run_layer, wired

from netdef.errors import GraphError, ShapeError


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
