"""Graph passes: state filtering, wiring, in-place layers, split insertion."""
import pytest
from google.protobuf import text_format

from netdef.errors import GraphError
from netdef.frontend.graph import build_graph, insert_splits, layer_included, make_state
from netdef.frontend.schema import pb


def net(text: str) -> pb.NetParameter:
    return text_format.Parse(text, pb.NetParameter())


def names(graph):
    return [n.name for n in graph.nodes]


PHASED = """
layer { name: "train_data" type: "Input" top: "data" include { phase: TRAIN } }
layer { name: "test_data" type: "Input" top: "data" include { phase: TEST } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" top: "loss" exclude { phase: TEST } }
layer { name: "deep" type: "ReLU" bottom: "ip" top: "deep" include { min_level: 2 } }
layer { name: "staged" type: "ReLU" bottom: "ip" top: "staged" include { stage: "extra" } }
layer { name: "not_staged" type: "ReLU" bottom: "ip" top: "ns"
        include { phase: TEST not_stage: "extra" } }
"""


def test_phase_rules_pick_layers():
    train = build_graph(net(PHASED), phase="TRAIN", splits=False)
    assert names(train) == ["train_data", "ip", "loss"]
    test = build_graph(net(PHASED), phase="TEST", splits=False)
    assert names(test) == ["test_data", "ip", "not_staged"]
    assert "loss" in test.excluded


def test_level_and_stage_rules():
    g = build_graph(net(PHASED), phase="TEST", level=2, stages=["extra"], splits=False)
    assert names(g) == ["test_data", "ip", "deep", "staged"]


def test_rule_needs_every_condition():
    layer = text_format.Parse('include { phase: TEST stage: "a" stage: "b" }', pb.LayerParameter())
    assert not layer_included(layer, make_state("TEST", stages=["a"]))
    assert layer_included(layer, make_state("TEST", stages=["a", "b"]))
    assert not layer_included(layer, make_state("TRAIN", stages=["a", "b"]))


def test_include_and_exclude_together_is_an_error():
    bad = net('layer { name: "x" type: "ReLU" include { phase: TEST } exclude { phase: TRAIN } }')
    with pytest.raises(GraphError, match="both include and exclude"):
        build_graph(bad)


CHAIN = """
layer { name: "data" type: "Input" top: "data" }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "a" type: "Pooling" bottom: "conv1" top: "a" }
layer { name: "b" type: "Pooling" bottom: "conv1" top: "b" }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
"""


def test_in_place_and_outputs():
    g = build_graph(net(CHAIN), splits=False)
    assert g.node("relu1").in_place and not g.node("conv1").in_place
    assert g.inputs == ["data"]
    assert g.outputs == ["cat"]


def test_split_inserted_with_caffe_names():
    g = build_graph(net(CHAIN))
    split = g.node("conv1_relu1_0_split")
    assert split.type == "Split" and split.inserted
    assert split.bottoms == ["conv1"]
    assert split.tops == ["conv1_relu1_0_split_0", "conv1_relu1_0_split_1"]
    assert g.node("a").bottoms == ["conv1_relu1_0_split_0"]
    assert g.node("b").bottoms == ["conv1_relu1_0_split_1"]
    assert names(g).index("conv1_relu1_0_split") == names(g).index("relu1") + 1


def test_no_split_for_single_reader_versions():
    # conv1 is read by relu1 (in place) and then the relu'd version by pool:
    # each version has one reader, so no split.
    text = """
    layer { name: "data" type: "Input" top: "data" }
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" }
    layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
    layer { name: "pool" type: "Pooling" bottom: "conv1" top: "pool" }
    """
    g = build_graph(net(text))
    assert not any(n.inserted for n in g.nodes)


def test_in_place_reader_of_shared_blob_is_rejected():
    text = """
    layer { name: "data" type: "Input" top: "data" }
    layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" }
    layer { name: "sig" type: "Sigmoid" bottom: "data" top: "sig" }
    """
    # relu's output version is read twice: fine (split after relu).
    g = build_graph(net(text))
    assert g.node("data_relu_0_split").tops[0] == "data_relu_0_split_0"
    text2 = """
    layer { name: "data" type: "Input" top: "data" }
    layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" }
    layer { name: "relu" type: "ReLU" bottom: "data" top: "data" }
    """
    with pytest.raises(GraphError, match="modifies 'data' in place"):
        build_graph(net(text2))


def test_undefined_bottom_suggests_a_name():
    text = """
    layer { name: "data" type: "Input" top: "data" }
    layer { name: "conv1" type: "Convolution" bottom: "dta" top: "conv1" }
    """
    with pytest.raises(GraphError) as err:
        build_graph(net(text))
    assert "bottom 'dta' is not produced" in str(err.value)
    assert "did you mean 'data'" in str(err.value)


def test_duplicate_top_is_an_error():
    text = """
    layer { name: "data" type: "Input" top: "data" }
    layer { name: "a" type: "ReLU" bottom: "data" top: "x" }
    layer { name: "b" type: "ReLU" bottom: "data" top: "x" }
    """
    with pytest.raises(GraphError, match="top 'x' is already produced by layer 'a'"):
        build_graph(net(text))


def test_in_place_at_other_position_explains_the_rule():
    text = """
    layer { name: "data" type: "Input" top: "data" top: "label" }
    layer { name: "swap" type: "Concat" bottom: "data" bottom: "label" top: "label" }
    """
    with pytest.raises(GraphError, match="same position"):
        build_graph(net(text))


def test_cycle_is_reported_with_its_layers():
    text = """
    layer { name: "data" type: "Input" top: "data" }
    layer { name: "a" type: "Eltwise" bottom: "data" bottom: "y" top: "x" }
    layer { name: "b" type: "ReLU" bottom: "x" top: "y" }
    """
    with pytest.raises(GraphError, match="cycle: 'a' -> 'b' -> 'a'"):
        build_graph(net(text))


def test_out_of_order_layers_are_reordered_with_a_warning():
    text = """
    layer { name: "relu" type: "ReLU" bottom: "conv" top: "out" }
    layer { name: "data" type: "Input" top: "data" }
    layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" }
    """
    g = build_graph(net(text))
    assert names(g) == ["data", "conv", "relu"]
    assert any("reordered" in w for w in g.warnings)


def test_insert_splits_is_idempotent_on_split_graphs():
    g = build_graph(net(CHAIN))
    again = insert_splits(g.nodes)
    assert [n.name for n in again] == names(g)
