"""netdef.frontend.upgrade and netdef.frontend: legacy nets become current, locations survive."""
from __future__ import annotations

import pytest

from netdef.errors import Location, UpgradeError
from netdef.frontend.source import NetSource, read_net, read_solver, upgrade_file, write_net
from netdef.frontend.parse import parse_message, to_text
from netdef.frontend.schema import pb
from netdef.frontend.upgrade import (PASSES, SOLVER_TYPE_NAMES, V0_TYPES, V1_TYPE_NAMES, net_format,
                            upgrade_net, upgrade_solver)

FIXTURES = "caffe_upgrade_proto_tests"


def load(folder, name) -> pb.NetParameter:
    return parse_message((folder / name).read_text(), pb.NetParameter, name)[0]


def normalised(message) -> str:
    """Field-order-normalised text, for readable diffs of unequal nets."""
    return to_text(message)


# ----------------------------------------------------------- Caffe fixtures ----

@pytest.mark.parametrize("test", ["TestSimple", "TestImageNet"])
def test_v0_to_v1_to_v2_fixtures(shared_models, test):
    folder = shared_models / FIXTURES
    v0 = load(folder, f"NetUpgradeTest.{test}.v0_proto.prototxt")
    expected_v1 = load(folder, f"NetUpgradeTest.{test}.expected_v1_proto.prototxt")
    expected_v2 = load(folder, f"NetUpgradeTest.{test}.expected_v2_proto.prototxt")
    assert net_format(v0) == "V0" and net_format(expected_v1) == "V1"
    v1 = upgrade_net(v0, stop_after="v0_to_v1").param
    assert normalised(v1) == normalised(expected_v1)
    assert normalised(upgrade_net(v0).param) == normalised(expected_v2)
    assert normalised(upgrade_net(expected_v1).param) == normalised(expected_v2)
    assert upgrade_net(expected_v2).log == []


def test_v0_all_params_fixture(shared_models):
    folder = shared_models / FIXTURES
    v0 = load(folder, "NetUpgradeTest.TestAllParams.input_proto.prototxt")
    expected = load(folder, "NetUpgradeTest.TestAllParams.expected_output_proto.prototxt")
    assert normalised(upgrade_net(v0, stop_after="v0_to_v1").param) == normalised(expected)


@pytest.mark.parametrize("test", ["TestSimple", "TestImageNet", "TestTwoTops"])
def test_padding_layer_fixtures(shared_models, test):
    folder = shared_models / FIXTURES
    before = load(folder, f"PaddingLayerUpgradeTest.{test}.input_proto.prototxt")
    expected = load(folder, f"PaddingLayerUpgradeTest.{test}.expected_output_proto.prototxt")
    result = upgrade_net(before, stop_after="v0_padding")
    assert normalised(result.param) == normalised(expected)
    assert "padding" in result.log[0]


def test_v0_origins_skip_folded_padding_layers(shared_models):
    path = shared_models / FIXTURES / "NetUpgradeTest.TestSimple.v0_proto.prototxt"
    source = read_net(path)
    assert source.original_format == "V0"
    assert [lay.name for lay in source.param.layer] == ["data", "conv1", "fc8", "loss"]
    assert [loc.line for loc in source.layer_locations] == [2, 24, 47, 68]
    # conv1's kernel_size was written as V0 'kernelsize'; the field maps back to it
    where = source.field_location(1, "convolution_param", "kernel_size", 0)
    assert (path.read_text().splitlines()[where.line - 1].strip()) == "kernelsize: 11"


# ------------------------------------------------------------------ tables ----

def test_every_v1_type_has_a_type_string():
    names = {v.name: V1_TYPE_NAMES.get(v.number)
             for v in pb.V1LayerParameter.LayerType.DESCRIPTOR.values}
    assert names.pop("NONE") is None
    assert all(names.values())
    assert names["CONVOLUTION"] == "Convolution"
    assert names["INNER_PRODUCT"] == "InnerProduct"
    assert names["SOFTMAX_LOSS"] == "SoftmaxWithLoss"
    assert names["HDF5_DATA"] == "HDF5Data"
    assert names["SIGMOID_CROSS_ENTROPY_LOSS"] == "SigmoidCrossEntropyLoss"
    assert names["TANH"] == "TanH" and names["RELU"] == "ReLU" and names["IM2COL"] == "Im2col"
    assert names["DUMMY_DATA"] == "DummyData" and names["ABSVAL"] == "AbsVal"


def test_every_v1_field_is_carried_over():
    from netdef.frontend.upgrade import V1_PARAM_SPEC, _V1_SAME_NAME
    layer_fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
    for fd in pb.V1LayerParameter.DESCRIPTOR.fields:
        assert fd.name in V1_PARAM_SPEC or fd.name in ("type", "layer") or \
            fd.name in _V1_SAME_NAME
    for name in _V1_SAME_NAME:
        v1_fd = pb.V1LayerParameter.DESCRIPTOR.fields_by_name[name]
        assert layer_fields[name].type == v1_fd.type
        if v1_fd.message_type is not None:
            assert layer_fields[name].message_type is v1_fd.message_type


def test_every_v0_field_has_a_valid_destination():
    from netdef.frontend.upgrade import V0_FIELDS
    v0_fields = {fd.name for fd in pb.V0LayerParameter.DESCRIPTOR.fields}
    for v0_name, routes in V0_FIELDS.items():
        assert v0_name in v0_fields
        for v0_type, dest in routes.items():
            assert v0_type == "*" or v0_type in V0_TYPES
            message = pb.V1LayerParameter()
            *outer, leaf = dest.split(".")
            for part in outer:
                message = getattr(message, part)
            assert leaf in message.DESCRIPTOR.fields_by_name
    # only V0 fields with no Caffe meaning (new_num, new_channels) lack a route
    assert v0_fields - set(V0_FIELDS) - {"type"} == {"new_num", "new_channels"}


def test_solver_type_table_covers_the_enum():
    assert set(SOLVER_TYPE_NAMES) == set(pb.SolverParameter.SolverType.keys())


def test_passes_are_named_and_ordered():
    names = [p.name for p in PASSES]
    assert names.index("v0_to_v1") < names.index("v1_to_v2") < names.index("input_header")


# ---------------------------------------------------------- V1 model files ----

def test_vgg16_deploy(shared_models):
    source = read_net(shared_models / "vgg_ilsvrc_16" / "VGG_ILSVRC_16_layers_deploy.prototxt")
    p = source.param
    assert source.original_format == "V1" and len(p.layers) == 0
    assert p.layer[0].type == "Input" and list(p.layer[0].top) == ["data"]
    assert list(p.layer[0].input_param.shape[0].dim) == [10, 3, 224, 224]
    types = [lay.type for lay in p.layer]
    assert types.count("Convolution") == 13 and types.count("InnerProduct") == 3
    assert types.count("ReLU") == 15 and types.count("Pooling") == 5
    assert types[-1] == "Softmax" and "Dropout" in types
    assert len(p.input) == 0 and len(p.input_dim) == 0
    assert source.upgrade_log == ["upgraded 39 V1 layers to the current format (type enums -> "
                                  "strings, blobs_lr/weight_decay -> param { lr_mult "
                                  "decay_mult })",
                                  "converted input header (data: 10x3x224x224) to an Input layer"]
    assert source.layer_location(0).line == 2          # the header's 'input:' line
    assert source.layer_location(1).line == 7          # the first 'layers {'


@pytest.mark.parametrize("folder,n_layers", [("nin_imagenet", 33), ("nin_cifar10", 27)])
def test_nin_train_val(shared_models, folder, n_layers):
    source = read_net(shared_models / folder / "train_val.prototxt")
    p = source.param
    assert len(p.layer) == n_layers
    assert {lay.type for lay in p.layer} >= {"Data", "Convolution", "ReLU", "Pooling",
                                             "Dropout", "SoftmaxWithLoss"}
    conv1 = next(lay for lay in p.layer if lay.name == "conv1")
    assert [(s.lr_mult, s.decay_mult) for s in conv1.param] == [(1, 1), (2, 0)]
    data = [lay for lay in p.layer if lay.type == "Data"]
    assert [r.phase for d in data for r in d.include] == [pb.TRAIN, pb.TEST]
    # lr_mult of conv1's bias was written as the second blobs_lr
    i = list(p.layer).index(conv1)
    where = source.field_location(i, "param", 1, "lr_mult")
    line = (shared_models / folder / "train_val.prototxt").read_text().splitlines()[where.line - 1]
    assert line.strip().startswith("blobs_lr:")


def test_lenet_consolidated_solver(shared_models):
    solver, sm = read_solver(shared_models / "mnist" / "lenet_consolidated_solver.prototxt")
    net = solver.net_param
    assert len(net.layers) == 0
    assert [lay.type for lay in net.layer] == ["Data", "Data", "Data", "Convolution", "Pooling",
                                               "Convolution", "Pooling", "InnerProduct", "ReLU",
                                               "InnerProduct", "Accuracy", "SoftmaxWithLoss"]
    conv1 = net.layer[3]
    assert [s.lr_mult for s in conv1.param] == [1, 2]
    assert [list(d.include[0].stage) for d in net.layer[1:3]] == [["test-on-test-set"],
                                                                  ["test-on-train-set"]]
    assert sm.location(("net_param", "layers", 3)).line > 1


def test_resnet50_input_dim_header(shared_models):
    source = read_net(shared_models / "resnet" / "ResNet-50-deploy.prototxt")
    first = source.param.layer[0]
    assert (first.name, first.type, list(first.top)) == ("input", "Input", ["data"])
    assert list(first.input_param.shape[0].dim) == [1, 3, 224, 224]
    assert source.original_format == "V2"
    assert source.upgrade_log == ["converted input header (data: 1x3x224x224) to an Input layer"]
    assert source.param.layer[1].name == "conv1"
    assert source.layer_location(1) == source.source_map.location(("layer", 0))
    assert source.field_location(0, "input_param", "shape", 0, "dim", 3).line == 6


def test_squeezenet_input_shape_header(shared_models):
    source = read_net(shared_models / "squeezenet" / "SqueezeNet_v1.0" / "deploy.prototxt")
    first = source.param.layer[0]
    assert first.type == "Input" and list(first.input_param.shape[0].dim) == [10, 3, 227, 227]
    assert len(source.param.input_shape) == 0
    assert source.layer_location(0).line == 9


def test_batchnorm_params_dropped(shared_models):
    source = read_net(shared_models / "cifar10" / "cifar10_full_sigmoid_train_test_bn.prototxt")
    bns = [lay for lay in source.param.layer if lay.type == "BatchNorm"]
    assert len(bns) == 3 and all(len(bn.param) == 0 for bn in bns)
    assert any("BatchNorm" in line for line in source.upgrade_log)


def test_current_files_are_untouched(shared_models):
    path = shared_models / "bvlc_alexnet" / "deploy.prototxt"
    source = read_net(path)
    assert source.upgrade_log == [] and source.original_format == "V2"
    assert source.param == parse_message(path.read_text(), pb.NetParameter)[0]


# ------------------------------------------------------------ inline cases ----

def test_two_inputs_make_one_input_layer():
    source = read_net('input: "a"\ninput_shape { dim: 1 dim: 2 }\ninput: "b"\n'
                      'input_shape { dim: 3 }\nlayer { name: "x" type: "Concat" bottom: "a" '
                      'bottom: "b" top: "c" }\n')
    first = source.param.layer[0]
    assert list(first.top) == ["a", "b"]
    assert [list(s.dim) for s in first.input_param.shape] == [[1, 2], [3]]
    assert source.upgrade_log == ["converted input header (a: 1x2, b: 3) to an Input layer"]
    assert source.field_location(0, "top", 1) == Location("<string>", 3, 1)


def test_legacy_data_transform_fields_move():
    source = read_net('layer { name: "d" type: "Data" data_param { source: "x" scale: 0.5 '
                      'crop_size: 10 mirror: true mean_file: "m" batch_size: 2 } }\n'
                      'layers { name: "i" type: IMAGE_DATA image_data_param { crop_size: 3 } }'
                      .replace("layers {", "layer {").replace("IMAGE_DATA", '"ImageData"'))
    d, i = source.param.layer
    assert (d.transform_param.scale, d.transform_param.crop_size, d.transform_param.mirror,
            d.transform_param.mean_file) == (0.5, 10, True, "m")
    for name in ("scale", "crop_size", "mirror", "mean_file"):
        assert not d.data_param.HasField(name)
    assert d.data_param.batch_size == 2 and i.transform_param.crop_size == 3
    assert "transform_param" in source.upgrade_log[0]


def test_legacy_data_transform_in_v1_net():
    source = read_net('layers { name: "w" type: WINDOW_DATA window_data_param { mirror: true '
                      'crop_size: 227 } }')
    w = source.param.layer[0]
    assert w.type == "WindowData" and w.transform_param.mirror and not w.window_data_param.mirror


def test_v1_param_names_and_share_modes():
    text = ('layers { name: "c" type: CONVOLUTION param: "w" param: "b" '
            "blob_share_mode: PERMISSIVE blobs_lr: 1 blobs_lr: 2 weight_decay: 1 "
            'loss_weight: 0.5 exclude { phase: TEST } blobs { num: 1 } }')
    source = read_net(text)
    c = source.param.layer[0]
    assert [s.name for s in c.param] == ["w", "b"]
    assert c.param[0].share_mode == pb.ParamSpec.PERMISSIVE and not c.param[1].HasField(
        "share_mode")
    assert [s.lr_mult for s in c.param] == [1, 2]
    assert c.param[0].decay_mult == 1 and not c.param[1].HasField("decay_mult")
    assert list(c.loss_weight) == [0.5] and c.exclude[0].phase == pb.TEST
    assert c.blobs[0].num == 1
    assert source.field_location(0, "param", 1, "name").col == text.index('param: "b"') + 1
    assert source.field_location(0, "param", 0, "share_mode").col == \
        text.index("blob_share_mode") + 1
    assert source.field_location(0, "param", 1, "lr_mult").col == text.index("blobs_lr: 2") + 1


def test_field_location_falls_back_to_enclosing_field():
    source = read_net('layer {\n  name: "c"\n  convolution_param {\n    num_output: 1\n  }\n}\n')
    assert source.field_location(0, "convolution_param", "num_output").line == 4
    assert source.field_location(0, "convolution_param", "stride", 0).line == 3
    assert source.field_location(0, "pooling_param", "pad", 0).line == 1
    assert source.field_location(5, "name") is None
    assert isinstance(source, NetSource)


def test_upgrade_does_not_modify_its_input():
    v1 = parse_message('layers { name: "r" type: RELU }', pb.NetParameter)[0]
    before = v1.SerializeToString()
    assert upgrade_net(v1).param.layer[0].type == "ReLU"
    assert v1.SerializeToString() == before


def test_solver_type_upgrade():
    solver, sm = parse_message("solver_type: ADAGRAD base_lr: 0.1 net_param { layers { "
                               'name: "s" type: SOFTMAX_LOSS } }', pb.SolverParameter)
    upgraded, log = upgrade_solver(solver, sm)
    assert upgraded.type == "AdaGrad" and not upgraded.HasField("solver_type")
    assert upgraded.net_param.layer[0].type == "SoftmaxWithLoss"
    assert log[0] == 'converted solver_type: ADAGRAD to type: "AdaGrad"'
    assert log[1].startswith("net_param: upgraded 1 V1 layers")


@pytest.mark.parametrize("enum_name,type_name", sorted(SOLVER_TYPE_NAMES.items()))
def test_every_solver_type(enum_name, type_name):
    solver = pb.SolverParameter(solver_type=pb.SolverParameter.SolverType.Value(enum_name))
    assert upgrade_solver(solver)[0].type == type_name


def test_solver_type_and_type_agreeing_is_fine():
    solver = pb.SolverParameter(solver_type=pb.SolverParameter.ADAM, type="Adam")
    assert upgrade_solver(solver)[0].type == "Adam"


def test_test_net_params_are_upgraded():
    solver = parse_message('test_net_param { layers { type: RELU } } test_net_param { '
                           'input: "x" input_dim: [1, 1, 1, 1] }', pb.SolverParameter)[0]
    upgraded, log = upgrade_solver(solver)
    assert upgraded.test_net_param[0].layer[0].type == "ReLU"
    assert upgraded.test_net_param[1].layer[0].type == "Input"
    assert [line.split(":")[0] for line in log] == ["test_net_param.0", "test_net_param.1"]


# ---------------------------------------------------------------- frontend ----

def test_read_net_accepts_path_str_and_text(tmp_path):
    path = tmp_path / "n.prototxt"
    path.write_text('name: "n" layer { name: "r" type: "ReLU" }')
    assert read_net(path).filename == str(path)
    assert read_net(str(path)).param.name == "n"
    assert read_net('name: "t"\n').filename == "<string>"
    assert read_net('name: "t"\n', filename="given.prototxt").filename == "given.prototxt"


def test_write_net_is_atomic_and_round_trips(tmp_path):
    source = read_net('layers { name: "c" type: CONVOLUTION blobs_lr: 1 convolution_param { '
                      "num_output: 2 weight_filler { std: 0.0001 } } }")
    path = tmp_path / "out.prototxt"
    path.write_text("old contents")
    write_net(source.param, path)
    assert [p.name for p in tmp_path.iterdir()] == ["out.prototxt"]
    assert "std: 0.0001\n" in path.read_text()
    assert read_net(path).param == source.param


def test_upgrade_file(tmp_path, shared_models):
    new = tmp_path / "vgg16.prototxt"
    log = upgrade_file(shared_models / "vgg_ilsvrc_16" / "VGG_ILSVRC_16_layers_deploy.prototxt",
                       new)
    assert len(log) == 2
    again = read_net(new)
    assert again.original_format == "V2" and again.upgrade_log == []
    assert again.param.layer[0].type == "Input"


def test_upgrade_file_on_current_net(tmp_path):
    old = tmp_path / "a.prototxt"
    old.write_text('layer { name: "r" type: "ReLU" }\n')
    log = upgrade_file(old, tmp_path / "b.prototxt")
    assert log[0].startswith("nothing to upgrade")
    assert read_net(tmp_path / "b.prototxt").param == read_net(old).param


def test_upgrade_error_inside_a_solver_net_points_into_the_solver():
    text = 'base_lr: 0.1\nnet_param {\n  input: "d"\n  input_dim: 1\n}\n'
    solver, sm = parse_message(text, pb.SolverParameter, "s.prototxt")
    with pytest.raises(UpgradeError) as info:
        upgrade_solver(solver, sm)
    assert info.value.where == Location("s.prototxt", 4, 3)


def test_read_net_accepts_a_message():
    param = parse_message('input: "d" input_dim: [1, 2, 3, 4] layers { type: RELU }',
                          pb.NetParameter)[0]
    source = read_net(param)
    assert [lay.type for lay in source.param.layer] == ["Input", "ReLU"]
    assert source.layer_locations == [None, None] and source.field_location(1, "type") is None
    assert source.original_format == "V1" and len(source.upgrade_log) == 2
