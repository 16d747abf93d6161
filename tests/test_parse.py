"""netdef.frontend.parse: the prototxt reader, its source map and the writer."""
from __future__ import annotations

import math

import pytest
from conftest import shared_prototxts
from google.protobuf import text_format

from netdef.errors import Location, ParseError
from netdef.frontend.parse import SourceMap, parse_message, to_text
from netdef.frontend.schema import pb


def net(text: str) -> pb.NetParameter:
    return parse_message(text, pb.NetParameter)[0]


def layer(text: str) -> pb.LayerParameter:
    return parse_message(text, pb.LayerParameter)[0]


def same_as_reference(text: str, cls=pb.NetParameter):
    ours = parse_message(text, cls)[0]
    assert ours == text_format.Parse(text, cls())
    return ours


# ---------------------------------------------------------------- syntax ----

def test_field_colon_value_and_nested_message():
    n = same_as_reference('name: "lenet"\nlayer {\n  name: "c"\n  convolution_param {\n'
                          '    num_output: 20\n  }\n}\n')
    assert n.name == "lenet"
    assert n.layer[0].convolution_param.num_output == 20


@pytest.mark.parametrize("opening", ["shape {", "shape: {", "shape <", "shape: <"])
def test_message_openers(opening):
    closing = "}" if "{" in opening else ">"
    text = f"input_param {{ {opening} dim: 1 dim: 3 {closing} }}"
    assert list(layer(text).input_param.shape[0].dim) == [1, 3]


def test_several_fields_on_one_line_and_optional_separators():
    lay = layer('name: "a", type: "ReLU"; bottom: "x" top: "y",')
    assert (lay.name, lay.type, list(lay.bottom), list(lay.top)) == ("a", "ReLU", ["x"], ["y"])


def test_comments_full_line_trailing_and_with_braces():
    text = ('# header { with braces } and "quotes\n'
            'name: "n"  # trailing } comment\n'
            'layer { # {{{\n  name: "a" # }\n}\n# final comment without newline')
    n = same_as_reference(text)
    assert n.name == "n" and n.layer[0].name == "a"


def test_hash_inside_a_string_is_not_a_comment():
    assert layer('name: "a#b"').name == "a#b"


def test_strings_quotes_escapes_and_concatenation():
    lay = same_as_reference(r'''name: 'it\'s' "a" 'b' type: "tab\there\n\x41\101\"\\"''',
                            pb.LayerParameter)
    assert lay.name == "it'sab"
    assert lay.type == 'tab\there\nAA"\\'


def test_utf8_string():
    assert layer('name: "café ✓"').name == "café ✓"


def test_integers_decimal_hex_octal_negative():
    lay = same_as_reference("convolution_param { num_output: 0x10 group: 010 axis: -2 "
                            "kernel_size: 3 }", pb.LayerParameter)
    p = lay.convolution_param
    assert (p.num_output, p.group, p.axis, list(p.kernel_size)) == (16, 8, -2, [3])


@pytest.mark.parametrize("text,value", [
    ("0.", 0.0), (".5", 0.5), ("1e-08", 1e-08), ("1.0f", 1.0), ("2", 2.0), ("-3.5", -3.5),
    ("5E+2", 500.0), ("inf", math.inf), ("-inf", -math.inf), ("Infinity", math.inf),
])
def test_floats(text, value):
    lay = same_as_reference(f"loss_weight: {text}", pb.LayerParameter)
    assert lay.loss_weight[0] == pytest.approx(value, rel=1e-6)


def test_nan():
    assert math.isnan(layer("loss_weight: nan").loss_weight[0])


@pytest.mark.parametrize("text,value", [
    ("true", True), ("false", False), ("True", True), ("False", False),
    ("t", True), ("f", False), ("1", True), ("0", False),
])
def test_bools(text, value):
    lay = same_as_reference(f"transform_param {{ mirror: {text} }}", pb.LayerParameter)
    assert lay.transform_param.mirror is value


def test_enum_by_name_and_by_number():
    lay = same_as_reference("pooling_param { pool: AVE } include { phase: 0 }",
                            pb.LayerParameter)
    assert lay.pooling_param.pool == pb.PoolingParameter.AVE
    assert lay.include[0].phase == pb.TRAIN


def test_repeated_scalars_as_repeated_fields_and_lists():
    lay = same_as_reference('bottom: "a" bottom: ["b", \'c\'] top: [] '
                            "transform_param { mean_value: [104, 117.5] mean_value: 123 }",
                            pb.LayerParameter)
    assert list(lay.bottom) == ["a", "b", "c"]
    assert list(lay.top) == []
    assert list(lay.transform_param.mean_value) == [104, 117.5, 123]


def test_repeated_messages_as_list():
    n = same_as_reference('layer: [{ name: "a" }, { name: "b" }] layer [ < name: "c" > ]')
    assert [lay.name for lay in n.layer] == ["a", "b", "c"]


def test_tabs_crlf_and_no_final_newline():
    text = 'name: "n"\r\nlayer {\r\n\tname: "a"\r\n\ttype: "ReLU"\r\n}'
    n, sm = parse_message(text, pb.NetParameter, "f.prototxt")
    assert n.layer[0].type == "ReLU"
    assert sm.location(("layer", 0, "type")) == Location("f.prototxt", 4, 2)


def test_empty_text_and_empty_message():
    assert net("") == pb.NetParameter()
    n = net("state { }")
    assert n.HasField("state")


def test_required_field_present_is_accepted():
    assert layer("clip_param { min: -1 max: 1 }").clip_param.max == 1


# ------------------------------------------------------------ source map ----

def test_source_map_paths_and_locations():
    text = ('name: "n"\n'
            'layer {\n'
            '  name: "a"\n'
            '}\n'
            'layer {\n'
            '  name: "b"\n'
            '  convolution_param { kernel_size: 3 kernel_size: 5 }\n'
            '}\n')
    _, sm = parse_message(text, pb.NetParameter, "x.prototxt")
    assert isinstance(sm, SourceMap)
    assert sm.location(("name",)) == Location("x.prototxt", 1, 1)
    assert sm.location(("layer", 1)) == Location("x.prototxt", 5, 1)
    assert sm.location(("layer", 1, "name")) == Location("x.prototxt", 6, 3)
    assert sm.location(("layer", 1, "convolution_param")) == Location("x.prototxt", 7, 3)
    assert sm.location(("layer", 1, "convolution_param", "kernel_size", 1)) == \
        Location("x.prototxt", 7, 38)
    assert sm.location(("layer", 2)) is None
    assert ("layer", 0, "name") in sm


def test_source_map_list_elements():
    _, sm = parse_message('bottom: ["a",\n  "b"]', pb.LayerParameter)
    assert sm.location(("bottom", 1)).line == 2


# ---------------------------------------------------------------- writer ----

def test_to_text_prints_floats_exactly():
    lay = pb.LayerParameter(name="n")
    lay.lrn_param.alpha = 0.0001
    lay.transform_param.scale = 0.00390625
    text = to_text(lay)
    assert "alpha: 0.0001\n" in text and "scale: 0.00390625\n" in text
    assert parse_message(text, pb.LayerParameter)[0] == lay


def test_to_text_round_trips_awkward_values():
    lay = pb.LayerParameter(name='quote " apostrophe \' backslash \\ newline \n é',
                            loss_weight=[math.inf, -math.inf, 1e-30, 3.4e38])
    lay.pooling_param.pool = pb.PoolingParameter.STOCHASTIC
    assert parse_message(to_text(lay), pb.LayerParameter)[0] == lay


# ------------------------------------------------------- real Caffe files ----

def _cls(path):
    return pb.SolverParameter if "solver" in path.name else pb.NetParameter


ALL_FILES = shared_prototxts("net") + shared_prototxts("solver")


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_file_matches_reference_parser(path, shared_models):
    text = path.read_text()
    ours, sm = parse_message(text, _cls(path), str(path))
    assert ours == text_format.Parse(text, _cls(path)())
    assert len(sm) > 0


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_file_round_trips(path, shared_models):
    ours, _ = parse_message(path.read_text(), _cls(path))
    again, _ = parse_message(to_text(ours), _cls(path))
    assert again == ours


def test_real_files_exist(shared_models):
    assert len(ALL_FILES) >= 80


def test_layer_locations_in_a_real_file(shared_models):
    path = shared_models / "resnet" / "ResNet-50-deploy.prototxt"
    n, sm = parse_message(path.read_text(), pb.NetParameter, str(path))
    lines = path.read_text().splitlines()
    for i in (0, 10, len(n.layer) - 1):
        where = sm.location(("layer", i))
        assert lines[where.line - 1][where.col - 1:].startswith("layer")
        name_at = sm.location(("layer", i, "name"))
        assert f'"{n.layer[i].name}"' in lines[name_at.line - 1]


def test_parse_error_is_a_parse_error_with_location():
    with pytest.raises(ParseError) as info:
        parse_message("layer {", pb.NetParameter, "a.prototxt")
    assert info.value.where == Location("a.prototxt", 1, 7)


# ----------------------------------------------------------- recovery ----
def collect(text):
    errors = []
    msg, _ = parse_message(text, pb.NetParameter, "n.prototxt", errors=errors)
    return msg, [(e.where.line, e.where.col, e.message) for e in errors]


def test_recovery_skips_bad_fields_and_goes_on():
    text = ('layer {\n  name: "c"\n  botom: "data"\n  type: "Convolution"\n'
            '  convolution_param { num_ouput: 4 kernel_size: 3 pad: abc stride: 2 }\n}\n'
            'layer { name: "p" type: "Pooling" pooling_param { pool: MAXX } name: "q" }\n'
            'layer { name: unquoted type: "ReLU" }\n')
    msg, found = collect(text)
    assert [(line, col) for line, col, _ in found] == [(3, 3), (5, 23), (5, 56), (7, 57),
                                                       (7, 64), (8, 15)]
    assert "unknown field 'botom'" in found[0][2] and "set twice" in found[4][2]
    c, p, r = msg.layer
    assert c.type == "Convolution" and not c.bottom
    assert c.convolution_param.kernel_size == [3] and c.convolution_param.stride == [2]
    assert p.name == "p" and not p.pooling_param.HasField("pool")
    assert r.type == "ReLU" and not r.HasField("name")


def test_recovery_skips_a_whole_unknown_message_and_stray_tokens():
    msg, found = collect('layer { name: "a" nope { x: 1 y { z: 2 } } 42 type: "ReLU" }\n'
                         '}\nname: "n"\n')
    assert [m.split(":")[0] for _, _, m in found] == ["unknown field 'nope' in LayerParameter",
                                                      "expected a field name, got '42'",
                                                      "unexpected '}'"]
    assert msg.layer[0].type == "ReLU" and msg.name == "n"


def test_recovery_stops_at_broken_nesting():
    text = ('layer {\n  name: "a"\n  convolution_param {\n    num_output: 3\n'
            '  nme: "x"\n  bottom: "b"\n}\nlayer {\n  name: "z"\n}\n')
    _, found = collect(text)
    # the typo is skipped; 'bottom' in ConvolutionParameter means a '}' is missing: stop
    assert [(line, col) for line, col, _ in found] == [(5, 3), (6, 3)]
    assert "is a '}' missing?" not in found[0][2]
    with pytest.raises(ParseError, match="nme"):
        parse_message(text, pb.NetParameter)        # without a list: the first error


def test_recovery_reports_missing_required_and_unclosed():
    _, found = collect('layer { name: "c" type: "Clip" clip_param { max: 1 } }\nlayer { name: "x"')
    assert "missing required field 'min'" in found[0][2]
    assert "never closed" in found[-1][2]


def test_recovery_from_an_unterminated_string_skips_its_line():
    msg, found = collect('layer {\n  name: "conv1\n  type: "ReLU"\n  top: "y"\n}\n')
    assert [(line, col) for line, col, _ in found] == [(2, 9)]
    assert "unterminated string" in found[0][2]
    assert msg.layer[0].type == "ReLU" and list(msg.layer[0].top) == ["y"]
