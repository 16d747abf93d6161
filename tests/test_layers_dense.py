"""InnerProduct and Embed: shapes, parameters, forward values, errors, backward."""
from __future__ import annotations

import numpy as np
import pytest
from layer_harness import check_gradients, fill_params, infer_shapes, make_layer, run_layer, wired
from reference import embed_backward_reference

from netdef.errors import GraphError, InputError, ShapeError


def ip(body: str, name="fc", bottom="data"):
    return make_layer(f'layer {{ name: "{name}" type: "InnerProduct" bottom: "{bottom}" '
                      f'top: "y" inner_product_param {{ {body} }} }}')


def rand(*shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("shape,axis,top,k", [
    ((2, 3, 4, 5), 1, (2, 7), 60),
    ((2, 3, 4, 5), 2, (2, 3, 7), 20),
    ((2, 3, 4, 5), -1, (2, 3, 4, 7), 5),
    ((2, 3, 4, 5), -3, (2, 7), 60),
    ((2, 3, 4, 5), 0, (7,), 120),
    ((6, 9), 1, (6, 7), 9),
    ((6, 9), -1, (6, 7), 9),
])
@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_matches_numpy(shape, axis, top, k, transpose):
    lay = ip(f"num_output: 7 axis: {axis} transpose: {str(transpose).lower()}")
    assert infer_shapes(lay, [shape]) == [top]
    w, b = fill_params(lay)
    assert w.shape == ((k, 7) if transpose else (7, k)) and b.shape == (7,)
    x = rand(*shape)
    (y,) = run_layer(lay, [x])
    x2 = x.astype(np.float64).reshape(-1, k)
    ref = x2 @ (w if transpose else w.T) + b
    np.testing.assert_allclose(y.reshape(-1, 7), ref, rtol=1e-4, atol=1e-4)
    m = int(np.prod(shape)) // k
    assert lay.macs(*wired(lay)) == m * k * 7
    assert lay.num_params == k * 7 + 7


def test_inner_product_without_bias_and_fillers():
    lay = ip("num_output: 3 bias_term: false weight_filler { type: 'gaussian' std: 0.01 }")
    infer_shapes(lay, [(4, 5)])
    assert [b.shape for b in lay.blobs] == [(3, 5)] and lay.learnable == [True]
    assert lay.fillers[0].type == "gaussian" and lay.fillers[0].std == pytest.approx(0.01)
    (w,) = fill_params(lay)
    x = rand(4, 5)
    (y,) = run_layer(lay, [x])
    np.testing.assert_allclose(y, x @ w.T, rtol=1e-5, atol=1e-6)
    default = ip("num_output: 3")
    infer_shapes(default, [(1, 5)])
    assert [(f.type, f.value) for f in default.fillers] == [("constant", 0.0)] * 2


def test_inner_product_batch_change_keeps_weights():
    lay = ip("num_output: 4")
    infer_shapes(lay, [(1, 3, 2, 2)])
    w, b = fill_params(lay)
    x = rand(5, 3, 2, 2)
    (y,) = run_layer(lay, [x])
    np.testing.assert_allclose(y, x.reshape(5, 12) @ w.T + b, rtol=1e-4, atol=1e-5)


def test_inner_product_errors():
    with pytest.raises(GraphError) as err:
        infer_shapes(ip("axis: 1", name="fc8"), [(1, 10)])
    assert "layer 'fc8' (InnerProduct): num_output must be set" in str(err.value)
    lay = ip("num_output: 4", name="fc6", bottom="pool5")
    infer_shapes(lay, [(1, 256, 6, 6)])
    with pytest.raises(ShapeError) as err:
        infer_shapes(lay, [(1, 256, 7, 7)])
    text = str(err.value)
    assert "layer 'fc6' (InnerProduct)" in text and "'pool5' (1, 256, 7, 7)" in text
    assert "12544" in text and "9216" in text
    with pytest.raises(ShapeError) as err:
        infer_shapes(ip("num_output: 4 axis: 4", bottom="x"), [(1, 2, 3, 4)])
    assert "axis 4 is out of range" in str(err.value) and "'x' (1, 2, 3, 4)" in str(err.value)


def embed(body: str):
    return make_layer(f'layer {{ name: "emb" type: "Embed" bottom: "words" top: "vec" '
                      f'embed_param {{ {body} }} }}')


def test_embed_lookup():
    lay = embed("num_output: 4 input_dim: 10")
    assert infer_shapes(lay, [(2, 3)]) == [(2, 3, 4)]
    w, b = fill_params(lay)
    assert w.shape == (10, 4) and b.shape == (4,) and lay.num_params == 44
    idx = np.array([[0, 9, 3], [3, 1, 2]], np.float32)
    (y,) = run_layer(lay, [idx])
    np.testing.assert_allclose(y, w[idx.astype(int)] + b, rtol=1e-6)
    assert lay.macs(*wired(lay)) == 0


def test_embed_errors():
    lay = embed("num_output: 4 input_dim: 10 bias_term: false")
    with pytest.raises(InputError) as err:
        run_layer(lay, [np.array([1, 10], np.float32)])
    assert "layer 'emb' (Embed): index 10" in str(err.value)
    with pytest.raises(InputError):
        run_layer(lay, [np.array([1.5], np.float32)])
    with pytest.raises(GraphError) as err:
        infer_shapes(embed("num_output: 4"), [(2,)])
    assert "input_dim must be set" in str(err.value)


@pytest.mark.parametrize("bias_term", [True, False])
def test_embed_backward_scatters_by_index(bias_term):
    lay = embed(f"num_output: 3 input_dim: 6 bias_term: {str(bias_term).lower()}")
    idx = np.array([[0, 5, 2, 2], [5, 1, 2, 0]], np.float32)     # repeated indices
    infer_shapes(lay, [idx.shape])
    fill_params(lay)
    run_layer(lay, [idx])
    bottoms, tops = wired(lay)
    dy = rand(2, 4, 3, seed=4)
    tops[0].diff = dy
    lay.backward(tops, [False], bottoms)
    want_w, want_b = embed_backward_reference(idx, dy, 6)
    np.testing.assert_allclose(lay.blobs[0].diff, want_w, rtol=1e-6, atol=1e-6)
    assert not lay.blobs[0].diff[[3, 4]].any()                   # unused rows get nothing
    if bias_term:
        np.testing.assert_allclose(lay.blobs[1].diff, want_b, rtol=1e-5, atol=1e-6)
    lay.backward(tops, [False], bottoms)                          # diffs accumulate
    np.testing.assert_allclose(lay.blobs[0].diff, 2 * want_w, rtol=1e-6, atol=1e-6)
    lay.param_propagate_down = [False] * len(lay.blobs)           # frozen: nothing changes
    before = [b.diff.copy() for b in lay.blobs]
    lay.backward(tops, [False], bottoms)
    for b, d in zip(lay.blobs, before):
        np.testing.assert_array_equal(b.diff, d)


def test_embed_gradient_check_of_the_parameters():
    lay = embed("num_output: 3 input_dim: 5")
    idx = np.array([4, 0, 2, 2, 0, 1], np.float32)
    infer_shapes(lay, [idx.shape])
    fill_params(lay, seed=2)
    assert check_gradients(lay, [idx], check_bottoms=[]) == 5 * 3 + 3


def test_embed_has_no_gradient_for_its_indices():
    lay = embed("num_output: 2 input_dim: 4")
    run_layer(lay, [np.array([1, 3], np.float32)])
    bottoms, tops = wired(lay)
    with pytest.raises(GraphError) as err:
        lay.backward(tops, [True], bottoms)
    text = str(err.value)
    assert "layer 'emb' (Embed)" in text and "'words'" in text and "indices" in text
