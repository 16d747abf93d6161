"""The schema: generated module in sync with proto/, and Caffe's field numbers.

Field numbers are what make real .caffemodel files readable, so the ones
the model zoo depends on are pinned here as facts of the format.
"""
import pathlib
import subprocess
import sys

import pytest

from netdef.frontend.schema import layer_param_fields, pb

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_generated_module_is_current():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a test extra) regenerates the module")
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def number(message, field):
    return message.DESCRIPTOR.fields_by_name[field].number


@pytest.mark.parametrize("message,field,expected", [
    (pb.NetParameter, "layer", 100), (pb.NetParameter, "layers", 2),
    (pb.NetParameter, "input", 3), (pb.NetParameter, "input_dim", 4),
    (pb.NetParameter, "input_shape", 8),
    (pb.LayerParameter, "blobs", 7), (pb.LayerParameter, "param", 6),
    (pb.LayerParameter, "convolution_param", 106), (pb.LayerParameter, "inner_product_param", 117),
    (pb.LayerParameter, "batch_norm_param", 139), (pb.LayerParameter, "scale_param", 142),
    (pb.LayerParameter, "input_param", 143), (pb.LayerParameter, "clip_param", 148),
    (pb.LayerParameter, "swish_param", 147),
    (pb.V1LayerParameter, "blobs", 6), (pb.V1LayerParameter, "blobs_lr", 7),
    (pb.V1LayerParameter, "weight_decay", 8), (pb.V1LayerParameter, "layer", 1),
    (pb.BlobProto, "shape", 7), (pb.BlobProto, "data", 5), (pb.BlobProto, "double_data", 8),
    (pb.BlobProto, "num", 1), (pb.BlobProto, "width", 4),
    (pb.PoolingParameter, "round_mode", 13), (pb.ConvolutionParameter, "dilation", 18),
    (pb.SolverParameter, "type", 40), (pb.SolverParameter, "weights", 42),
    # the SSD fork's layers (and OpenCV's DetectionOutput clip)
    (pb.LayerParameter, "permute_param", 202), (pb.LayerParameter, "prior_box_param", 203),
    (pb.LayerParameter, "detection_output_param", 204), (pb.LayerParameter, "norm_param", 206),
    (pb.NormalizeParameter, "eps", 4), (pb.NormalizeParameter, "channel_shared", 3),
    (pb.PriorBoxParameter, "offset", 13), (pb.PriorBoxParameter, "step_w", 12),
    (pb.PriorBoxParameter, "variance", 6), (pb.NonMaximumSuppressionParameter, "eta", 3),
    (pb.DetectionOutputParameter, "keep_top_k", 7),
    (pb.DetectionOutputParameter, "variance_encoded_in_target", 8),
    (pb.DetectionOutputParameter, "confidence_threshold", 9),
    (pb.DetectionOutputParameter, "clip", 1000), (pb.SaveOutputParameter, "resize_param", 7),
])
def test_caffe_field_numbers(message, field, expected):
    assert number(message, field) == expected


def test_pooling_geometry_is_scalar_with_caffe_defaults():
    p = pb.PoolingParameter()
    assert p.stride == 1 and p.pad == 0 and not p.HasField("kernel_size")
    assert not pb.PoolingParameter.DESCRIPTOR.fields_by_name["stride"].is_repeated


def test_blob_wire_format_is_packed_floats():
    blob = pb.BlobProto(data=[1.0, 2.0])
    # field 5, wire type 2 (length-delimited, packed): tag byte 0x2a
    assert blob.SerializeToString()[:2] == b"\x2a\x08"


def test_every_layer_param_message_is_reachable():
    assert len(layer_param_fields()) >= 45
    assert {"convolution_param", "pooling_param", "lrn_param"} <= set(layer_param_fields())
