"""Weights and file I/O: blobs, caffemodel, match_weights, atomic writes, means,
the restricted .npy unpickler and the TensorFlow AlexNet-port converter."""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format
from numpy.lib import format as npy_format

from netdef.errors import InputError, WeightsError
from netdef.io import (
    LayerBlobs,
    array_to_blob,
    atomic_open,
    atomic_write,
    blob_to_array,
    load_npy,
    load_pickled_weight_dict,
    match_weights,
    read_caffemodel,
    read_mean,
    write_binaryproto,
    write_caffemodel,
)
from netdef.io.convert import (
    convert_npy_to_caffemodel,
    fc_input_shape_from_net,
    tf_alexnet_npy_to_caffe,
)
from netdef.frontend.schema import pb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(1234)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------ blobs ---

@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (7,), (3, 1), (), (0, 3), (2, 1, 1, 1, 3)])
def test_blob_round_trip_shape_field(shape):
    arr = rand(*shape)
    bp = array_to_blob(arr)
    assert list(bp.shape.dim) == list(shape)
    assert not bp.HasField("num")
    again = pb.BlobProto.FromString(bp.SerializeToString())
    out = blob_to_array(again)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_array_equal(out, arr)


def test_blob_legacy_4d_round_trip():
    arr = rand(3, 4)
    bp = array_to_blob(arr, legacy=True)
    assert (bp.num, bp.channels, bp.height, bp.width) == (1, 1, 3, 4)
    assert not bp.HasField("shape")
    out = blob_to_array(pb.BlobProto.FromString(bp.SerializeToString()))
    assert out.shape == (1, 1, 3, 4)  # Caffe builds a 4-axis shape from legacy fields
    np.testing.assert_array_equal(out.reshape(3, 4), arr)


def test_blob_legacy_unset_fields_count_as_zero():
    bp = pb.BlobProto(num=2, channels=3)
    assert blob_to_array(bp).shape == (2, 3, 0, 0)


def test_blob_legacy_fields_win_over_shape():
    bp = pb.BlobProto(num=1, channels=1, height=2, width=3)
    bp.shape.dim.extend([6])
    bp.data.extend(range(6))
    assert blob_to_array(bp).shape == (1, 1, 2, 3)


def test_blob_double_data_is_converted():
    bp = pb.BlobProto()
    bp.shape.dim.extend([2, 2])
    bp.double_data.extend([1.5, -2.25, 1e-3, 3.0])
    out = blob_to_array(bp)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.float32([[1.5, -2.25], [1e-3, 3.0]]))


def test_blob_count_mismatch_is_weights_error():
    bp = pb.BlobProto()
    bp.shape.dim.extend([2, 3])
    bp.data.extend([1.0] * 5)
    with pytest.raises(WeightsError, match=r"\(2, 3\) needs 6 values but has 5"):
        blob_to_array(bp)


def test_array_to_blob_legacy_rejects_5d():
    with pytest.raises(WeightsError, match="at most 4 axes"):
        array_to_blob(np.zeros((1, 1, 1, 1, 2)), legacy=True)


# -------------------------------------------------------------- caffemodel ---

NET_TEXT = """
name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc1" type: "InnerProduct" bottom: "conv1" top: "fc1"
        inner_product_param { num_output: 2 } }
"""


def tiny_net() -> pb.NetParameter:
    return text_format.Parse(NET_TEXT, pb.NetParameter())


def tiny_weights():
    return {"conv1": [rand(4, 3, 3, 3), rand(4)], "fc1": [rand(2, 36), rand(2)]}


def test_write_then_read_caffemodel(tmp_path):
    net, weights = tiny_net(), tiny_weights()
    before = net.SerializeToString()
    path = tmp_path / "tiny.caffemodel"
    write_caffemodel(path, net, weights)
    assert net.SerializeToString() == before  # the definition is not modified
    layers = read_caffemodel(path)
    assert [(lb.name, lb.type) for lb in layers] == [("conv1", "Convolution"),
                                                     ("fc1", "InnerProduct")]
    for lb in layers:
        assert lb.legacy == (False, False)
        for got, want in zip(lb.blobs, weights[lb.name], strict=True):
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want)


def test_written_caffemodel_equals_protobuf_built_message(tmp_path):
    """The hand-assembled wire bytes parse to exactly what protobuf would build."""
    net, weights = tiny_net(), tiny_weights()
    net.layer[1].blobs.add().data.append(99.0)  # stale blobs get replaced
    path = tmp_path / "tiny.caffemodel"
    write_caffemodel(path, net, weights)
    expected = pb.NetParameter()
    expected.CopyFrom(net)
    for lp in expected.layer:
        if lp.name in weights:
            del lp.blobs[:]
            lp.blobs.extend(array_to_blob(a) for a in weights[lp.name])
    got = pb.NetParameter.FromString(path.read_bytes())
    assert got == expected
    assert got.name == "tiny" and got.layer[0].input_param.shape[0].dim == [1, 3, 5, 5]


def test_write_caffemodel_rejects_unknown_layer_and_v1_net(tmp_path):
    with pytest.raises(WeightsError, match="'conv_1', which is not in the net") as err:
        write_caffemodel(tmp_path / "x.caffemodel", tiny_net(), {"conv_1": [rand(2)]})
    assert "conv1" in str(err.value)  # did-you-mean hint
    v1 = pb.NetParameter()
    v1.layers.add(name="a", type=pb.V1LayerParameter.RELU)
    with pytest.raises(WeightsError, match="legacy V1"):
        write_caffemodel(tmp_path / "x.caffemodel", v1, {})
    assert not os.listdir(tmp_path)


def test_read_v1_layers_caffemodel(tmp_path):
    net = pb.NetParameter(name="old")
    w, b = rand(4, 3, 3, 3), rand(4)
    fw, fb = rand(2, 36), rand(2)
    v1 = pb.V1LayerParameter
    net.layers.add(name="conv1", type=v1.CONVOLUTION,
                   blobs=[array_to_blob(w, legacy=True), array_to_blob(b, legacy=True)])
    net.layers.add(name="relu1", type=v1.RELU)
    net.layers.add(name="fc1", type=v1.INNER_PRODUCT,
                   blobs=[array_to_blob(fw, legacy=True), array_to_blob(fb, legacy=True)])
    net.layers.add(name="loss", type=v1.SOFTMAX_LOSS)
    path = tmp_path / "old.caffemodel"
    path.write_bytes(net.SerializeToString())
    layers = read_caffemodel(path)
    assert [(lb.name, lb.type) for lb in layers] == [("conv1", "Convolution"),
                                                     ("fc1", "InnerProduct")]
    assert layers[1].legacy == (True, True)
    assert layers[1].blobs[0].shape == (1, 1, 2, 36)
    assert layers[1].blobs[1].shape == (1, 1, 1, 2)
    np.testing.assert_array_equal(layers[0].blobs[0], w)
    np.testing.assert_array_equal(layers[1].blobs[0].reshape(2, 36), fw)


def test_v1_type_table_covers_every_enum_value():
    from netdef.io.caffemodel import _v1_type_names

    table = _v1_type_names()
    enum = pb.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"]
    assert {v.number for v in enum.values if v.name != "NONE"} <= set(table)
    v1 = pb.V1LayerParameter
    assert table[v1.RELU] == "ReLU" and table[v1.SOFTMAX_LOSS] == "SoftmaxWithLoss"
    assert table[v1.HDF5_DATA] == "HDF5Data" and table[v1.INNER_PRODUCT] == "InnerProduct"


def test_read_v0_layer_nested_in_v1(tmp_path):
    net = pb.NetParameter()
    entry = net.layers.add()
    entry.layer.name = "conv1"
    entry.layer.type = "conv"
    entry.layer.blobs.append(array_to_blob(rand(2, 1, 3, 3), legacy=True))
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(net.SerializeToString())
    (lb,) = read_caffemodel(path)
    assert (lb.name, lb.type, lb.blobs[0].shape) == ("conv1", "Convolution", (2, 1, 3, 3))


def test_read_caffemodel_bad_files(tmp_path):
    missing = tmp_path / "missing.caffemodel"
    with pytest.raises(WeightsError, match="missing.caffemodel.*cannot read"):
        read_caffemodel(missing)
    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(b"\xff\xff\xff\xff\x0f" * 20)
    with pytest.raises(WeightsError, match="garbage.caffemodel.*not a binary caffemodel"):
        read_caffemodel(garbage)
    text = tmp_path / "deploy.prototxt"
    text.write_bytes(NET_TEXT.encode())
    with pytest.raises(WeightsError, match="text prototxt"):
        read_caffemodel(text)
    mean = tmp_path / "mean.binaryproto"
    write_binaryproto(mean, np.ones((3, 2, 2)))
    with pytest.raises(WeightsError, match="mean.binaryproto.*no layers"):
        read_caffemodel(mean)
    bad_blob = tmp_path / "bad_blob.caffemodel"
    net = pb.NetParameter()
    lp = net.layer.add(name="fc1", type="InnerProduct")
    lp.blobs.add(shape=pb.BlobShape(dim=[2, 2])).data.extend([1.0])
    bad_blob.write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError, match="layer 'fc1' blob 0.*needs 4 values"):
        read_caffemodel(bad_blob)


# ------------------------------------------------------------ match_weights ---

def lb(name, type_, *arrays, legacy=()):
    return LayerBlobs(name, type_, list(arrays), tuple(legacy))


def test_match_exact_missing_and_extra():
    w, b = rand(4, 3, 3, 3), rand(4)
    net_layers = [("conv1", "Convolution", [(4, 3, 3, 3), (4,)]),
                  ("fc8", "InnerProduct", [(10, 36), (10,)])]
    file_layers = [lb("conv1", "Convolution", w, b), lb("fc8_imagenet", "InnerProduct",
                                                          rand(1000, 36), rand(1000))]
    report = match_weights(net_layers, file_layers)
    assert report.loaded == ["conv1"]
    assert report.kept == ["fc8"]
    assert report.ignored == ["fc8_imagenet"]
    assert report.reshaped == []
    np.testing.assert_array_equal(report.arrays["conv1"][0], w)
    assert set(report.arrays) == {"conv1"}
    assert any("kept at init" in w and "fc8" in w for w in report.warnings)
    text = "\n".join(report.lines())
    assert "conv1 (Convolution)" in text and "loaded (4, 3, 3, 3), (4,)" in text
    assert "fc8 (InnerProduct)" in text and "kept at init (not in the file)" in text
    assert "fc8_imagenet (InnerProduct)" in text and "ignored (not in the net)" in text
    assert report.lines()[-1] == ("loaded 1 layer(s), 1 kept at init, 1 ignored, "
                                  "0 blob(s) reshaped")


def test_load_report_repr_is_short_and_names_layers():
    big = rand(4096, 9216)                              # printing it used to print this
    net_layers = [("fc6", "InnerProduct", [(4096, 9216)]), ("fc7", "InnerProduct", [(10, 3)]),
                  ("fc9", "InnerProduct", [(2, 2)])]
    file_layers = [lb("fc6", "InnerProduct", big), lb("fc7", "InnerProduct", rand(30)),
                   lb("old", "InnerProduct", rand(2))]
    report = match_weights(net_layers, file_layers)
    text = repr(report)
    assert len(text) < 200 and str(report) == text
    assert text == ("<LoadReport loaded 2 (fc6, fc7); kept at init 1 (fc9); ignored 1 (old); "
                    "reshaped 1 (fc7[0])>")


def test_non_finite_weights_are_warned_by_layer_and_blob():
    w = rand(4, 3)
    w[0, 0], w[1, 1], w[2, 2] = np.nan, np.inf, -np.inf
    net_layers = [("ip", "InnerProduct", [(4, 3), (4,)]), ("ok", "InnerProduct", [(2,)])]
    report = match_weights(net_layers, [lb("ip", "InnerProduct", w, rand(4)),
                                        lb("ok", "InnerProduct", rand(2))])
    assert report.nonfinite == [("ip", 0, 3, 12)]
    assert "layer 'ip' blob 0 (4, 3): 3 of 12 values are NaN and infinite" in \
        "\n".join(report.warnings)
    assert "non-finite 1 (ip[0])" in repr(report)
    assert "blob 0: 3 non-finite values" in "\n".join(report.lines())


def test_match_reshapes_same_count_with_warning_unless_strict():
    w = rand(6, 36)
    net_layers = [("fc6", "InnerProduct", [(6, 4, 3, 3)])]
    report = match_weights(net_layers, [lb("fc6", "InnerProduct", w)])
    assert report.arrays["fc6"][0].shape == (6, 4, 3, 3)
    np.testing.assert_array_equal(report.arrays["fc6"][0].reshape(6, 36), w)
    assert report.reshaped == [("fc6", 0, (6, 36), (6, 4, 3, 3))]
    assert any("reshaped (6, 36)" in m for m in report.warnings)
    assert "blob 0 reshaped (6, 36) -> (6, 4, 3, 3)" in "\n".join(report.lines())
    with pytest.raises(WeightsError, match="strict"):
        match_weights(net_layers, [lb("fc6", "InnerProduct", w)], strict=True)


def test_match_legacy_shape_counts_as_equal_like_caffe():
    """A legacy (1, 1, 4, 6) blob fits a (4, 6) net blob without a warning,
    but the same shape in a modern shape field is a reshape."""
    w = rand(1, 1, 4, 6)
    net_layers = [("fc", "InnerProduct", [(4, 6)])]
    report = match_weights(net_layers, [lb("fc", "InnerProduct", w, legacy=[True])], strict=True)
    assert report.arrays["fc"][0].shape == (4, 6) and report.reshaped == []
    report = match_weights(net_layers, [lb("fc", "InnerProduct", w, legacy=[False])])
    assert report.reshaped == [("fc", 0, (1, 1, 4, 6), (4, 6))]


def test_match_wrong_shape_message():
    # broadcast_to views cost no memory, so the real fc6 shapes can be used.
    big = np.broadcast_to(np.float32(0), (4096, 4096))
    net_layers = [("fc6", "InnerProduct", [(4096, 9216), (4096,)])]
    with pytest.raises(WeightsError) as err:
        match_weights(net_layers, [lb("fc6", "InnerProduct", big, rand(4096))],
                      source="w.caffemodel")
    assert ("layer 'fc6' blob 0: the net expects (4096, 9216), the file has (4096, 4096)"
            in str(err.value))
    assert str(err.value).startswith("w.caffemodel: ")


def test_match_blob_count_mismatch_and_batchnorm_exception():
    with pytest.raises(WeightsError, match=r"'conv1' \(Convolution\): the net has 2 "
                                           r"parameter blob\(s\), the file has 1") as err:
        match_weights([("conv1", "Convolution", [(2, 1, 3, 3), (2,)])],
                      [lb("conv1", "Convolution", rand(2, 1, 3, 3))])
    assert "bias_term" in str(err.value)
    mean, var, factor = rand(8), rand(8), np.float32([999.0])
    report = match_weights([("bn1", "BatchNorm", [(8,), (8,), (1,), (8,), (8,)])],
                           [lb("bn1", "BatchNorm", mean, var, factor)])
    assert len(report.arrays["bn1"]) == 3
    assert any("BatchNorm" in m and "3 blobs" in m for m in report.warnings)
    assert "blobs 3..4 kept at init" in "\n".join(report.lines())


def test_match_duplicate_file_layers_last_wins():
    first, second = rand(3), rand(3)
    report = match_weights([("b", "Bias", [(3,)])],
                           [lb("b", "Bias", first), lb("b", "Bias", second)])
    np.testing.assert_array_equal(report.arrays["b"][0], second)
    assert any("more than once" in m for m in report.warnings)
    assert report.ignored == []


def test_match_from_a_real_round_trip(tmp_path):
    net, weights = tiny_net(), tiny_weights()
    path = tmp_path / "tiny.caffemodel"
    write_caffemodel(path, net, weights)
    net_layers = [("conv1", "Convolution", [(4, 3, 3, 3), (4,)]),
                  ("fc1", "InnerProduct", [(2, 36), (2,)])]
    report = match_weights(net_layers, read_caffemodel(path), strict=True)
    assert report.loaded == ["conv1", "fc1"] and not report.warnings


# ------------------------------------------------------------------ atomic ---

def test_atomic_write_replaces_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(path, b"first")
    atomic_write(path, b"second")
    assert path.read_bytes() == b"second"
    atomic_write(tmp_path / "text.prototxt", "name: \"ü\"\n")
    assert (tmp_path / "text.prototxt").read_text(encoding="utf-8") == "name: \"ü\"\n"
    assert sorted(os.listdir(tmp_path)) == ["out.bin", "text.prototxt"]


def test_atomic_open_failure_keeps_original_and_removes_temp(tmp_path):
    path = tmp_path / "weights.caffemodel"
    path.write_bytes(b"original")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_open(path) as f:
            f.write(b"half a snapshot")
            raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"original"
    assert os.listdir(tmp_path) == ["weights.caffemodel"]


def test_write_caffemodel_failure_does_not_clobber(tmp_path):
    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(b"previous snapshot")
    bad = {"conv1": [rand(4, 3, 3, 3), np.array(["not", "numbers"])]}
    with pytest.raises(ValueError):
        write_caffemodel(path, tiny_net(), bad)
    assert path.read_bytes() == b"previous snapshot"
    assert os.listdir(tmp_path) == ["tiny.caffemodel"]


def test_atomic_write_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644


def test_atomic_write_follows_symlink(tmp_path):
    target = tmp_path / "real.bin"
    target.write_bytes(b"old")
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    atomic_write(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"


# -------------------------------------------------------------------- mean ---

def test_mean_binaryproto_round_trip(tmp_path):
    mean = rand(3, 4, 5) + 100
    path = tmp_path / "mean.binaryproto"
    write_binaryproto(path, mean)
    bp = pb.BlobProto.FromString(path.read_bytes())
    assert (bp.num, bp.channels, bp.height, bp.width) == (1, 3, 4, 5)  # Caffe's layout
    out = read_mean(path)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    np.testing.assert_array_equal(out, mean)


def test_mean_binaryproto_with_shape_field(tmp_path):
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(array_to_blob(np.ones((1, 3, 2, 2))).SerializeToString())
    assert read_mean(path).shape == (3, 2, 2)


@pytest.mark.parametrize("shape", [(3, 4, 5), (1, 3, 4, 5)])
def test_mean_npy(tmp_path, shape):
    path = tmp_path / "mean.npy"
    np.save(path, np.full(shape, 7.5))
    out = read_mean(path)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32 and (out == 7.5).all()


def test_mean_bad_files(tmp_path):
    with pytest.raises(InputError, match="nope.binaryproto.*cannot read"):
        read_mean(tmp_path / "nope.binaryproto")
    junk = tmp_path / "junk.binaryproto"
    junk.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(InputError, match="junk.binaryproto"):
        read_mean(junk)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.ones(3))
    with pytest.raises(InputError, match=r"flat.npy.*\(3,\)"):
        read_mean(flat)
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, {"mean": 1}, allow_pickle=True)
    with pytest.raises(InputError, match="pickled.npy"):
        read_mean(pickled)


def test_real_imagenet_mean(shared_models):
    mean = read_mean(shared_models / "imagenet_mean" / "ilsvrc_2012_mean.npy")
    assert mean.shape == (3, 256, 256)
    np.testing.assert_allclose(mean.mean(axis=(1, 2)), [104.007, 116.669, 122.679], atol=1e-2)


# ------------------------------------------------------------- npy_legacy ---

def alexnet_like_dict():
    return {"conv1": [rand(3, 3, 2, 4), rand(4)], "fc6": [rand(36, 5), rand(5)]}


def write_npy_with_pickle(path, payload: bytes):
    """An object .npy whose pickle bytes are given (as np.save would lay it out)."""
    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False,
                                              "shape": ()})
        f.write(payload)


def assert_same_dict(got, want):
    assert list(got) == list(want)
    for name in want:
        assert len(got[name]) == len(want[name])
        for g, w in zip(got[name], want[name], strict=True):
            assert g.dtype == np.float32
            np.testing.assert_array_equal(g, w)


def test_restricted_unpickler_reads_np_saved_dict(tmp_path):
    want = alexnet_like_dict()
    path = tmp_path / "bvlc_alexnet.npy"
    np.save(path, want, allow_pickle=True)
    assert_same_dict(load_pickled_weight_dict(path), want)


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_restricted_unpickler_all_protocols(tmp_path, protocol):
    want = alexnet_like_dict()
    want["fc6"].append(np.float64(0.5) * np.ones(2))  # float64 arrays become float32
    path = tmp_path / "w.npy"
    write_npy_with_pickle(path, pickle.dumps(np.array(want, dtype=object), protocol=protocol))
    got = load_pickled_weight_dict(path)
    assert_same_dict(got, {k: [np.float32(a) for a in v] for k, v in want.items()})


class _Py2Pickler(pickle._Pickler):
    """Writes `bytes` as Python 2 `str` opcodes, like numpy under Python 2 did."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def test_restricted_unpickler_reads_python2_numpy1_pickle(tmp_path):
    """The TF AlexNet port's file was written by Python 2 / NumPy 1.x: py2
    `str` array buffers and the numpy.core module names."""
    w, b = rand(3, 3, 2, 4), rand(4)
    obj = np.array({b"conv1": [w, b]}, dtype=object)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    payload = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in payload and b"_codecs" not in payload
    path = tmp_path / "py2.npy"
    write_npy_with_pickle(path, payload)
    assert_same_dict(load_pickled_weight_dict(path), {"conv1": [w, b]})


# np.save(buf, {'fc': [arange(4).reshape(2, 2), full(2, 0.5)]}, allow_pickle=True)
# made by NumPy 1.26.4 (pickle protocol 3, ``numpy.core.multiarray`` names).
NUMPY1_NPY = (
    "k05VTVBZAQB2AHsnZGVzY3InOiAnfE8nLCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAnc2hhcGUnOiAoKSwgfSAgICAg"
    "ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAqAA2NudW1weS5j"
    "b3JlLm11bHRpYXJyYXkKX3JlY29uc3RydWN0CnEAY251bXB5Cm5kYXJyYXkKcQFLAIVxAkMBYnEDh3EEUnEFKEsBKWNu"
    "dW1weQpkdHlwZQpxBlgCAAAATzhxB4mIh3EIUnEJKEsDWAEAAAB8cQpOTk5K/////0r/////Sz90cQtiiV1xDH1xDVgC"
    "AAAAZmNxDl1xDyhoAGgBSwCFcRBoA4dxEVJxEihLAUsCSwKGcRNoBlgCAAAAZjRxFImIh3EVUnEWKEsDWAEAAAA8cRdO"
    "Tk5K/////0r/////SwB0cRhiiUMQAAAAAAAAgD8AAABAAABAQHEZdHEaYmgAaAFLAIVxG2gDh3EcUnEdKEsBSwKFcR5o"
    "FolDCAAAAD8AAAA/cR90cSBiZXNhdHEhYi4=")


def test_restricted_unpickler_reads_numpy1_file(tmp_path):
    import base64

    path = tmp_path / "numpy1.npy"
    path.write_bytes(base64.b64decode(NUMPY1_NPY))
    want = {"fc": [np.arange(4, dtype=np.float32).reshape(2, 2), np.full(2, 0.5, np.float32)]}
    assert_same_dict(load_pickled_weight_dict(path), want)


def test_restricted_unpickler_other_layouts(tmp_path):
    w, b = rand(2, 2), rand(2)
    path = tmp_path / "w.npy"
    np.save(path, collections.OrderedDict(fc=[w, b]), allow_pickle=True)
    assert_same_dict(load_pickled_weight_dict(path), {"fc": [w, b]})
    np.save(path, {"fc": {"weights": w, "biases": b}}, allow_pickle=True)  # caffe-tensorflow
    assert_same_dict(load_pickled_weight_dict(path), {"fc": [w, b]})
    np.save(path, {"fc": (w, b)}, allow_pickle=True)
    assert_same_dict(load_pickled_weight_dict(path), {"fc": [w, b]})


class _RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Evil:
    def __reduce__(self):
        return (eval, ("1 + 1",))


class _Innocent:
    pass


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(path, {"conv1": [np.ones(2)], "x": _RunsShell(marker)}, allow_pickle=True)
    with pytest.raises(WeightsError) as err:
        load_pickled_weight_dict(path)
    msg = str(err.value)
    assert msg.startswith("refusing to unpickle 'posix.system' from ") or \
        msg.startswith("refusing to unpickle 'os.system' from ")
    assert str(path) in msg and "only arrays, dicts and lists are allowed" in msg
    assert not marker.exists()


@pytest.mark.parametrize("obj, name", [(_Evil(), "builtins.eval"),
                                       (_Innocent(), "_Innocent"),
                                       (print, "builtins.print")])
def test_restricted_unpickler_refuses_other_globals(tmp_path, obj, name):
    path = tmp_path / "bad.npy"
    np.save(path, {"a": [obj]}, allow_pickle=True)
    with pytest.raises(WeightsError, match=f"refusing to unpickle '.*{name}'"):
        load_pickled_weight_dict(path)


def test_codecs_encode_only_latin1(tmp_path):
    payload = (b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00utf-7\x86R.")
    path = tmp_path / "codec.npy"
    write_npy_with_pickle(path, payload)
    with pytest.raises(WeightsError, match="latin-1"):
        load_npy(path)


def test_plain_and_broken_npy(tmp_path):
    plain = tmp_path / "plain.npy"
    np.save(plain, np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(load_npy(plain), np.arange(6.0).reshape(2, 3))
    with pytest.raises(WeightsError, match=r"plain float64 array of shape \(2, 3\)"):
        load_pickled_weight_dict(plain)
    notnpy = tmp_path / "not.npy"
    notnpy.write_bytes(b"hello world, not numpy")
    with pytest.raises(WeightsError, match="not.npy"):
        load_pickled_weight_dict(notnpy)
    listy = tmp_path / "list.npy"
    np.save(listy, np.array([np.ones(2), "text"], dtype=object), allow_pickle=True)
    with pytest.raises(WeightsError, match="not a dict"):
        load_pickled_weight_dict(listy)
    strings = tmp_path / "strings.npy"
    np.save(strings, {"fc": ["a", "b"]}, allow_pickle=True)
    with pytest.raises(WeightsError, match="layer 'fc' item 0"):
        load_pickled_weight_dict(strings)


# ----------------------------------------------------------------- convert ---
# A tiny grouped conv + two fc net, 4x5x5 input, conv 6 outputs k=3 group 2
# (-> 6x3x3), fc6 54 -> 5, fc7 5 -> 3. Both references are plain loops.

def tf_forward(x_hwc, d):
    """TensorFlow layout: NHWC activations, conv W (kh, kw, in/g, out), fc W (in, out)."""
    w, b = d["conv1"]
    kh, kw, cin_g, cout = w.shape
    groups = x_hwc.shape[2] // cin_g
    cout_g = cout // groups
    oh, ow = x_hwc.shape[0] - kh + 1, x_hwc.shape[1] - kw + 1
    y = np.zeros((oh, ow, cout), np.float64)
    for g in range(groups):
        for o in range(g * cout_g, (g + 1) * cout_g):
            for i in range(oh):
                for j in range(ow):
                    patch = x_hwc[i:i + kh, j:j + kw, g * cin_g:(g + 1) * cin_g]
                    y[i, j, o] = np.sum(patch * w[:, :, :, o]) + b[o]
    y = np.maximum(y, 0)
    h = y.reshape(-1) @ d["fc6"][0] + d["fc6"][1]  # HWC flatten, as tf.reshape does
    return np.maximum(h, 0) @ d["fc7"][0] + d["fc7"][1]


def caffe_forward(x_chw, d, groups):
    """Caffe layout: NCHW activations, conv W (out, in/g, kh, kw), fc W (out, in)."""
    w, b = d["conv1"]
    cout, cin_g, kh, kw = w.shape
    cout_g = cout // groups
    oh, ow = x_chw.shape[1] - kh + 1, x_chw.shape[2] - kw + 1
    y = np.zeros((cout, oh, ow), np.float64)
    for o in range(cout):
        g = o // cout_g
        for i in range(oh):
            for j in range(ow):
                patch = x_chw[g * cin_g:(g + 1) * cin_g, i:i + kh, j:j + kw]
                y[o, i, j] = np.sum(patch * w[o]) + b[o]
    y = np.maximum(y, 0)
    h = d["fc6"][0] @ y.reshape(-1) + d["fc6"][1]  # CHW flatten
    return d["fc7"][0] @ np.maximum(h, 0) + d["fc7"][1]


CONVERT_NET = """
name: "tiny_alexnet"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 4 dim: 5 dim: 5 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 6 kernel_size: 3 group: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc6" type: "InnerProduct" bottom: "conv1" top: "fc6"
        inner_product_param { num_output: 5 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7"
        inner_product_param { num_output: 3 } }
"""


def tf_dict():
    return {"conv1": [rand(3, 3, 2, 6), rand(6)], "fc6": [rand(54, 5), rand(5)],
            "fc7": [rand(5, 3), rand(3)]}


def test_tf_alexnet_conversion_matches_reference_forward():
    d = tf_dict()
    caffe = tf_alexnet_npy_to_caffe(d, fc_input_shape=(6, 3, 3), first_fc="fc6")
    assert caffe["conv1"][0].shape == (6, 2, 3, 3)
    assert caffe["fc6"][0].shape == (5, 54) and caffe["fc7"][0].shape == (3, 5)
    np.testing.assert_array_equal(caffe["fc6"][1], d["fc6"][1])
    x_hwc = rand(5, 5, 4)
    want = tf_forward(x_hwc.astype(np.float64), d)
    got = caffe_forward(x_hwc.transpose(2, 0, 1).astype(np.float64), caffe, groups=2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # Without the HWC -> CHW row reordering the outputs differ: the test has teeth.
    plain = tf_alexnet_npy_to_caffe(d, fc_input_shape=(6, 3, 3), first_fc="none")
    wrong = caffe_forward(x_hwc.transpose(2, 0, 1).astype(np.float64), plain, groups=2)
    assert not np.allclose(wrong, want, atol=1e-3)


def test_tf_conversion_checks_fc_input_size():
    with pytest.raises(WeightsError, match=r"54 inputs.*\(256, 6, 6\)"):
        tf_alexnet_npy_to_caffe(tf_dict())


def test_convert_npy_to_caffemodel_end_to_end(tmp_path):
    d = tf_dict()
    npy = tmp_path / "tiny.npy"
    np.save(npy, d, allow_pickle=True)
    net = text_format.Parse(CONVERT_NET, pb.NetParameter())
    assert fc_input_shape_from_net(net, d) == ("fc6", (6, 3, 3))
    out = tmp_path / "tiny.caffemodel"
    convert_npy_to_caffemodel(npy, net, out)
    layers = {lb.name: lb for lb in read_caffemodel(out)}
    want = tf_alexnet_npy_to_caffe(d, (6, 3, 3), "fc6")
    assert set(layers) == {"conv1", "fc6", "fc7"}
    for name in want:
        for got, w in zip(layers[name].blobs, want[name], strict=True):
            np.testing.assert_array_equal(got, w)


def test_convert_rejects_mismatched_net(tmp_path):
    npy = tmp_path / "tiny.npy"
    d = tf_dict()
    d["conv_1"] = d.pop("conv1")
    np.save(npy, d, allow_pickle=True)
    net = text_format.Parse(CONVERT_NET, pb.NetParameter())
    with pytest.raises(WeightsError, match="'conv_1' in the .npy is not a layer"):
        convert_npy_to_caffemodel(npy, net, tmp_path / "x.caffemodel")
    np.save(npy, tf_dict(), allow_pickle=True)
    net.layer[-1].inner_product_param.num_output = 4
    with pytest.raises(WeightsError, match="num_output 4, the .npy weight has 3"):
        convert_npy_to_caffemodel(npy, net, tmp_path / "x.caffemodel")
    assert not (tmp_path / "x.caffemodel").exists()


def test_convert_tool_script(tmp_path):
    script = os.path.join(ROOT, "tools", "convert_tf_alexnet.py")
    helped = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--fc-input" in helped.stdout
    npy, proto, out = tmp_path / "t.npy", tmp_path / "deploy.prototxt", tmp_path / "t.caffemodel"
    np.save(npy, tf_dict(), allow_pickle=True)
    proto.write_text(CONVERT_NET)
    ok = subprocess.run([sys.executable, script, str(npy), str(proto), str(out)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "wrote" in ok.stderr and ok.stdout == ""
    assert [lb.name for lb in read_caffemodel(out)] == ["conv1", "fc6", "fc7"]
    bad = subprocess.run([sys.executable, script, str(proto), str(proto), str(out)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "convert_tf_alexnet:" in bad.stderr
    assert "Traceback" not in bad.stderr
