"""netdef.draw: DOT text (boxes, merged in-place layers, shape edges, clusters)
and rendering through Graphviz's ``dot`` (skipped where it is not installed)."""
import re
import shutil

import pytest
from conftest import shared_prototxts, zoo_prototxts

from netdef.draw import INSTALL_HINT, STYLES, draw, group_path, to_dot
from netdef.errors import NetdefError

INCEPTION = """
name: "mini_inception"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "inc/1x1" type: "Convolution" bottom: "conv1" top: "inc/1x1"
        convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "inc/relu_1x1" type: "ReLU" bottom: "inc/1x1" top: "inc/1x1" }
layer { name: "inc/3x3" type: "Convolution" bottom: "conv1" top: "inc/3x3"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 1 } }
layer { name: "inc/pool" type: "Pooling" bottom: "conv1" top: "inc/pool"
        pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "inc/output" type: "Concat" bottom: "inc/1x1" bottom: "inc/3x3"
        bottom: "inc/pool" top: "inc/output" }
layer { name: "prob" type: "Softmax" bottom: "inc/output" top: "prob" }
"""

RESNET = """
name: "mini_resnet"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn_conv1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale_conv1" type: "Scale" bottom: "conv1" top: "conv1"
        scale_param { bias_term: true } }
layer { name: "conv1_relu" type: "ReLU" bottom: "conv1" top: "conv1" }
""" + "".join(f"""
layer {{ name: "res2{b}_branch2a" type: "Convolution" bottom: "{src}" top: "res2{b}_branch2a"
        convolution_param {{ num_output: 8 kernel_size: 1 bias_term: false }} }}
layer {{ name: "bn2{b}_branch2a" type: "BatchNorm" bottom: "res2{b}_branch2a"
        top: "res2{b}_branch2a" }}
layer {{ name: "scale2{b}_branch2a" type: "Scale" bottom: "res2{b}_branch2a"
        top: "res2{b}_branch2a" scale_param {{ bias_term: true }} }}
layer {{ name: "res2{b}_branch2a_relu" type: "ReLU" bottom: "res2{b}_branch2a"
        top: "res2{b}_branch2a" }}
layer {{ name: "res2{b}" type: "Eltwise" bottom: "{src}" bottom: "res2{b}_branch2a"
        top: "res2{b}" }}
layer {{ name: "res2{b}_relu" type: "ReLU" bottom: "res2{b}" top: "res2{b}" }}
""" for b, src in (("a", "conv1"), ("b", "res2a")))


def node_ids(dot: str) -> dict[str, str]:
    """layer name -> id of the box whose label shows it."""
    found = {}
    for m in re.finditer(r'^\s*(n\d+) \[label=<.*>, tooltip="(.*)"\];$', dot, re.M):
        for name in m.group(2).split(" + "):
            found[name] = m.group(1)
    return found


def edges(dot: str) -> list[tuple[str, str, str]]:
    return re.findall(r"^\s*(\w+) -> (\w+) \[label=\"(.*?)\"\];$", dot, re.M)


def test_in_place_layers_share_the_producer_box():
    dot = to_dot(INCEPTION)
    ids = node_ids(dot)
    assert ids["relu1"] == ids["conv1"]
    assert ids["inc/relu_1x1"] == ids["inc/1x1"]
    assert len(set(ids.values())) == 7        # 9 layers, 2 merged in place


def test_edges_carry_shapes():
    dot = to_dot(INCEPTION)
    ids = node_ids(dot)
    e = edges(dot)
    assert (ids["data"], ids["conv1"], "1×3×8×8") in e
    assert (ids["conv1"], ids["inc/3x3"], "1×8×8×8") in e
    assert (ids["inc/output"], ids["prob"], "1×18×8×8") in e
    # the net's output gets an oval, reached by an edge with its shape
    assert re.search(r'out0 \[label="prob"', dot)
    assert (ids["prob"], "out0", "1×18×8×8") in e


def test_labels_show_key_params_counts_and_colour():
    dot = to_dot(INCEPTION)
    assert "8 out · 3×3 · p1" in dot
    assert "MAX · 3×3 · p1" in dot
    assert "224 params" in dot                # conv1: 8*3*9 + 8
    assert "13.8 K MACs" in dot               # conv1: 8*8*8 * 27
    kinds = set(re.findall(r'BGCOLOR="(#[0-9A-F]+)"', dot))
    assert len(kinds) >= 4                    # data, conv, activation, pool ... differ
    assert set(kinds) <= set(STYLES.values())
    assert "lr " not in dot
    assert "lr 1/2 · decay 1/0" in to_dot(INCEPTION, display_lr=True)


def test_inception_cluster():
    dot = to_dot(INCEPTION)
    ids = node_ids(dot)
    body = re.search(r'subgraph "cluster_inc" \{(.*?)\n  \}', dot, re.S).group(1)
    for layer in ("inc/1x1", "inc/3x3", "inc/pool", "inc/output"):
        assert f"{ids[layer]} [label=" in body
    assert f"{ids['conv1']} [label=" not in body


def test_resnet_block_and_stage_clusters():
    dot = to_dot(RESNET)
    ids = node_ids(dot)
    # conv + bn + scale + relu stacked in one box
    assert ids["conv1"] == ids["bn_conv1"] == ids["scale_conv1"] == ids["conv1_relu"]
    assert ids["res2a"] == ids["res2a_relu"]
    assert 'subgraph "cluster_res2" {' in dot
    block = re.search(r'subgraph "cluster_res2a" \{(.*?)\n    \}', dot, re.S).group(1)
    assert f"{ids['res2a_branch2a']} [label=" in block and f"{ids['res2a']} [label=" in block
    assert f"{ids['res2b']} [label=" not in block
    assert 'subgraph "cluster_res2b" {' in dot


def test_group_path():
    assert group_path("fire2/squeeze1x1") == ("fire2",)
    assert group_path("a/b/c") == ("a", "a/b")
    assert group_path("scale3b_branch2c") == ("res3", "res3b")
    assert group_path("res4b22_relu") == ("res4", "res4b22")
    assert group_path("bn_conv1") == ()
    assert group_path("fc1000") == ()


def test_value_read_before_in_place_change_is_not_merged():
    text = INCEPTION.replace(
        'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }',
        'layer { name: "peek" type: "Pooling" bottom: "conv1" top: "peek"\n'
        '        pooling_param { pool: AVE global_pooling: true } }\n'
        'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }')
    ids = node_ids(to_dot(text))
    assert ids["relu1"] != ids["conv1"]
    assert "AVE global" in to_dot(text)


def test_rankdir_and_bad_rankdir():
    assert "rankdir=LR" in to_dot(INCEPTION, rankdir="LR")
    with pytest.raises(NetdefError, match="rankdir"):
        to_dot(INCEPTION, rankdir="XY")


def test_dot_file_needs_no_graphviz(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    out = tmp_path / "net.dot"
    assert draw(INCEPTION, out) == "dot"
    assert out.read_text(encoding="utf-8").startswith("digraph netdef {")


def test_missing_dot_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(NetdefError) as err:
        draw(INCEPTION, tmp_path / "net.png")
    assert str(err.value) == INSTALL_HINT
    assert "\n" not in str(err.value)
    assert not (tmp_path / "net.png").exists()


def test_unknown_extension(tmp_path):
    with pytest.raises(NetdefError, match="format"):
        draw(INCEPTION, tmp_path / "net.jpeg")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_render_svg(tmp_path):
    out = tmp_path / "net.svg"
    draw(RESNET, out, rankdir="LR")
    svg = out.read_text(encoding="utf-8")
    assert "<svg" in svg and "res2a_branch2a" in svg


@pytest.mark.parametrize("path", zoo_prototxts(), ids=lambda p: p.name)
def test_dot_for_zoo(path, tmp_path):
    out = tmp_path / "net.dot"
    draw(str(path), out)
    assert out.stat().st_size > 100


# Upgrade-test fixtures that are not meant to be valid nets, and nets whose
# TEST net needs a stage (as their solver sets it).
BROKEN = {"NetUpgradeTest.TestAllParams.expected_output_proto.prototxt",
          "NetUpgradeTest.TestAllParams.input_proto.prototxt"}
STATE = {"mnist_autoencoder.prototxt": {"stages": ["test-on-test"]}}


@pytest.mark.parametrize("path", shared_prototxts(), ids=lambda p: p.parent.name + "/" + p.name)
def test_dot_for_shared_models(shared_models, path, tmp_path):
    out = tmp_path / "net.dot"
    if path.name in BROKEN:
        with pytest.raises(NetdefError):
            draw(str(path), out)
        return
    draw(str(path), out, **STATE.get(path.name, {}))
    assert out.stat().st_size > 100
