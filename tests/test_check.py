"""netdef.check: every problem of a net in one run, each with its location."""
import pytest

from netdef.check import Finding, check, has_errors

# Line numbers matter: the findings point at them.
MANY = """name: "many"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } shape { dim: 2 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 0 } param { lr_mult: 0 }
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"
        batch_norm_param { use_global_stats: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" param { lr_mult: 1 } }
layer { name: "relu1" type: "Sigmoid" bottom: "conv1" top: "sig" }
layer { name: "big" type: "Pooling" bottom: "conv1" top: "big" pooling_param { kernel_size: 30 } }
layer { name: "both" type: "ReLU" bottom: "conv1" top: "both"
        include { phase: TRAIN } exclude { phase: TEST } }
layer { name: "nowhere" type: "ReLU" bottom: "conv1" top: "nowhere"
        exclude { phase: TRAIN } exclude { phase: TEST } }
layer { name: "lost" type: "ReLU" bottom: "missing" top: "lost" }
layer { name: "after_lost" type: "ReLU" bottom: "lost" top: "after_lost" }
layer { name: "ip" type: "InnerProduct" bottom: "conv1" top: "ip"
        param { lr_mult: 0 } param { lr_mult: 0 } inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
        include { phase: TEST } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def find(findings, severity, text):
    hits = [f for f in findings if f.severity == severity and text in f.message]
    assert hits, f"no {severity} containing {text!r} in:\n" + "\n".join(map(str, findings))
    return hits[0]


def test_every_problem_is_reported_with_its_location():
    found = check(MANY)
    f = find(found, "error", "both include and exclude")
    assert f.location == "<string>:12:1"
    assert find(found, "error", "not produced by any layer").location == "<string>:16:1"
    assert find(found, "error", "kernel 30x30").location == "<string>:11:1"
    assert find(found, "error", "1 param spec(s) but no parameter blobs").location == \
        "<string>:9:1"
    assert find(found, "warning", "layer name 'relu1' is used twice").location == \
        "<string>:10:1"
    f = find(found, "warning", "use_global_stats")
    assert f.location == "<string>:7:1" and f.message.endswith("[TRAIN net]")
    assert find(found, "warning", "excluded from both").location == "<string>:14:1"
    assert find(found, "warning", "top 'sig'").location == "<string>:10:1"
    assert not any("top 'big'" in f.message for f in found)   # failed: reported as error
    assert find(found, "warning", "lr_mult: 0").message.endswith("[TRAIN net]")
    # a stand-in replaces the layer with the wiring error: its readers are not blamed
    assert not any("after_lost" in f.message for f in found)
    assert has_errors(found)


def test_errors_come_first_then_file_order():
    found = check(MANY)
    severities = [f.severity for f in found]
    assert severities == sorted(severities)          # "error" < "warning"
    errors = [f for f in found if f.severity == "error"]
    assert [f.line for f in errors] == sorted(f.line for f in errors)


def test_finding_text():
    f = Finding("error", "net.prototxt:3:1", "something")
    assert str(f) == "net.prototxt:3:1: error: something"


def test_parse_errors_do_not_stop_the_check():
    # a misspelt field and a misspelt type (and an enum, and a bad size): one run
    text = ('name: "n"\n'
            'layer { name: "data" type: "Input" top: "data"\n'
            '  input_param { shape { dim: 1 dim: 3 dim: -8 dim: 8 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
            '  convolution_param { num_output: 4 kernel_sise: 3 } }\n'
            'layer { name: "r" type: "ReLUU" bottom: "c" top: "c" }\n'
            'layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAXX } }\n')
    found = check(text)
    messages = [f"{f.location} {f.message}" for f in found]
    assert all(f.severity == "error" for f in found), messages
    for where, words in [("3:39", "size -8"), ("5:37", "'kernel_sise'"),
                         ("6:19", "unknown layer type 'ReLUU'"), ("7:78", "'MAXX'")]:
        assert any(m.startswith(f"<string>:{where} ") and words in m for m in messages), \
            (where, messages)
    # a bad size does not blame the layers after it
    assert len(found) == 4, messages
    # with a good size, the layer that lost its kernel_size says why it is broken
    found = check(text.replace("-8", "8"))
    lost = [f for f in found if f.location == "<string>:4:1"]
    assert lost and all("may follow from the field skipped at line 5:37" in f.message
                        for f in lost), [str(f) for f in found]


def test_broken_nesting_stops_after_what_came_before():
    found = check('layer { name: "x" typ: "ReLU" }\nlayer { name: "y"\n')
    assert [f.location for f in found] == ["<string>:1:19", "<string>:2:7"]
    assert "never closed" in found[1].message


def test_missing_file_is_one_finding(tmp_path):
    found = check(str(tmp_path / "absent.prototxt"))
    assert len(found) == 1 and "cannot read" in found[0].message


CLEAN_DEPLOY = """
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 } }
layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" }
"""


def test_clean_net_has_no_findings():
    assert check(CLEAN_DEPLOY) == []


def test_loss_in_deploy_net():
    text = CLEAN_DEPLOY.replace('top: "data"\n', 'top: "data" top: "label"\n').replace(
        "dim: 8 } }", "dim: 8 } shape { dim: 1 } }") + \
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n'
    f = find(check(text), "warning", "loss layer 'loss'")
    assert "deploy" in f.message and f.location == "<string>:7:1"


def test_unused_top_and_final_output():
    text = CLEAN_DEPLOY + 'layer { name: "side" type: "ReLU" bottom: "data" top: "side" }\n'
    found = check(text)
    f = find(found, "warning", "top 'side'")
    assert f.message.endswith("(the net's output is 'prob')")
    assert f.location == "<string>:7:1"
    assert not any("top 'prob'" in g.message for g in found)


TRAIN_VAL = """
layer { name: "d" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 2 dim: 4 } shape { dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
        include { phase: TEST } }
"""


def test_data_layer_without_rules_among_phase_specific_layers():
    text = TRAIN_VAL.replace('type: "Input" top: "data" top: "label"\n        input_param {'
                             ' shape { dim: 2 dim: 4 } shape { dim: 2 } }',
                             'type: "DummyData" top: "data" top: "label"\n'
                             '        dummy_data_param { shape { dim: 2 dim: 4 } '
                             'shape { dim: 2 } }')
    f = find(check(text), "warning", "data layer 'd'")
    assert f.location == "<string>:2:1"


def test_single_phase():
    found = check(MANY, phase="TEST")
    assert not any("use_global_stats" in f.message for f in found)
    assert not any("[TEST net]" in f.message for f in found)


def test_unknown_shape_is_a_warning_with_the_reason():
    text = """
    layer { name: "d" type: "Data" top: "data" top: "label"
            data_param { source: "/nowhere/db" batch_size: 4 backend: LMDB } }
    layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
            inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
    """
    found = check(text)
    f = find(found, "warning", "could not be inferred")
    assert "/nowhere/db" in f.message and f.location == "<string>:2:5"
    assert len([g for g in found if "could not be inferred" in g.message]) == 1
    assert not has_errors(found)


@pytest.mark.parametrize("name", ["bvlc_alexnet/train_val.prototxt",
                                  "bvlc_googlenet/train_val.prototxt",
                                  "resnet/ResNet-50-deploy.prototxt"])
def test_published_nets_have_no_errors(shared_models, name):
    found = check(str(shared_models / name))
    assert not has_errors(found), "\n".join(map(str, found))


WIRING = """layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "a" type: "ReLU" bottom: "data" top: "x" }
layer { name: "b" type: "Sigmoid" bottom: "data" top: "x" }
layer { name: "c" type: "ReLU" bottom: "z" top: "y" }
layer { name: "d" type: "ReLU" bottom: "y" top: "z" }
layer { name: "e" type: "InnerProduct" bottom: "x" top: "e" inner_product_param { num_output: 2 } }
layer { name: "f" type: "Nonsense" bottom: "e" top: "f" }
"""


def test_all_wiring_errors_in_one_run():
    found = check(WIRING)
    assert [(f.severity, f.location) for f in found] == [
        ("error", "<string>:3:1"), ("error", "<string>:4:1"),
        ("error", "<string>:7:19")]  # an unknown type points at its `type:` field
    assert "already produced" in found[0].message
    assert "cycle" in found[1].message
    assert "unknown layer type 'Nonsense'" in found[2].message
