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
