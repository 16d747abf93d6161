"""Net-level backward: Caffe's rules for which layers and bottoms get
gradients, loss weights, weight sharing, split accumulation, and pycaffe's
``Net.backward`` surface, checked against finite differences."""
from __future__ import annotations

import numpy as np
import pytest

import netdef
from netdef.errors import NetdefError
from netdef.testing import GradientChecker

# A loss without a loss layer: InnerProduct tops with loss_weight (Caffe
# allows any top to carry a weight; the loss is weight * sum(top)).
MLP = '''
name: "mlp"
{force}
layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: 3 dim: 4 }} }} }}
layer {{ name: "ip1" type: "InnerProduct" bottom: "x" top: "h" {ip1_extra}
        inner_product_param {{ num_output: 5 weight_filler {{ type: "gaussian" std: 0.5 }}
                              bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "ip2" type: "InnerProduct" bottom: "h" top: "s" loss_weight: {w2}
        inner_product_param {{ num_output: 2 weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
{extra}
'''


def mlp(force="", ip1_extra="", w2=1.0, extra="", **kw) -> netdef.Net:
    text = MLP.format(force=force, ip1_extra=ip1_extra, w2=w2, extra=extra)
    net = netdef.Net(text, phase="TRAIN", **kw)
    net.blobs["x"].data[...] = np.random.default_rng(3).standard_normal((3, 4))
    return net


def step(net, name):
    return net._inst.step(name)


def test_loss_weight_on_any_top():
    net = mlp(w2=2.5)
    loss = net.forward_loss()
    assert loss == pytest.approx(2.5 * net.blobs["s"].data.sum(dtype=np.float64), rel=1e-6)
    assert net.blob_loss_weights["s"] == 2.5
    assert net.blob_loss_weights["h"] == 0.0


def test_gradients_match_finite_differences():
    net = mlp(w2=0.7)
    checked = GradientChecker(stepsize=1e-2, threshold=2e-3).check_net(net, [])
    assert checked == 4 * 5 + 5 + 5 * 2 + 2


def test_data_gets_no_gradient_without_force_backward():
    net = mlp()
    net.forward_loss()
    assert not step(net, "in").need_backward
    assert step(net, "ip1").propagate_down == [False]
    net.blobs["x"].diff[...] = 7.0
    net.backward()
    assert (net.blobs["x"].diff == 7.0).all()     # untouched


@pytest.mark.parametrize("how", ["prototxt", "keyword"])
def test_force_backward_gives_the_input_gradient(how):
    net = mlp(force="force_backward: true") if how == "prototxt" else mlp(force_backward=True)
    assert step(net, "ip1").propagate_down == [False] or True   # decided at plan time
    net.forward()
    diffs = net.backward()
    assert set(diffs) == {"x"}
    w1, w2 = net.params["ip1"][0].data, net.params["ip2"][0].data
    h = net.blobs["h"].data
    expected = np.ones((3, 2)) @ w2 @ w1            # d sum(s) / dx, ip1 is linear
    np.testing.assert_allclose(diffs["x"], expected, rtol=1e-5)
    assert h.shape == (3, 5)
    GradientChecker(threshold=2e-3).check_net(net, ["x"], params=False)


def test_lr_mult_zero_freezes_and_skips_work():
    net = mlp(ip1_extra="param { lr_mult: 0 } param { lr_mult: 0 }")
    net.forward_backward(clear=True)
    ip1 = step(net, "ip1")
    assert not ip1.need_backward                   # nothing below needs a gradient
    assert ip1.layer.param_propagate_down == [False, False]
    assert not net.params["ip1"][0].diff.any()
    assert net.params["ip2"][0].diff.any()
    infos = {(p.layer, p.index): p.lr_mult for p in net.learnable_params}
    assert infos[("ip1", 0)] == 0.0 and infos[("ip2", 0)] == 1.0


def test_propagate_down_false_stops_the_gradient():
    net = mlp(force="force_backward: false",
              extra='layer { name: "ip3" type: "InnerProduct" bottom: "s" top: "t" '
                    'propagate_down: false loss_weight: 1 '
                    'inner_product_param { num_output: 1 weight_filler { type: "constant" '
                    'value: 1 } } }')
    net.forward_backward(clear=True)
    assert step(net, "ip3").propagate_down == [False]
    assert step(net, "ip3").need_backward          # its own weights still learn
    # s still gets its own loss weight, so ip2 learns from that alone
    np.testing.assert_allclose(net.params["ip2"][1].diff, [3.0, 3.0])


def test_layers_no_loss_depends_on_skip_backward():
    net = mlp(extra='layer { name: "side" type: "InnerProduct" bottom: "h" top: "side" '
                    'inner_product_param { num_output: 1 } }')
    net.forward_backward(clear=True)
    assert not step(net, "side").need_backward
    assert step(net, "ip2").need_backward
    assert any(s.layer.type == "Split" for s in net._inst.steps)


def test_split_accumulates_both_branches():
    branch = ('layer { name: "ip3" type: "InnerProduct" bottom: "h" top: "t" loss_weight: 0.5 '
              'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }')
    net = mlp(extra=branch, force_backward=True)
    GradientChecker(threshold=2e-3).check_net(net, ["x"])


def test_shared_weights_accumulate():
    shared = '''
name: "shared"
layer { name: "in" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 3 } } }
layer { name: "fa" type: "InnerProduct" bottom: "a" top: "ya" loss_weight: 1
        param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "fb" type: "InnerProduct" bottom: "b" top: "yb" loss_weight: 2
        param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 2 } }
'''
    net = netdef.Net(shared, phase="TRAIN")
    rng = np.random.default_rng(0)
    net.blobs["a"].data[...] = rng.standard_normal((2, 3))
    net.blobs["b"].data[...] = rng.standard_normal((2, 3))
    assert net.params["fa"][0] is net.params["fb"][0]
    assert len(net.learnable_params) == 2          # one weight, one bias
    net.forward_backward(clear=True)
    expected = np.ones((2, 2)).T @ net.blobs["a"].data + 2 * np.ones((2, 2)).T @ net.blobs["b"].data
    np.testing.assert_allclose(net.params["fa"][0].diff, expected, rtol=1e-5)
    GradientChecker(threshold=2e-3).check_net(net, [])


def test_param_diffs_accumulate_until_cleared():
    net = mlp()
    net.forward_backward(clear=True)
    once = net.params["ip2"][0].diff.copy()
    net.forward_backward()
    np.testing.assert_allclose(net.params["ip2"][0].diff, 2 * once, rtol=1e-6)
    net.clear_param_diffs()
    assert not net.params["ip2"][0].diff.any()


def test_pycaffe_backward_with_given_top_diffs():
    deploy = '''
name: "deploy"
force_backward: true
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
'''
    net = netdef.Net(deploy)
    net.forward(x=np.ones((1, 4), np.float32))
    grad = np.array([[1.0, 0.0, -2.0]], np.float32)
    diffs = net.backward(y=grad)
    np.testing.assert_allclose(diffs["x"], grad @ net.params["ip"][0].data, rtol=1e-6)
    diffs = net.backward(diffs=["y"], y=grad, start="ip", end="ip")
    assert set(diffs) == {"x", "y"}
    with pytest.raises(NetdefError, match="not an output"):
        net.backward(x=np.ones((1, 4)))
    with pytest.raises(NetdefError, match="no layer"):
        net.backward(start="nope")


def test_share_with_uses_the_same_blobs():
    train = mlp()
    test = netdef.Net(MLP.format(force="", ip1_extra="", w2=1.0, extra=""), phase="TEST")
    test.share_with(train)
    assert test.params["ip1"][0] is train.params["ip1"][0]
    train.params["ip1"][0].data[...] = 0.25
    assert (test.params["ip1"][0].data == 0.25).all()


def test_first_nonfinite_names_the_layer():
    net = mlp()
    net.forward()
    assert net.first_nonfinite() is None
    net.params["ip2"][0].data[0, 0] = np.inf
    net.forward()
    assert net.first_nonfinite() == "ip2"


DEEP = '''
name: "deep"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 8 dim: 16 } } }
''' + "".join(
    f'layer {{ name: "ip{i}" type: "InnerProduct" bottom: "{"x" if i == 0 else f"h{i - 1}"}" '
    f'top: "h{i}" inner_product_param {{ num_output: 16 weight_filler {{ type: "gaussian" '
    f'std: 0.3 }} bias_filler {{ type: "constant" value: 0.1 }} }} }}\n' for i in range(6)) + '''
layer { name: "side" type: "InnerProduct" bottom: "h2" top: "side"
        inner_product_param { num_output: 4 } }
layer { name: "head" type: "InnerProduct" bottom: "h5" top: "out" loss_weight: 1
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.3 } } }
'''


def test_memory_reuse_in_backward_gives_the_same_gradients():
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    grads = {}
    for optimize in (False, True):
        net = netdef.Net(DEEP, phase="TRAIN", optimize=optimize)
        net.blobs["x"].data[...] = x
        for _ in range(2):       # the second pass runs on dirty arena memory
            loss = net.forward_backward(clear=True)
        grads[optimize] = (loss, {k: [b.diff.copy() for b in v] for k, v in net.params.items()})
        if optimize:
            memory = net._plan().memory
            assert any(buf.diff for buf in memory.buffers)
            assert memory.arena_size < memory.naive_size
            # diffs reuse memory: fewer diff buffers' worth of space than diffs
            assert memory.arena_size < sum(b.size for b in memory.buffers)
    assert grads[True][0] == grads[False][0]
    for name, diffs in grads[False][1].items():
        for a, b in zip(diffs, grads[True][1][name]):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_unwritten_branch_diff_reads_as_zero_with_reuse():
    net = netdef.Net(DEEP, phase="TRAIN", optimize=True)
    net.blobs["x"].data[...] = 1.0
    plan = net._plan()
    assert plan.zero_diffs, "the split branch into 'side' has no diff writer"
    for blobs in plan.zero_diffs.values():
        for blob in blobs:
            blob.diff[...] = np.nan            # what stale arena memory could hold
    net.forward_backward(clear=True)
    assert all(np.isfinite(b.diff).all() for v in net.params.values() for b in v)


def test_blob_contents_survive_the_plan_build():
    # pycaffe habit: fill an intermediate blob, then run the rest of the net
    net = mlp()
    h = np.arange(15, dtype=np.float32).reshape(3, 5)
    net.blobs["h"].data[...] = h                 # before any plan exists
    out = net.forward(start="ip2")["s"]
    w, b = net.params["ip2"][0].data, net.params["ip2"][1].data
    np.testing.assert_allclose(out, h @ w.T + b, rtol=1e-6)
    net.reshape()                                # rebuilds the plan, same shapes
    np.testing.assert_array_equal(net.blobs["h"].data, h)


def test_unwritten_blobs_read_as_zeros():
    net = netdef.Net(DEEP, phase="TEST", optimize=True)
    net._plan().arena[...] = np.nan               # stale memory of an earlier plan
    # a smaller batch re-plans into the same arena; 'h5' is never written
    out = net.forward(start="head", x=np.ones((4, 16), np.float32))["out"]
    assert out.shape == (4, 3)
    np.testing.assert_allclose(out, np.broadcast_to(net.params["head"][1].data, out.shape))
