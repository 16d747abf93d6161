"""pycaffe's surface on netdef, in process: NetSpec, solvers, Net methods, io, coord_map, draw."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from google.protobuf import text_format

from netdef.compat import caffe
from netdef.compat.caffe import layers as L
from netdef.compat.caffe import params as P
from netdef.errors import NetdefError
from netdef.frontend.schema import pb


# ------------------------------------------------------------ NetSpec ----

def lenet(batch: int = 8, source: str = "memory") -> pb.NetParameter:
    """A small LeNet written as pycaffe users write it (examples/pycaffe)."""
    n = caffe.NetSpec()
    if source == "memory":
        n.data, n.label = L.MemoryData(batch_size=batch, channels=1, height=12, width=12,
                                       ntop=2)
    else:
        n.data, n.label = L.DummyData(shape=[dict(dim=[batch, 1, 12, 12]),
                                             dict(dim=[batch, 1, 1, 1])],
                                      data_filler=[dict(type="gaussian"),
                                                   dict(type="constant", value=1)], ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=4,
                            weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.conv2 = L.Convolution(n.pool1, kernel_size=3, num_output=6,
                            weight_filler=dict(type="xavier"),
                            param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.pool2 = L.Pooling(n.conv2, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool2, num_output=16, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=3, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    n.acc = L.Accuracy(n.score, n.label, include=dict(phase=caffe.TEST))
    return n.to_proto()


def test_netspec_lenet_text_names_and_fields():
    net = lenet()
    assert [layer.name for layer in net.layer] == [
        "data", "conv1", "pool1", "conv2", "pool2", "fc1", "relu1", "score", "loss", "acc"]
    by = {layer.name: layer for layer in net.layer}
    assert list(by["data"].top) == ["data", "label"]
    assert list(by["relu1"].bottom) == list(by["relu1"].top) == ["fc1"]     # in place
    assert by["conv1"].convolution_param.kernel_size == [3]          # shorthand routed
    assert by["conv1"].convolution_param.weight_filler.type == "xavier"
    assert [p.lr_mult for p in by["conv2"].param] == [1, 2]
    assert by["pool1"].pooling_param.pool == pb.PoolingParameter.MAX
    assert by["acc"].include[0].phase == pb.TEST
    assert "layer {" in str(net) and 'type: "Convolution"' in str(net)


def test_netspec_text_parses_back_to_the_same_net():
    from netdef.frontend.source import read_net

    net = lenet()
    text = str(net)
    # netdef's parser, and protobuf's text format (what Caffe itself reads)
    assert read_net(text).param == net
    assert text_format.Parse(text, pb.NetParameter()) == net
    path = _write(text)
    assert caffe.Net(path, caffe.TRAIN)._layer_names == [
        "data", "conv1", "pool1", "conv2", "pool2", "fc1", "relu1", "score", "loss"]
    assert caffe.Net(path, caffe.TEST)._layer_names == [           # Caffe's split names
        "data", "label_data_1_split", "conv1", "pool1", "conv2", "pool2", "fc1", "relu1",
        "score", "score_score_0_split", "loss", "acc"]


def _write(text: str) -> str:
    import tempfile

    f = tempfile.NamedTemporaryFile("w", suffix=".prototxt", delete=False)
    f.write(text)
    f.close()
    return f.name


def test_netspec_autonames_ntop_and_to_proto():
    data = L.Input(shape=dict(dim=[1, 2, 5, 5]))
    conv = L.Convolution(data, kernel_size=1, num_output=2)
    relu = L.ReLU(conv, in_place=True)
    a, b = L.Slice(relu, slice_point=[1], ntop=2)
    net = caffe.to_proto(a, b)
    assert [layer.name for layer in net.layer] == ["Input1", "Convolution1", "ReLU1", "Slice1"]
    assert list(net.layer[3].top) == ["Slice1", "Slice2"]
    assert net.layer[3].slice_param.slice_point == [1]
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 2]))
    n.silence = L.Silence(n.data, ntop=0)                 # a layer with no top
    n["named"] = L.ReLU(n.data, name="custom", loss_weight=0.5, propagate_down=False)
    proto = n.to_proto()
    assert [layer.name for layer in proto.layer] == ["data", "silence", "custom"]
    assert not proto.layer[1].top and list(proto.layer[2].top) == ["named"]
    assert proto.layer[2].loss_weight == [0.5] and proto.layer[2].propagate_down == [False]
    python = caffe.to_proto(L.Python(data, module="m", layer="Lay", param_str="{'a': 1}"))
    assert python.layer[1].python_param.layer == "Lay"


def test_netspec_sub_messages_lists_and_enum_names():
    top = L.Convolution(L.Input(), kernel_size=[3, 5], stride=(1, 2), num_output=np.int64(4),
                        engine="CAFFE", bias_filler=dict(type="constant", value=np.float32(.5)),
                        convolution_param=dict(group=2))
    layer = top.to_proto().layer[1]
    assert list(layer.convolution_param.kernel_size) == [3, 5]
    assert list(layer.convolution_param.stride) == [1, 2]
    assert layer.convolution_param.group == 2 and layer.convolution_param.num_output == 4
    assert layer.convolution_param.engine == pb.ConvolutionParameter.CAFFE
    assert layer.convolution_param.bias_filler.value == 0.5
    data = L.Data(source="x", backend=P.Data.LMDB, batch_size=2, ntop=2,
                  transform_param=dict(scale=1 / 256, mirror=True))
    d = data[0].to_proto().layer[0]
    assert d.data_param.backend == pb.DataParameter.LMDB and d.transform_param.mirror


def test_netspec_errors_are_pycaffes_exceptions():
    n = caffe.NetSpec()
    with pytest.raises(KeyError):
        _ = n.missing
    assert not hasattr(n, "missing")
    with pytest.raises(AttributeError, match="kernel_size"):       # did you mean
        L.Convolution(L.Input(), kernel_sz=3).to_proto()
    with pytest.raises(AttributeError, match="not a value"):
        L.Pooling(L.Input(), pool="MAXX").to_proto()
    with pytest.raises(AttributeError, match="MAX"):
        _ = P.Pooling.MAXX
    with pytest.raises(TypeError):
        L.Convolution(L.Input(), num_output="many").to_proto()
    with pytest.raises(AttributeError, match="convolution_param"):  # no own message
        L.Deconvolution(L.Input(), kernel_size=2).to_proto()
    for fails in (lambda: n.missing, lambda: P.Nope.X, lambda: L.ReLU(3)):
        with pytest.raises(NetdefError):       # and netdef errors, for the CLI
            fails()


def test_param_name_dict_comes_from_the_descriptor():
    from netdef.compat.net_spec import param_name_dict

    names = param_name_dict()
    assert names["Convolution"] == "convolution_param"
    assert names["InnerProduct"] == "inner_product_param"
    assert names["HDF5Data"] == "hdf5_data_param"
    assert names["Python"] == "python_param"


# ------------------------------------------------------------ solvers ----

SOLVER = """train_net: "{train}"
test_net: "{test}"
test_iter: 1
test_interval: 1000
test_initialization: false
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
display: 0
max_iter: 30
snapshot_prefix: "{prefix}"
random_seed: 3
type: "{type}"
"""


def _data(n: int = 32):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 12, 12)).astype(np.float32)
    y = (x[:, 0, :6].mean((1, 2)) > 0).astype(np.float32) + (x[:, 0, 6:].mean((1, 2)) > 0)
    return x, y


@pytest.fixture
def solver_file(tmp_path):
    def make(type_name: str = "SGD", source: str = "memory") -> str:
        train = tmp_path / "train.prototxt"
        train.write_text(str(lenet(8, source)))
        path = tmp_path / f"solver_{type_name}.prototxt"
        path.write_text(SOLVER.format(train=train, test=train, prefix=tmp_path / "snap",
                                      type=type_name))
        return str(path)
    return make


def test_netspec_lenet_trains_through_sgdsolver(solver_file):
    solver = caffe.SGDSolver(solver_file())
    x, y = _data()
    solver.net.set_input_arrays(x, y)
    solver.test_nets[0].set_input_arrays(x, y)
    assert isinstance(solver.net, caffe.Net) and solver.net is solver.net
    losses = []
    for _ in range(25):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert solver.iter == 25
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # the test net shares the trained weights
    np.testing.assert_array_equal(solver.test_nets[0].params["conv1"][0].data,
                                  solver.net.params["conv1"][0].data)
    out = solver.test_nets[0].forward()
    assert 0.0 <= float(out["acc"]) <= 1.0


def test_writing_the_data_blob_then_stepping(solver_file):
    """``solver.net.blobs['data'].data[...] = x`` as pycaffe notebooks do (DummyData net)."""
    solver = caffe.get_solver(solver_file("SGD", source="dummy"))
    assert type(solver).__name__ == "SGDSolver"
    solver.step(1)
    x, _ = _data(8)
    solver.net.blobs["data"].data[...] = x
    solver.net.forward(start="conv1")
    np.testing.assert_array_equal(solver.net.blobs["data"].data, x)


@pytest.mark.parametrize("kind", ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_every_solver_class_and_get_solver(solver_file, kind):
    cls = getattr(caffe, f"{kind}Solver")
    path = solver_file(kind)
    text = open(path).read()
    if kind in ("AdaGrad", "RMSProp"):
        text = text.replace("momentum: 0.9", "momentum: 0")
    if kind == "AdaDelta":
        text = text.replace("base_lr: 0.05", "base_lr: 1.0")
    open(path, "w").write(text)
    solver = cls(path)
    assert solver.type == kind
    x, y = _data()
    solver.net.set_input_arrays(x, y)
    before = solver.net.params["fc1"][0].data.copy()
    solver.step(2)
    assert solver.iter == 2
    assert not np.array_equal(before, solver.net.params["fc1"][0].data)
    assert type(caffe.get_solver(path)) is cls


def test_solver_snapshot_restore_callbacks_and_share(solver_file, tmp_path):
    path = solver_file()
    solver = caffe.SGDSolver(path)
    x, y = _data()
    solver.net.set_input_arrays(x, y)
    calls = []
    solver.add_callback(lambda: calls.append("start"), lambda: calls.append("grad"))
    solver.step(2)
    assert calls == ["start", "grad", "start", "grad"]
    solver.snapshot()
    state = tmp_path / "snap_iter_2.solverstate"
    assert state.exists() and (tmp_path / "snap_iter_2.caffemodel").exists()
    solver.step(1)
    weights = solver.net.params["fc1"][0].data.copy()
    other = caffe.SGDSolver(path)
    # MemoryData's position is not in a solverstate (nor in Caffe's): the
    # restored solver serves the batch the original served at iteration 2
    other.net.set_input_arrays(np.roll(x, -16, axis=0), np.roll(y, -16, axis=0))
    other.restore(str(state))
    assert other.iter == 2
    other.step(1)
    np.testing.assert_array_equal(other.net.params["fc1"][0].data, weights)
    net = caffe.Net(str(tmp_path / "train.prototxt"), caffe.TEST)
    solver.share_weights(net)
    assert net.params["fc1"][0].data is not None
    np.testing.assert_array_equal(net.params["fc1"][0].data, solver.net.params["fc1"][0].data)
    solver.net.params["fc1"][0].data[...] = 7
    assert (net.params["fc1"][0].data == 7).all()


def test_set_random_seed_seeds_solvers_without_their_own(solver_file):
    path = solver_file()
    text = open(path).read().replace("random_seed: 3\n", "")
    open(path, "w").write(text)
    caffe.set_random_seed(11)
    try:
        a = caffe.SGDSolver(path).net.params["conv1"][0].data.copy()
        b = caffe.SGDSolver(path).net.params["conv1"][0].data.copy()
    finally:
        caffe._RANDOM_SEED.clear()
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- Net ----

TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "conv" top: "ip2"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.3 } } }
force_backward: true
"""


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY)
    return str(path)


def test_names_indices_and_loss_weights(tiny):
    net = caffe.Net(tiny, caffe.TEST)
    assert net._layer_names == ["data", "conv", "relu", "conv_relu_0_split", "ip", "ip2"]
    assert net._blob_names == ["data", "conv", "conv_relu_0_split_0", "conv_relu_0_split_1",
                               "ip", "ip2"]
    assert [net._blob_names[i] for i in net._inputs] == net.inputs == ["data"]
    assert [net._blob_names[i] for i in net._outputs] == net.outputs == ["ip", "ip2"]
    assert net.top_names["conv_relu_0_split"] == ["conv_relu_0_split_0", "conv_relu_0_split_1"]
    assert net.bottom_names["ip2"] == ["conv_relu_0_split_1"]
    assert list(net.blob_loss_weights.values()) == [0.0] * 6


def test_backward_matches_a_numerical_gradient(tiny):
    net = caffe.Net(tiny, caffe.TEST)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    g_ip, g_ip2 = rng.standard_normal((2, 5)), rng.standard_normal((2, 2))

    def objective(data):
        out = net.forward(data=data)
        return float((out["ip"] * g_ip).sum() + (out["ip2"] * g_ip2).sum())

    objective(x)
    grads = net.backward(ip=g_ip, ip2=g_ip2, diffs=["conv"])
    assert set(grads) == {"data", "conv"}
    eps, i = 1e-2, (1, 2, 3, 4)
    plus, minus = x.copy(), x.copy()
    plus[i] += eps
    minus[i] -= eps
    numeric = (objective(plus) - objective(minus)) / (2 * eps)
    objective(x)
    grads = net.backward(ip=g_ip, ip2=g_ip2)
    assert grads["data"][i] == pytest.approx(numeric, rel=2e-2, abs=1e-3)
    # start/end: from ip down to the split; the split's bottom diff is returned
    part = net.backward(start="ip", end="conv_relu_0_split", ip=g_ip, ip2=g_ip2)
    assert set(part) == {"conv"}
    with pytest.raises(ValueError, match="do not match net outputs"):
        net.backward(ip=g_ip)
    with pytest.raises(ValueError, match="batch sized"):
        net.backward(ip=g_ip[:1], ip2=g_ip2)
    with pytest.raises(ValueError, match="no layer"):
        net.forward(start="nope")


def test_forward_backward_all_batches_and_pads(tiny):
    net = caffe.Net(tiny, caffe.TEST)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3, 6, 6)).astype(np.float32)
    g = rng.standard_normal((5, 5)).astype(np.float32)
    g2 = rng.standard_normal((5, 2)).astype(np.float32)
    blobs, diffs = net.forward_backward_all(data=x, ip=g, ip2=g2)
    assert blobs["ip"].shape == (5, 5) and diffs["data"].shape == (5, 3, 6, 6)
    net.forward(data=x[2:4])
    ref = net.backward(ip=g[2:4], ip2=g2[2:4])["data"]
    np.testing.assert_allclose(diffs["data"][2:4], ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(blobs["ip"][4:], net.forward_all(data=x)["ip"][4:], rtol=1e-5)


def test_clear_param_diffs_share_with_and_hdf5(tiny, tmp_path):
    a = caffe.Net(tiny, caffe.TEST)
    a.forward(data=np.ones((2, 3, 6, 6), np.float32))
    a.backward(ip=np.ones((2, 5)), ip2=np.ones((2, 2)))
    assert np.abs(a.params["ip"][0].diff).sum() > 0
    a.clear_param_diffs()
    assert not a.params["ip"][0].diff.any()
    path = str(tmp_path / "w.h5")
    a.save_hdf5(path)
    import h5py

    with h5py.File(path, "r") as f:
        assert sorted(f["data"]) == sorted(a._layer_names)
        assert f["data/conv/0"].shape == (4, 3, 3, 3)
        assert len(f["data/relu"]) == 0
    b = caffe.Net(tiny, caffe.TEST, weights=path)          # .h5 weights, Caffe's rule
    np.testing.assert_array_equal(b.params["ip"][0].data, a.params["ip"][0].data)
    c = caffe.Net(tiny, caffe.TEST)
    c.params["conv"][0].data[...] = 0
    c.load_hdf5(path)
    np.testing.assert_array_equal(c.params["conv"][0].data, a.params["conv"][0].data)
    d = caffe.Net(tiny, caffe.TEST)
    d.share_with(a)
    a.params["ip2"][1].data[...] = 3
    assert (d.params["ip2"][1].data == 3).all()


def test_set_input_arrays_and_its_errors(tmp_path):
    path = tmp_path / "m.prototxt"
    path.write_text(str(lenet(4)))
    net = caffe.Net(str(path), caffe.TRAIN)
    x, y = _data(8)
    net.set_input_arrays(x, y)
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, x[:4])
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data.ravel(), y[4:])
    with pytest.raises(RuntimeError, match="multiple of batch_size"):
        net.set_input_arrays(x[:3], y[:3])
    with pytest.raises(RuntimeError, match="MemoryData"):
        caffe.Net(_write(TINY), caffe.TEST).set_input_arrays(x, y)


def test_misc_module_functions():
    assert caffe.__version__ == "1.0.0"
    t = caffe.Timer()
    assert t.ms == 0.0
    t.start()
    t.stop()
    assert t.ms >= 0.0
    assert "Convolution" in caffe.layer_type_list()
    assert caffe.solver_count() == 1 and caffe.solver_rank() == 0 and not caffe.has_nccl()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        caffe.set_mode_cpu()
    with pytest.warns(UserWarning, match="CPU only"):
        caffe.set_mode_gpu()
    assert caffe.proto.caffe_pb2 is pb and caffe.TRAIN == pb.TRAIN
    assert caffe.draw.__name__ == "netdef.compat.caffe_draw"
    assert caffe.Detector.__name__ == "Detector"
    with pytest.raises(AttributeError):
        _ = caffe.nonexistent


# ----------------------------------------------------------------- io ----

@pytest.mark.parametrize("order", range(6))
@pytest.mark.parametrize("channels", [1, 3, 2, 4])
def test_resize_image_every_order_matches_scipy_semantics(order, channels):
    scipy_ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(order)
    im = rng.random((9, 11, channels)).astype(np.float32) * 5 + 1
    out = caffe.io.resize_image(im, (13, 7), interp_order=order)
    assert out.shape == (13, 7, channels) and out.dtype == np.float32
    if channels in (1, 3):
        # skimage's path: pixel centers, values kept within the input's range
        assert out.min() >= im.min() - 1e-5 and out.max() <= im.max() + 1e-5
        y = np.clip((np.arange(13) + 0.5) * 9 / 13 - 0.5, 0, 8)
        x = np.clip((np.arange(7) + 0.5) * 11 / 7 - 0.5, 0, 10)
        yy, xx = np.meshgrid(y, x, indexing="ij")
        ref = np.stack([scipy_ndimage.map_coordinates(im[..., c].astype(np.float64), [yy, xx],
                                                      order=order, mode="mirror")
                        for c in range(channels)], axis=-1)
        ref = np.clip(ref, im.min(), im.max())
    else:
        # pycaffe's scipy.ndimage.zoom path, exactly
        ref = scipy_ndimage.zoom(im.astype(np.float64), (13 / 9, 7 / 11, 1), order=order)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_resize_image_constant_and_bad_orders():
    out = caffe.io.resize_image(np.full((4, 5, 3), 2.5, np.float32), (7, 3), 3)
    assert out.shape == (7, 3, 3) and (out == 2.5).all()
    for bad in (6, -1, 1.5, "1"):
        with pytest.raises(ValueError, match="interp_order"):
            caffe.io.resize_image(np.zeros((4, 4, 3)), (2, 2), bad)
    assert caffe.io.resize_image(np.arange(12.0).reshape(3, 4), (6, 8)).shape == (6, 8)


def test_set_mean_resizes_a_full_mean_image():
    t = caffe.io.Transformer({"data": (1, 3, 4, 6)})
    mean = np.random.default_rng(5).random((3, 8, 12)) * 100 + 50
    t.set_mean("data", mean)
    expected = caffe.io.resize_image(mean.transpose(1, 2, 0), (4, 6)).transpose(2, 0, 1)
    np.testing.assert_allclose(t.mean["data"], expected, rtol=1e-6)
    assert t.mean["data"].shape == (3, 4, 6)
    # bilinear halving of a smooth ramp keeps the ramp's mean
    assert t.mean["data"].mean() == pytest.approx(mean.mean(), rel=0.05)
    with pytest.raises(ValueError, match="Mean shape"):
        t.set_mean("data", np.zeros((1, 2, 3, 4)))


def test_blobproto_to_array_shapes_and_no_shape():
    blob = pb.BlobProto(data=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="no shape"):
        caffe.io.blobproto_to_array(blob)
    with pytest.raises(NetdefError):
        caffe.io.blobproto_to_array(blob)
    blob.shape.dim.extend([3])
    assert caffe.io.blobproto_to_array(blob).dtype == np.float64
    legacy = pb.BlobProto(num=1, channels=3, height=1, width=1, data=[1, 2, 3])
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 3, 1, 1)
    with pytest.raises(ValueError):             # unset legacy dims count as 0, as in Caffe
        caffe.io.blobproto_to_array(pb.BlobProto(num=1, channels=3, data=[1, 2, 3]))


# ------------------------------------------------- coord_map and draw ----

def _fcn(pad: int = 0):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 1, 32, 32]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=3, pad=pad)
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=2, kernel_size=4,
                                                          stride=2, bias_term=False))
    return n


def test_coord_map_and_crop_through_the_graph():
    from netdef.compat.coord_map import coord_map_from_to, crop

    n = _fcn(pad=10)
    ax, a, b = coord_map_from_to(n.up, n.data)
    assert ax == 1 and (a == 1).all() and (b == -10).all()      # (52 - 32) / 2
    n.score = crop(n.up, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["up", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [10]
    net = caffe.Net(_write(str(n.to_proto())), caffe.TEST)
    assert net.forward()["score"].shape == (1, 2, 32, 32)
    with pytest.raises(AssertionError, match="negative offset"):
        crop(n.data, n.up)
    other = L.Input(shape=dict(dim=[1, 1, 4, 4]))
    with pytest.raises(RuntimeError, match="Could not compute map"):
        coord_map_from_to(n.up, other)


def test_draw_functions(tmp_path):
    net = lenet()
    dot = caffe.draw.get_pydot_graph(net, "LR", phase=caffe.TRAIN)
    text = dot.to_string()
    assert text.startswith("digraph") and "conv1" in text and "rankdir=LR" in text
    assert caffe.draw.draw_net(net, "TB", ext="dot").decode().startswith("digraph")
    caffe.draw.draw_net_to_file(net, str(tmp_path / "n.dot"), phase=caffe.TEST)
    assert "acc" in (tmp_path / "n.dot").read_text()
    assert caffe.draw.get_pooling_types_dict()[0] == "MAX"
    assert caffe.draw.choose_color_by_layertype("Convolution").startswith("#")
    import shutil

    if shutil.which("dot"):
        png = caffe.draw.draw_net(net, "LR", ext="png")
        assert png[:4] == b"\x89PNG"
        dot.write_svg(str(tmp_path / "n.svg"))
        assert (tmp_path / "n.svg").read_text().lstrip().startswith("<?xml")


# -------------------------------------------------- Classifier, Detector ----

DETECT = """
name: "det"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


@pytest.fixture
def det_model(tmp_path):
    from PIL import Image

    from netdef.net import Net

    proto = tmp_path / "det.prototxt"
    proto.write_text(DETECT)
    Net(str(proto), seed=2).save(str(tmp_path / "det.caffemodel"))
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / "im.png")
    return str(proto), str(tmp_path / "det.caffemodel"), str(tmp_path / "im.png")


def test_detector_windows_and_context_pad(det_model):
    proto, weights, image = det_model
    mean = np.array([100.0, 110.0, 120.0])
    det = caffe.Detector(proto, weights, mean=mean, raw_scale=255, channel_swap=(2, 1, 0))
    windows = np.array([[0, 0, 8, 8], [2, 3, 18, 20], [5, 5, 9, 13]])
    found = det.detect_windows([(image, windows)])
    assert [d["filename"] for d in found] == [image] * 3
    assert all(d["prediction"].shape == (4,) for d in found)
    # the first window is exactly the input size: the same as a direct forward
    im = caffe.io.load_image(image)
    x = det.transformer.preprocess("data", im[0:8, 0:8])
    np.testing.assert_allclose(found[0]["prediction"], det.forward_all(data=x[None])["prob"][0],
                               rtol=1e-5)
    padded = caffe.Detector(proto, weights, mean=mean, raw_scale=255, channel_swap=(2, 1, 0),
                            context_pad=2)
    assert padded.crop_mean.shape == (1, 1, 3)
    np.testing.assert_allclose(padded.crop_mean[0, 0], mean[::-1] / 255)
    crop = padded.crop(im, windows[0])
    assert crop.shape == (8, 8, 3)
    # the window sticks out of the image at the top-left: that part is the mean
    np.testing.assert_allclose(crop[0, 0], mean[::-1] / 255, rtol=1e-6)
    assert len(padded.detect_windows([(image, windows)])) == 3


def test_classifier_with_a_full_mean_image(det_model):
    proto, weights, image = det_model
    full_mean = np.random.default_rng(3).random((3, 16, 16)) * 20 + 100
    clf = caffe.Classifier(proto, weights, image_dims=(12, 12), mean=full_mean, raw_scale=255,
                           channel_swap=(2, 1, 0))
    assert clf.transformer.mean["data"].shape == (3, 8, 8)
    im = caffe.io.load_image(image)
    scores = clf.predict([im, im[::-1]], oversample=True)
    assert scores.shape == (2, 4)
    center = clf.predict([im], oversample=False)
    resized = caffe.io.resize_image(im, (12, 12))[2:10, 2:10]
    x = clf.transformer.preprocess("data", resized)
    np.testing.assert_allclose(center[0], clf.forward_all(data=x[None])["prob"][0], rtol=1e-5)
