"""netdef.cli: every subcommand through main([...]); exit codes, stdout vs stderr."""
import json
import subprocess
import sys

import pytest

from netdef import cli
from netdef.cli import COMMANDS, main

DEPLOY = """name: "tiny"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "prob" type: "Softmax" bottom: "conv1" top: "prob" }
"""

TRAIN_VAL = """name: "tiny_tv"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 4 dim: 3 dim: 8 dim: 8 } shape { dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
        param { lr_mult: 1 } param { lr_mult: 2 }
        inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""

V1 = """name: "old"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
         convolution_param { num_output: 4 kernel_size: 3 } }
"""

BROKEN = """name: "broken"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "relu" type: "ReLU" bottom: "dta" top: "relu" }
"""


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, text in (("deploy", DEPLOY), ("train_val", TRAIN_VAL), ("v1", V1),
                       ("broken", BROKEN)):
        paths[name] = tmp_path / f"{name}.prototxt"
        paths[name].write_text(text, encoding="utf-8")
    paths["dir"] = tmp_path
    return paths


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_table_to_stdout(files, capsys):
    code, out, err = run(capsys, "summary", files["deploy"])
    assert code == 0 and err == ""
    assert "conv1 (Convolution)" in out and "Total params: 112" in out


def test_summary_json_and_options(files, capsys):
    code, out, _ = run(capsys, "summary", files["deploy"], "--json",
                       "--input-shape", "data=2,3,8,8", "--phase", "train")
    assert code == 0
    data = json.loads(out)
    assert data["phase"] == "TRAIN" and data["total_params"] == 112
    assert data["layers"][-1]["top_shapes"] == [[2, 4, 6, 6]]


def test_bad_input_shape_is_a_usage_error(files, capsys):
    code, out, err = run(capsys, "summary", files["deploy"], "--input-shape", "data=1,x")
    assert code == 2 and out == "" and "NAME=N,C,H,W" in err


def test_netdef_error_is_one_line_exit_2(files, capsys):
    code, out, err = run(capsys, "summary", files["broken"])
    assert code == 2 and out == ""
    assert err.startswith("netdef: error: ") and err.count("\n") == 1
    assert "broken.prototxt:4:1" in err and "did you mean 'data'?" in err


def test_missing_file(files, capsys):
    code, _, err = run(capsys, "summary", files["dir"] / "absent.prototxt")
    assert code == 2 and err.startswith("netdef: error: ") and err.count("\n") == 1


def test_debug_shows_traceback(files, capsys):
    code, _, err = run(capsys, "--debug", "summary", files["broken"])
    assert code == 2 and "Traceback" in err and "GraphError" in err
    code, _, err = run(capsys, "summary", files["broken"], "--debug")
    assert code == 2 and "Traceback" in err


def test_help_everywhere(capsys):
    assert main(["--help"]) == 0
    assert "summary" in capsys.readouterr().out
    for name in COMMANDS:
        assert main([name, "--help"]) == 0
        assert "usage: netdef " + name in capsys.readouterr().out


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["summary"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_draw_dot(files, capsys):
    out_path = files["dir"] / "net.dot"
    code, out, err = run(capsys, "draw", files["deploy"], out_path, "--rankdir", "LR",
                         "--display-lr")
    assert code == 0 and out == "" and "wrote" in err
    assert "rankdir=LR" in out_path.read_text(encoding="utf-8")


def test_draw_without_graphviz_is_one_line(files, capsys, monkeypatch):
    monkeypatch.setenv("PATH", "")
    code, _, err = run(capsys, "draw", files["deploy"], files["dir"] / "net.png")
    assert code == 2 and err.count("\n") == 1 and "apt-get install graphviz" in err


def test_check_clean_and_with_errors(files, capsys):
    code, out, err = run(capsys, "check", files["deploy"])
    assert code == 0 and out == "" and "0 error(s), 0 warning(s)" in err
    code, out, err = run(capsys, "check", files["broken"])
    assert code == 1
    assert out.startswith(f"{files['broken']}:4:1: error: ")
    assert "1 error(s)" in err


def test_check_warnings_only_exit_0(files, capsys):
    text = DEPLOY + 'layer { name: "side" type: "ReLU" bottom: "data" top: "side" }\n'
    (files["dir"] / "warn.prototxt").write_text(text, encoding="utf-8")
    code, out, _ = run(capsys, "check", files["dir"] / "warn.prototxt")
    assert code == 0 and ": warning: top 'side'" in out


def test_upgrade(files, capsys):
    new = files["dir"] / "new.prototxt"
    code, out, err = run(capsys, "upgrade", files["v1"], new)
    assert code == 0 and out == "" and err
    text = new.read_text(encoding="utf-8")
    assert 'type: "Convolution"' in text and 'type: "Input"' in text


def test_deploy(files, capsys):
    new = files["dir"] / "deploy_out.prototxt"
    code, out, err = run(capsys, "deploy", files["train_val"], new, "--batch", "1")
    assert code == 0 and out == "" and "wrote" in err
    text = new.read_text(encoding="utf-8")
    assert 'type: "Input"' in text and 'name: "prob"' in text and "lr_mult" not in text
    assert "dim: 1\n" in text


def test_keyboard_interrupt_and_broken_pipe(files, capsys, monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    def broken(args):
        raise BrokenPipeError

    monkeypatch.setitem(COMMANDS, "summary", (cli.setup_summary, interrupted))
    assert main(["summary", str(files["deploy"])]) == 130
    monkeypatch.setitem(COMMANDS, "summary", (cli.setup_summary, broken))
    monkeypatch.setattr(cli.os, "dup2", lambda *a: None)   # keep pytest's own stdout
    assert main(["summary", str(files["deploy"])]) == 141
    assert "Traceback" not in capsys.readouterr().err


def test_python_dash_m_entry_point(files):
    done = subprocess.run([sys.executable, "-m", "netdef", "summary", str(files["deploy"])],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "Total params: 112" in done.stdout


def test_missing_net_file_has_no_api_hint(files, capsys):
    code, _, err = run(capsys, "summary", files["dir"] / "absent.prototxt")
    assert code == 2 and "absent.prototxt" in err and "taken as a file name" not in err


def test_draw_into_a_missing_folder_names_the_folder(files, capsys):
    target = files["dir"] / "no" / "such" / "net.dot"
    code, _, err = run(capsys, "draw", files["deploy"], target)
    assert code == 2 and err.count("\n") == 1
    assert f"folder '{target.parent}' does not exist" in err and ".tmp" not in err


def test_time_refuses_a_net_that_cannot_fit(files, capsys, monkeypatch):
    monkeypatch.setenv("NETDEF_MEMORY_LIMIT", "1000")     # bytes: the params fit, not the rest
    code, out, err = run(capsys, "time", files["deploy"], "--iterations", "1")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"{files['deploy']}:2:1: net 'tiny' with these input shapes needs" in err
    assert "of memory" in err and "but only 1000 B is available" in err
    assert "inputs: 'data' (1, 3, 8, 8)" in err


def test_time_batch_must_be_positive(files, capsys):
    code, _, err = run(capsys, "time", files["deploy"], "--batch", "-1")
    assert code == 2 and "--batch must be at least 1" in err and "Traceback" not in err


def test_time_runs_with_a_bar_only_on_a_terminal(files, capsys):
    code, out, err = run(capsys, "time", files["deploy"], "--iterations", "3")
    assert code == 0 and "total" in out and "mean of 3 forward passes" in out
    assert "time:" not in err and "\r" not in err          # stderr is not a terminal


def test_warmup_with_a_warm_cache_says_loaded_not_compiling(capsys, monkeypatch):
    from netdef import kernels

    monkeypatch.setattr(kernels, "ALL_KERNELS", [("elementwise", "relu"),
                                                 ("softmax", "softmax")])
    assert main(["warmup"]) == 0
    capsys.readouterr()
    assert main(["warmup"]) == 0          # both now in memory (and in the cache)
    out, err = capsys.readouterr()
    assert "compiling" not in err and "compiling" not in out
    assert out.startswith("2 kernels ready in ") and "0 compiled, 2 loaded from the cache" in out


def test_time_a_training_net_reports_backward_per_layer(files, capsys):
    code, out, err = run(capsys, "time", files["train_val"], "--phase", "TRAIN",
                         "--iterations", "2", "--batch", "3", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["batch"] == 3 and report["backward_ms"] > 0
    rows = {r["name"]: r for r in report["layers"]}
    assert rows["fc"]["backward_ms"] > 0 and "backward_ms" in rows["data"]
    code, out, _ = run(capsys, "time", files["train_val"], "--phase", "TRAIN",
                       "--iterations", "2")
    assert "backward" in out.splitlines()[0] and "forward-backward" in out


@pytest.mark.parametrize("value", ["data=0,3,8,8", "data=1,-3,8,8", "data=1,3,8,4294967296",
                                   "data=", "=1,2", "data=a,b"])
def test_input_shape_sizes_are_validated(files, capsys, value):
    code, out, err = run(capsys, "summary", files["deploy"], "--input-shape", value)
    assert code == 2 and out == ""
    assert "expected NAME=N,C,H,W with positive integers" in err
