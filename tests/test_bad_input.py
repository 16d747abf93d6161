"""Malformed prototxt: every problem is a NetdefError with file:line:col, what and a hint.

Parse and upgrade cases (the front end). Other areas add their cases in their
own test files.
"""
from __future__ import annotations

import pathlib
import re

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


# ------------------------------------------------ sizes written in the net ----
LENET_INPUT = 'layer { name: "data" type: "Input" top: "data"\n' \
              '  input_param { shape { dim: 1 dim: 1 dim: 28 dim: 28 } } }\n'

# (id, text, line, col, words in the message)
SIZE_CASES = [
    ("negative Input dim", LENET_INPUT.replace("dim: 28 dim: 28", "dim: -1 dim: 28"),
     2, 39, ["Input layer 'data'", "size -1 in shape (1, 1, -1, 28) is negative"]),
    ("zero batch", LENET_INPUT.replace("dim: 1 dim: 1", "dim: 0 dim: 1"),
     2, 25, ["size 0 in shape (0, 1, 28, 28) leaves the blob empty"]),
    ("axis over int", LENET_INPUT.replace("dim: 1 dim: 1", f"dim: {10**12} dim: 1"),
     2, 25, ["larger than one axis can be"]),
    ("absurd product", LENET_INPUT.replace("dim: 1 dim: 1", "dim: 100000 dim: 100000"),
     2, 25, ["holds 7.84e+12 values"]),
    ("negative input_dim header",
     'input: "data"\ninput_dim: 1\ninput_dim: -3\ninput_dim: 8\ninput_dim: 8\n',
     3, 1, ["Input layer 'input'", "size -3"]),
    ("zero input_shape header",
     'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 0 dim: 8 }\n', 2, 29, ["size 0"]),
    ("negative DummyData shape",
     'layer { name: "d" type: "DummyData" top: "a"\n'
     '  dummy_data_param { shape { dim: 2 dim: -5 } } }\n',
     2, 37, ["DummyData layer 'd'", "size -5 in shape (2, -5)"]),
    ("zero legacy DummyData num",
     'layer { name: "d" type: "DummyData" top: "a"\n'
     '  dummy_data_param { num: 0 channels: 3 height: 4 width: 4 } }\n',
     2, 22, ["size 0 leaves the blob empty"]),
    ("negative V1 DummyData shape",
     'layers { name: "d" type: DUMMY_DATA top: "a"\n'
     '  dummy_data_param { shape { dim: -2 } } }\n', 2, 30, ["size -2"]),
]


@pytest.mark.parametrize("text,line,col,what", [c[1:] for c in SIZE_CASES],
                         ids=[c[0] for c in SIZE_CASES])
def test_bad_size_points_at_the_value(text, line, col, what):
    with pytest.raises(ParseError) as info:
        read_net(text, filename=FILE)
    err = info.value
    assert err.where == Location(FILE, line, col), str(err)
    for words in what:
        assert words in err.message, str(err)


def test_bad_sizes_are_all_collected():
    errors = []
    source = read_net(LENET_INPUT.replace("dim: 28 dim: 28", "dim: -1 dim: 0"),
                      filename=FILE, errors=errors)
    assert [e.where.col for e in errors] == [39, 47]
    assert source.invalid_layers == [0]


def test_v0_value_that_does_not_fit_its_upgraded_field():
    text = ('layers {\n  layer { name: "img" type: "images" source: "l.txt" batchsize: 2\n'
            '    new_height: -1 }\n  top: "data" top: "label"\n}\n')
    with pytest.raises(UpgradeError) as info:
        read_net(text, filename=FILE)
    assert info.value.where == Location(FILE, 3, 5)
    assert "new_height: -1" in info.value.message and "uint32" in info.value.message


def test_missing_file_hint_only_for_text_like_names(tmp_path):
    with pytest.raises(ParseError) as info:
        read_net(str(tmp_path / "missing.prototxt"))
    assert info.value.hint is None and "taken as a file name" not in str(info.value)
    with pytest.raises(ParseError) as info:
        read_net('name: "oneline"')               # prototxt text without '{' or newline
    assert "taken as a file name" in info.value.hint


# ------------------------------------------------------------ the fuzz ----
LEGACY_NET = """name: "LeNetLegacy"
input: "data"
input_dim: 1
input_dim: 1
input_dim: 28
input_dim: 28
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 convolution_param { num_output: 4 kernel_size: 5 stride: 1 } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layers { name: "ip1" type: INNER_PRODUCT bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 10 } }
layers { name: "dummy" type: DUMMY_DATA top: "d2"
  dummy_data_param { num: 2 channels: 3 height: 4 width: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "ip1" top: "prob" }
"""
_NUMBER = re.compile(r"(?<![\w.-])\d+(?![\w.])")


def _mutations(text):
    """Every integer outside comments replaced, one at a time, by -1, 0 and 10**12."""
    for m in _NUMBER.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        if "#" in text[line_start:m.start()]:
            continue
        for value in ("-1", "0", str(10**12)):
            yield text[:m.start()] + value + text[m.end():]


@pytest.mark.parametrize("which", ["lenet", "legacy"])
def test_fuzzed_numbers_never_give_a_traceback(which, tmp_path, capsys):
    """summary/check/draw/time/run on each mutant: success, or one located line, exit 2."""
    from PIL import Image

    from netdef import cli

    root = pathlib.Path(__file__).resolve().parents[1]
    text = (root / "zoo_defs" / "lenet.prototxt").read_text() if which == "lenet" \
        else LEGACY_NET
    image = tmp_path / "digit.png"
    Image.new("L", (28, 28), 128).save(image)
    net = tmp_path / "mutant.prototxt"
    mutants = list(_mutations(text))
    assert len(mutants) > 20
    for mutant in mutants:
        net.write_text(mutant)
        for argv in (["summary", net], ["check", net], ["draw", net, tmp_path / "m.dot"],
                     ["time", net, "--iterations", "1"], ["run", net, image]):
            code = cli.main([str(a) for a in argv])       # anything but NetdefError escapes
            _, err = capsys.readouterr()
            assert code in (0, 1, 2), (argv[0], mutant)
            errors = [ln for ln in err.splitlines() if ln.startswith("netdef: error:")]
            if code == 2:
                assert len(errors) == 1 and "Traceback" not in err, (argv[0], err)
