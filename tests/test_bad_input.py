"""Malformed prototxt: every problem is a NetdefError with file:line:col, what and a hint.

Parse and upgrade cases (the front end). Other areas add their cases in their
own test files.
"""
from __future__ import annotations

import pytest

from netdef.errors import Location, NetdefError, ParseError, UpgradeError
from netdef.frontend.source import read_net, read_solver
from netdef.frontend.parse import parse_message
from netdef.frontend.schema import pb

FILE = "net.prototxt"

# (id, text, error class, line, col, words in the message, words in the hint)
CASES = [
    ("unknown field with suggestion",
     'layer {\n  name: "c"\n  convolution_parm { num_output: 3 }\n}\n',
     ParseError, 3, 3, ["unknown field 'convolution_parm'", "LayerParameter"],
     ["did you mean 'convolution_param'"]),
    ("misspelt nested field",
     'layer {\n  convolution_param {\n    kernal_size: 3\n  }\n}\n',
     ParseError, 3, 5, ["unknown field 'kernal_size'", "ConvolutionParameter"],
     ["'kernel_size'"]),
    ("bad enum with suggestion",
     'layer {\n  pooling_param { pool: MAXX }\n}\n',
     ParseError, 2, 25, ["unknown value 'MAXX'", "'pool'"],
     ["did you mean 'MAX'", "valid: MAX, AVE, STOCHASTIC"]),
    ("enum number out of range",
     'layer { pooling_param { pool: 7 } }',
     ParseError, 1, 31, ["7 is not a value of PoolMethod"], ["MAX, AVE, STOCHASTIC"]),
    ("unterminated string",
     'layer {\n  name: "conv1\n  type: "ReLU"\n}\n',
     ParseError, 2, 9, ["unterminated string"], []),
    ("unclosed brace reports where it opened",
     'name: "n"\nlayer {\n  name: "a"\n  type: "ReLU"\n',
     ParseError, 2, 7, ["'{' of 'layer' is never closed", "the file ends at net.prototxt:5:1"],
     ["missing '}'"]),
    ("stray closing brace",
     'name: "n"\nlayer { name: "a" }\n}\n',
     ParseError, 3, 1, ["unexpected '}'", "no message is open"], []),
    ("missing colon",
     'layer {\n  bottom "data"\n}\n',
     ParseError, 2, 10, ["expected ':' or '{' after field name 'bottom'", "got '\"data\"'"], []),
    ("string where an integer is expected",
     'layer {\n  convolution_param { kernel_size: abc }\n}\n',
     ParseError, 2, 36, ["expected an integer for 'kernel_size'", "got 'abc'"], []),
    ("negative value for uint32",
     'layer {\n  convolution_param { kernel_size: -3 }\n}\n',
     ParseError, 2, 36, ["non-negative integer", "'kernel_size' (uint32)", "-3"], []),
    ("float for an integer field",
     'layer { convolution_param { num_output: 2.5 } }',
     ParseError, 1, 41, ["expected an integer for 'num_output'", "'2.5'"], []),
    ("integer out of range",
     'layer { convolution_param { num_output: 4294967296 } }',
     ParseError, 1, 41, ["'num_output' (uint32)", "0 .. 4294967295"], []),
    ("duplicate non-repeated field",
     'layer {\n  name: "a"\n  name: "b"\n}\n',
     ParseError, 3, 3, ["'name' is set twice", "first at line 2:3"], ["not repeated"]),
    ("duplicate non-repeated message",
     'layer {\n  convolution_param { num_output: 1 }\n  convolution_param { group: 2 }\n}',
     ParseError, 3, 3, ["'convolution_param' is set twice"], []),
    ("message field given a scalar",
     'layer {\n  convolution_param: 3\n}\n',
     ParseError, 2, 22, ["expected '{' to open message field 'convolution_param'", "got '3'"],
     ["convolution_param { ... }"]),
    ("scalar field given a message",
     'layer {\n  name { value: 1 }\n}\n',
     ParseError, 2, 8, ["field 'name' is a string, not a message"], ["name: <value>"]),
    ("end of file inside a field",
     'layer {\n  name:',
     ParseError, 2, 8, ["unexpected end of file", "a quoted string for 'name'"], []),
    ("unquoted string",
     'layer { name: conv1 }',
     ParseError, 1, 15, ["expected a quoted string for 'name'", "got 'conv1'"],
     ['put it in quotes: "conv1"']),
    ("bad bool",
     'layer { transform_param { mirror: yes } }',
     ParseError, 1, 35, ["expected true or false for 'mirror'", "'yes'"], []),
    ("mismatched closing bracket",
     'layer {\n  name: "a"\n>\n',
     ParseError, 3, 1, ["expected '}' to close the message 'layer' opened at net.prototxt:1:7"],
     []),
    ("forgotten closing brace inside a layer",
     'layer {\n  name: "a"\n  convolution_param {\n    num_output: 3\n}\nlayer {\n}\n',
     ParseError, 6, 1, ["unknown field 'layer' in LayerParameter"],
     ["is a '}' missing?", "belongs to NetParameter"]),
    ("invalid escape",
     'layer { name: "a\\qb" }',
     ParseError, 1, 15, ["invalid escape '\\q'"], []),
    ("list syntax on a non-repeated field",
     'layer { name: ["a"] }',
     ParseError, 1, 15, ["'name' is not repeated"], []),
    ("not a field name",
     'layer { name: "a" @ }',
     ParseError, 1, 19, ["expected a field name", "'@'"], []),
    ("missing required clip min",
     'layer {\n  name: "c"\n  type: "Clip"\n  clip_param { max: 1 }\n}\n',
     ParseError, 4, 3, ["missing required field 'min'", "ClipParameter"], ["min: <value>"]),
    ("mixed layer and layers",
     'name: "x"\nlayer { name: "a" type: "ReLU" }\n\nlayers { name: "b" type: RELU }\n',
     UpgradeError, 4, 1, ["mixes 'layer' (line 2) and legacy 'layers' (line 4)"],
     ["netdef upgrade"]),
    ("bad input_dim count",
     'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 224\nlayer { name: "a" }\n',
     UpgradeError, 2, 1, ["3 input_dim values for 1 input ('data')", "expected 4 per input"],
     []),
    ("input_shape count",
     'input: "a"\ninput: "b"\ninput_shape { dim: 1 }\n',
     UpgradeError, 3, 1, ["1 input_shape for 2 inputs"], []),
    ("input without shape",
     'name: "n"\ninput: "data"\n',
     UpgradeError, 2, 1, ["input 'data' has no shape"], ["input_dim"]),
    ("input_dim without input",
     'input_dim: 1\ninput_dim: 1\ninput_dim: 1\ninput_dim: 1\n',
     UpgradeError, 1, 1, ["without any 'input' name"], []),
    ("unknown V0 layer type",
     'layers {\n  layer { name: "a" type: "convolution" }\n}\n',
     UpgradeError, 2, 21, ["unknown V0 layer type 'convolution'"], ["conv"]),
    ("V0 field meaningless for its type",
     'layers {\n  layer { name: "a" type: "relu" num_output: 3 }\n}\n',
     UpgradeError, 2, 34, ["sets 'num_output'", "type 'relu'"], []),
    ("V0 padding feeding a non conv/pool layer",
     'layers { layer { name: "p" type: "padding" pad: 1 } bottom: "d" top: "p" }\n'
     'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }\n',
     UpgradeError, 2, 28, ["padding layer 'p' feeds layer 'r'"], []),
    ("V1 type NONE",
     'layers { name: "a" type: NONE }',
     UpgradeError, 1, 20, ["type NONE"], []),
    ("conflicting legacy transform field",
     'layer { name: "d" type: "Data"\n  transform_param { crop_size: 10 }\n'
     '  data_param { crop_size: 20 }\n}\n',
     UpgradeError, 3, 16, ["data_param.crop_size (20)", "transform_param.crop_size (10)"], []),
]


@pytest.mark.parametrize("text,cls,line,col,what,hint", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_net(text, cls, line, col, what, hint):
    with pytest.raises(cls) as info:
        read_net(text, filename=FILE)
    err = info.value
    assert err.where == Location(FILE, line, col), str(err)
    for words in what:
        assert words in err.message, str(err)
    for words in hint:
        assert err.hint and words in err.hint, str(err)
    assert str(err).startswith(f"{FILE}:{line}:{col}: ")
    assert isinstance(err, NetdefError)


def test_there_are_many_distinct_cases():
    assert len({c[0] for c in CASES}) >= 15


def test_default_filename_is_string_marker():
    with pytest.raises(ParseError) as info:
        parse_message("nope: 1", pb.NetParameter)
    assert str(info.value).startswith("<string>:1:1: unknown field 'nope' in NetParameter")


def test_missing_file_is_a_parse_error(tmp_path):
    with pytest.raises(ParseError) as info:
        read_net(tmp_path / "missing.prototxt")
    assert "cannot read" in info.value.message


def test_binary_file_is_a_parse_error(tmp_path):
    path = tmp_path / "weights.caffemodel"
    path.write_bytes(b'name: "x"\n\xff\xfe\x00')
    with pytest.raises(ParseError) as info:
        read_net(path)
    assert info.value.where == Location(str(path), 2, 1)
    assert "UTF-8" in info.value.message


def test_bad_solver_field(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text("base_lr: 0.1\nmax_iters: 100\n")
    with pytest.raises(ParseError) as info:
        read_solver(path)
    assert info.value.where == Location(str(path), 2, 1)
    assert "did you mean 'max_iter'" in info.value.hint


def test_solver_with_conflicting_types(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('solver_type: ADAM\ntype: "SGD"\n')
    with pytest.raises(UpgradeError) as info:
        read_solver(path)
    assert info.value.where == Location(str(path), 2, 1)
    assert "solver_type: ADAM" in info.value.message
