"""The pycaffe-shaped Net API over compiled plans."""
import numpy as np
import pytest

from netdef.errors import InputError, NetdefError, WeightsError
from netdef.net import Net
from netdef.testing import randomize_weights

SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def reference_forward(net, x):
    """The same net in plain NumPy from net.params (slow and obvious)."""
    w = net.params["conv1"][0].data
    mean, var, factor = (b.data for b in net.params["bn1"])
    gamma, beta = (b.data for b in net.params["scale1"])
    n, _, h, wd = x.shape
    conv = np.zeros((n, 4, h - 2, wd - 2))
    for i in range(h - 2):
        for j in range(wd - 2):
            conv[:, :, i, j] = np.einsum("nchw,ochw->no", x[:, :, i:i + 3, j:j + 3], w)
    f = 1 / factor[0]
    conv = (conv - mean[None, :, None, None] * f) / np.sqrt(var[None, :, None, None] * f + 1e-5)
    conv = np.maximum(conv * gamma[None, :, None, None] + beta[None, :, None, None], 0)
    pool = conv.reshape(n, 4, 3, 2, 3, 2).max(axis=(3, 5))
    fc = pool.reshape(n, -1) @ net.params["fc"][0].data.T + net.params["fc"][1].data
    e = np.exp(fc - fc.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture(params=[False, True], ids=["plain", "optimized"])
def net(request):
    n = Net(SMALL, optimize=request.param)
    randomize_weights(n, seed=5)
    return n


def test_surface(net):
    assert net.inputs == ["data"] and net.outputs == ["prob"]
    assert net.params["conv1"][0].shape == (4, 3, 3, 3)
    assert [b.shape for b in net.params["bn1"]] == [(4,), (4,), (1,)]
    assert net.blobs["pool1"].shape == (2, 4, 3, 3)
    assert "small" in repr(net)


def test_forward_matches_numpy_reference(net):
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = net.forward(data=x)["prob"]
    np.testing.assert_allclose(out, reference_forward(net, x), rtol=1e-4, atol=1e-6)


def test_writing_the_input_blob_then_forward(net):
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    net.blobs["data"].data[...] = x
    np.testing.assert_allclose(net.forward()["prob"], reference_forward(net, x), rtol=1e-4,
                               atol=1e-6)


def test_new_batch_size_replans_and_back(net):
    rng = np.random.default_rng(2)
    for batch in (5, 1, 2):
        x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
        out = net.forward(data=x)["prob"]
        assert out.shape == (batch, 5)
        np.testing.assert_allclose(out, reference_forward(net, x), rtol=1e-4, atol=1e-6)


def test_pycaffe_style_reshape_then_fill(net):
    net.blobs["data"].reshape((3, 3, 8, 8))
    net.reshape()
    x = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
    net.blobs["data"].data[...] = x
    np.testing.assert_allclose(net.forward()["prob"], reference_forward(net, x), rtol=1e-4,
                               atol=1e-6)


def test_forward_end_returns_that_layers_tops():
    net = Net(SMALL)
    randomize_weights(net, seed=1)
    out = net.forward(end="pool1", data=np.ones((2, 3, 8, 8), np.float32))
    assert list(out) == ["pool1"] and out["pool1"].shape == (2, 4, 3, 3)


def test_plain_nets_keep_every_blob_readable():
    net = Net(SMALL)
    randomize_weights(net, seed=1)
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    net.forward(data=x)
    fc = net.blobs["pool1"].data.reshape(2, -1) @ net.params["fc"][0].data.T + net.params["fc"][1].data
    np.testing.assert_allclose(net.blobs["fc"].data, fc, rtol=1e-5)


def test_optimized_plan_fuses_and_saves_memory():
    net = Net(SMALL, optimize=True)
    log = " ".join(net.plan_log)
    assert "folded 2 BatchNorm/Scale" in log and "1 ReLUs" in log
    assert "memory:" in log


PRE_ACTIVATION = """
name: "pre_activation"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "data_bn" type: "BatchNorm" bottom: "data" top: "data_bn" }
layer { name: "data_scale" type: "Scale" bottom: "data_bn" top: "data_bn" scale_param { bias_term: true } }
layer { name: "conv1" type: "Convolution" bottom: "data_bn" top: "conv1"
        convolution_param { num_output: 3 kernel_size: 3 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "data_bn" top: "sum" }
layer { name: "bn1" type: "BatchNorm" bottom: "sum" top: "bn1" }
layer { name: "scale1" type: "Scale" bottom: "bn1" top: "bn1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "bn1" top: "bn1" relu_param { negative_slope: 0.1 } }
layer { name: "conv2" type: "Convolution" bottom: "bn1" top: "conv2"
        convolution_param { num_output: 2 kernel_size: 1 } }
"""


@pytest.mark.parametrize("keep,chains", [
    ((), {"data_bn+data_scale", "sum+bn1+scale1+relu1"}),
    (("data_bn",), {"sum+bn1+scale1+relu1"}),
    # a kept blob cuts the chain after the step that writes it
    (("bn1",), {"data_bn+data_scale", "sum+bn1"}),
    (("sum",), {"data_bn+data_scale", "bn1+scale1+relu1"}),
])
def test_batchnorm_chains_after_no_convolution_run_as_one_affine_map(keep, chains):
    """A pre-activation block: BN/Scale(/ReLU) on the input, and the sum
    with the BN/Scale/ReLU after it, become one step each, unless the
    caller keeps a blob inside the chain."""
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    plain = Net(PRE_ACTIVATION, keep=keep)
    randomize_weights(plain, seed=3)
    for name in ("data_bn", "bn1"):     # statistics away from 0/1, factor 2
        plain.params[name][0].data[...] = np.array([0.4, -1.0, 2.0])
        plain.params[name][1].data[...] = np.array([0.5, 3.0, 0.2])
        plain.params[name][2].data[...] = 2.0
    fused = Net(PRE_ACTIVATION, optimize=True, keep=keep)
    for name, blobs in plain.params.items():
        for src, dst in zip(blobs, fused.params[name]):
            dst.data[...] = src.data
    fused.reshape()          # the plan folds the weights it sees now
    want = plain.forward(data=x)["conv2"].copy()
    np.testing.assert_allclose(fused.forward(data=x)["conv2"], want, rtol=1e-5, atol=1e-6)
    for name in keep:
        np.testing.assert_allclose(fused.blobs[name].data, plain.blobs[name].data, rtol=1e-5,
                                   atol=1e-6)
    steps = {s.name for s in fused._plan().steps}
    assert chains <= steps
    assert not {n for n in steps if "+" in n and n not in chains}
    # a chain cut by a kept blob runs its BatchNorm/Scale pieces as affine
    # maps; relu1, cut from scale1 by the kept bn1, stays a ReLU
    count = 4 if "bn1" in keep else 5
    assert f"{count} other BatchNorm/Scale/ReLU layers" in " ".join(fused.plan_log)


def test_a_sum_read_by_two_layers_is_not_fused():
    """The sum's own values are still needed by the other reader."""
    text = PRE_ACTIVATION.replace(
        'layer { name: "conv2"',
        'layer { name: "conv3" type: "Convolution" bottom: "sum" top: "conv3"\n'
        '        convolution_param { num_output: 2 kernel_size: 1 } }\nlayer { name: "conv2"')
    plain = Net(text)
    randomize_weights(plain, seed=5)
    fused = Net(text, optimize=True)
    for name, blobs in plain.params.items():
        for src, dst in zip(blobs, fused.params[name]):
            dst.data[...] = src.data
    fused.reshape()
    assert not [s.name for s in fused._plan().steps if s.name.startswith("sum+")]
    x = np.random.default_rng(6).standard_normal((2, 3, 6, 6)).astype(np.float32)
    want = {k: v.copy() for k, v in plain.forward(data=x).items()}
    got = fused.forward(data=x)
    for name in ("conv2", "conv3"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


NAN_PATHS = """
name: "nan_paths"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 51 dim: 51 } } }
layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }
layer { name: "relu0" type: "ReLU" bottom: "bn" top: "bn" }
layer { name: "big" type: "Convolution" bottom: "bn" top: "big"
        convolution_param { num_output: 16 kernel_size: 7 pad: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "big" top: "big" relu_param { negative_slope: 0.5 } }
layer { name: "dw" type: "Convolution" bottom: "big" top: "dw"
        convolution_param { num_output: 16 group: 16 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "dw" top: "dw" }
layer { name: "wino" type: "Convolution" bottom: "dw" top: "wino"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu3" type: "ReLU" bottom: "wino" top: "wino" }
layer { name: "pw" type: "Convolution" bottom: "wino" top: "pw"
        convolution_param { num_output: 12 kernel_size: 1 } }
layer { name: "relu4" type: "ReLU" bottom: "pw" top: "pw" relu_param { negative_slope: 0.25 } }
layer { name: "pool" type: "Pooling" bottom: "pw" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
"""


def test_fused_relus_keep_nan_as_caffe_does():
    """Every fused ReLU (one-pass affine, banded, depthwise, Winograd and
    pointwise convolutions) is Caffe's max(v, 0) + slope * min(v, 0): NaN
    stays NaN."""
    x = np.random.default_rng(2).standard_normal((1, 3, 51, 51)).astype(np.float32)
    x[0, 1, 25, 25] = np.nan
    plain = Net(NAN_PATHS)
    randomize_weights(plain, seed=4)
    fused = Net(NAN_PATHS, optimize=True, keep=("dw",))
    for name, blobs in plain.params.items():
        for src, dst in zip(blobs, fused.params[name]):
            dst.data[...] = src.data
    fused.reshape()
    kinds = {type(s.layer).__name__ + ("/bands" if getattr(s.layer, "band", 0) else "")
             + ("/winograd" if getattr(s.layer, "winograd", None) is not None else "")
             + ("/pointwise" if getattr(s.layer, "pointwise", None) is not None else "")
             for s in fused._plan().steps}
    if {"FusedConvolution/bands", "FusedConvolution/winograd",
            "FusedConvolution/pointwise"} - kinds:
        pytest.skip(f"this numpy's BLAS cannot be called from kernels: {sorted(kinds)}")
    plain.forward(data=x)
    fused.forward(data=x)
    want, got = plain.blobs["dw"].data, fused.blobs["dw"].data
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)
    # Winograd's transforms mix each 6x6 input tile, so a NaN reaches more
    # outputs than a direct convolution's; none of them may become a number
    want, got = plain.blobs["wino"].data, fused.blobs["wino"].data
    assert np.isnan(got[np.isnan(want)]).all()
    finite = ~np.isnan(got)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-5)
    # the pointwise layer reads Winograd's output: compare it on its own input
    plain.blobs["wino"].data[...] = fused.blobs["wino"].data
    plain._plan().run(*_step_range(plain, "pw"))
    want, got = plain.blobs["pw"].data, fused.blobs["pw"].data
    assert np.isnan(want).any() and not np.isnan(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, equal_nan=True)


def _step_range(net, first: str) -> tuple[int, int]:
    """(index of the step named ``first``, index of the last step) of net's plan."""
    steps = net._plan().steps
    return next(i for i, s in enumerate(steps) if s.name == first), len(steps) - 1


def test_fusion_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("NETDEF_NO_FUSE", "1")
    net = Net(SMALL, optimize=True)
    assert any("fuse: off" in line for line in net.plan_log)


def test_weights_round_trip(tmp_path):
    a = Net(SMALL)
    randomize_weights(a, seed=7)
    path = tmp_path / "small.caffemodel"
    a.save(str(path))
    b = Net(SMALL, weights=str(path))
    assert not b.random_weights
    for name, blobs in a.params.items():
        for x, y in zip(blobs, b.params[name]):
            np.testing.assert_array_equal(x.data, y.data)
    assert sorted(b.load_report.loaded) == sorted(a.params)


def test_loading_weights_of_another_shape_names_layer_and_shapes(tmp_path):
    other = SMALL.replace("num_output: 5", "num_output: 6")
    a = Net(other)
    path = tmp_path / "other.caffemodel"
    a.save(str(path))
    with pytest.raises(WeightsError) as err:
        Net(SMALL, weights=str(path))
    assert "fc" in str(err.value) and "(5, 36)" in str(err.value) and "(6, 36)" in str(err.value)


def test_feeding_an_unknown_input_suggests_the_name():
    net = Net(SMALL)
    with pytest.raises(InputError, match="did you mean 'data'"):
        net.forward(dta=np.zeros((2, 3, 8, 8), np.float32))


def test_unknown_layer_for_end_is_a_clear_error():
    with pytest.raises(NetdefError, match="no layer 'pool9'"):
        Net(SMALL).forward(end="pool9")


def test_net_without_input_shape_cannot_run_until_fed():
    text = SMALL.replace("input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } }", "")
    net = Net(text)
    with pytest.raises(NetdefError, match="unknown"):
        net.forward()
    randomize_weights(net, seed=1)
    x = np.random.default_rng(5).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert net.forward(data=x)["prob"].shape == (1, 5)


# ------------------------------------------------------ memory that cannot fit ----
HUGE_BATCH = """name: "huge"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1000000000 dim: 1 dim: 28 dim: 28 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 20 kernel_size: 5 } }
"""


def test_forward_that_cannot_fit_says_how_much_before_allocating():
    from netdef.compile.memory import OutOfMemory

    net = Net(HUGE_BATCH)                    # shapes only: nothing big allocated yet
    with pytest.raises(OutOfMemory) as info:
        net.forward()
    err = info.value
    assert isinstance(err, NetdefError) and str(err.where) == "<string>:2:1"
    assert "net 'huge' with these input shapes needs" in err.message
    assert "TiB of memory" in err.message and "is available" in err.message
    assert "the largest blob is 'conv1' (1000000000, 20, 24, 24)" in err.hint
    assert not net.blobs["data"].allocated


def test_parameters_that_cannot_fit_are_refused_before_filling(monkeypatch):
    from netdef.compile.memory import OutOfMemory, available_bytes

    monkeypatch.setenv("NETDEF_MEMORY_LIMIT", "4096")
    assert available_bytes() == 4096
    text = HUGE_BATCH.replace("1000000000", "1").replace("num_output: 20", "num_output: 200")
    with pytest.raises(OutOfMemory) as info:
        Net(text)
    assert "the parameters of net 'huge' need 20.3 KiB of memory" in info.value.message
    assert "layer 'conv1' (Convolution)" in info.value.hint
    assert str(info.value.where) == "<string>:4:1"
    monkeypatch.delenv("NETDEF_MEMORY_LIMIT")
    assert Net(text).forward()["conv1"].shape == (1, 200, 24, 24)
    assert available_bytes() is None or available_bytes() > 2**20
