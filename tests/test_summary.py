"""netdef.summary: per-layer shapes, parameter counts, MACs, totals, table, JSON."""
import json

import pytest
from conftest import shared_prototxts, zoo_prototxts

from netdef.errors import NetdefError
from netdef.frontend.source import read_net
from netdef.frontend.graph import build_graph
from netdef.summary import (
    format_table,
    human_bytes,
    human_count,
    print_summary,
    summarize,
)

SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool1" top: "ip"
        inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""

BN = """
name: "bn"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 5 kernel_size: 1 bias_term: false } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
"""


def test_small_net_numbers():
    s = summarize(SMALL)
    assert s.name == "small" and s.phase == "TEST"
    assert [x.name for x in s.layers] == ["data", "conv1", "relu1", "pool1", "ip", "prob"]
    conv = s.layer("conv1")
    assert conv.top_shapes == [(1, 4, 8, 8)]
    assert conv.params == conv.stored == 4 * 3 * 9 + 4
    assert conv.param_shapes == [(4, 3, 3, 3), (4,)]
    assert conv.macs == 4 * 8 * 8 * 3 * 9
    assert s.layer("pool1").top_shapes == [(1, 4, 4, 4)]
    ip = s.layer("ip")
    assert ip.params == 64 * 10 + 10 and ip.macs == 640
    assert s.layer("relu1").kind != s.layer("conv1").kind
    assert s.total_params == s.total_stored == 112 + 650
    assert s.total_macs == 6912 + 640
    # data 192 + conv1 (relu in place, counted once) 256 + pool1 64 + ip 10 + prob 10
    assert s.activation_bytes == (192 + 256 + 64 + 10 + 10) * 4
    assert s.param_bytes == 762 * 4
    assert s.inputs == ["data"] and s.outputs == ["prob"]


def test_batchnorm_statistics_are_stored_not_learnable():
    s = summarize(BN)
    bn, scale = s.layer("bn"), s.layer("scale")
    assert bn.params == 0 and bn.stored == 5 + 5 + 1
    assert scale.params == scale.stored == 10
    assert s.total_params == 15 + 10
    assert s.total_stored == 15 + 11 + 10
    assert s.param_bytes == s.total_stored * 4
    assert "Stored values: 36" in format_table(s)


SHARED = """
layer { name: "data" type: "Input" top: "a" top: "b"
        input_param { shape { dim: 1 dim: 6 } shape { dim: 1 dim: 6 } } }
layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "ya"
        param { name: "w" } param { name: "bias" } inner_product_param { num_output: 2 } }
layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "yb"
        param { name: "w" } param { name: "bias" } inner_product_param { num_output: 2 } }
"""


def test_shared_weights_counted_once():
    s = summarize(SHARED)
    assert s.layer("ip_a").params == 14 and s.layer("ip_b").params == 0
    assert s.layer("ip_b").param_shapes == [(2, 6), (2,)]
    assert s.total_params == s.total_stored == 14
    assert any("shared" in n for n in s.notes)


def test_json_keys_and_round_trip():
    data = json.loads(json.dumps(summarize(SMALL).to_json()))
    for key in ("layers", "total_params", "total_stored", "total_macs", "activation_bytes",
                "param_bytes", "inputs", "outputs", "notes", "name", "phase"):
        assert key in data
    conv = data["layers"][1]
    for key in ("name", "type", "bottoms", "tops", "top_shapes", "params", "macs"):
        assert key in conv
    assert conv["top_shapes"] == [[1, 4, 8, 8]]


def test_v1_net_and_input_header():
    v1 = """
    name: "old"
    input: "data"
    input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
    layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
             blobs_lr: 1 blobs_lr: 2
             convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
    layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
    """
    s = summarize(v1)
    assert s.layer("conv1").top_shapes == [(1, 4, 8, 8)]
    assert s.total_params == 112
    assert s.inputs == ["data"]
    assert any(n.startswith("upgrade:") for n in s.notes)


def test_input_shape_override_and_graph_input():
    s = summarize(SMALL, input_shapes={"data": (2, 3, 8, 8)})
    assert s.layer("prob").top_shapes == [(2, 10)]
    graph = build_graph(read_net(SMALL), "TEST", splits=False)
    assert summarize(graph).total_params == 762


def test_split_layers_are_not_shown():
    text = SMALL + 'layer { name: "side" type: "ReLU" bottom: "pool1" top: "side" }\n'
    assert "Split" not in {x.type for x in summarize(text).layers}


def test_unknown_input_shape_name_is_an_error():
    with pytest.raises(NetdefError, match="dat"):
        summarize(SMALL, input_shapes={"dat": (1, 3, 8, 8)})


def test_table_text_and_width():
    s = summarize(SMALL)
    table = format_table(s)
    assert "conv1 (Convolution)" in table and "data -> conv1" in table
    assert "(1, 4, 8, 8)" in table
    assert "Total params: 762 (3.0 KiB)" in table
    assert "MACs: 7.6 K" in table and "Activations: 2.1 KiB" in table
    narrow = format_table(s, width=60)
    assert max(len(line) for line in narrow.splitlines()[:12]) <= 60
    lines = []
    print_summary(s, print_fn=lines.append, width=200)
    assert lines == [format_table(s, 200)]


def test_human_units():
    assert human_count(724_406_816) == "724.4 M"
    assert human_count(999) == "999"
    assert human_bytes(60_965_224 * 4) == "232.6 MiB"
    assert human_bytes(512) == "512 B"


@pytest.mark.parametrize("path", zoo_prototxts(), ids=lambda p: p.name)
def test_summary_runs_on_zoo(path):
    s = summarize(str(path))
    assert s.layers and format_table(s)


# Upgrade-test fixtures that are not meant to be valid nets, and nets whose
# TEST net needs a stage (as their solver sets it).
BROKEN = {"NetUpgradeTest.TestAllParams.expected_output_proto.prototxt",
          "NetUpgradeTest.TestAllParams.input_proto.prototxt"}
STATE = {"mnist_autoencoder.prototxt": {"stages": ["test-on-test"]}}


@pytest.mark.parametrize("path", shared_prototxts(), ids=lambda p: p.parent.name + "/" + p.name)
def test_summary_runs_on_shared_models(shared_models, path):
    if path.name in BROKEN:
        with pytest.raises(NetdefError, match="concat"):
            summarize(str(path))
        return
    s = summarize(str(path), **STATE.get(path.name, {}))
    assert s.layers and format_table(s)


STAGED = """name: "staged"
layer { name: "data" type: "DummyData" top: "data" include { phase: TRAIN }
        dummy_data_param { shape { dim: 2 dim: 4 } } }
layer { name: "data" type: "DummyData" top: "data"
        include { phase: TEST stage: "test-on-train" }
        dummy_data_param { shape { dim: 2 dim: 4 } } }
layer { name: "data" type: "DummyData" top: "data"
        include { phase: TEST stage: "test-on-test" }
        dummy_data_param { shape { dim: 2 dim: 4 } } }
layer { name: "flatdata" type: "Flatten" bottom: "data" top: "flatdata" }
"""


def test_bottom_kept_only_by_another_stage_says_which():
    with pytest.raises(NetdefError) as info:
        summarize(read_net(STAGED, filename="staged.prototxt"))       # TEST, no stage
    err = str(info.value)
    assert err.startswith("staged.prototxt:10:1: layer 'flatdata' (Flatten): bottom 'data'")
    assert "phase TEST, level 0, stages none" in err
    assert "(line 2) include { phase: TRAIN }" in err
    assert '(line 4) include { phase: TEST stage: "test-on-train" }' in err
    assert info.value.hint == ("select a state that keeps one: --phase TRAIN, or --phase TEST "
                               "--stage test-on-train, or --phase TEST --stage test-on-test")
    assert "did you mean 'flatdata'" not in err          # never the layer's own top
    s = summarize(read_net(STAGED), "TEST", stages=["test-on-test"])
    assert s.layer("flatdata").top_shapes == [(2, 4)]


def test_unproduced_bottom_never_suggests_the_layers_own_top():
    text = ('layer { name: "d" type: "Input" top: "data" input_param { shape { dim: 1 } } }\n'
            'layer { name: "f" type: "Flatten" bottom: "dta2" top: "data2" }\n')
    with pytest.raises(NetdefError) as info:
        summarize(text)
    assert info.value.hint == "did you mean 'data'?"


def test_mnist_autoencoder_needs_a_stage(shared_models):
    path = shared_models / "mnist" / "mnist_autoencoder.prototxt"
    if not path.exists():
        pytest.skip("mnist_autoencoder.prototxt is not in the shared models")
    with pytest.raises(NetdefError) as info:
        summarize(str(path))
    assert "--stage test-on-test" in info.value.hint
    assert summarize(str(path), "TEST", stages=["test-on-test"]).layers
