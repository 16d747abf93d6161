"""`netdef train`, `netdef test`, `netdef plot-log`, and an end-to-end run:
an MLP on a separable synthetic data set read through HDF5Data."""
from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from netdef.cli import main
from netdef.train.logfile import read_log

h5py = pytest.importorskip("h5py")

NET = """
name: "mlp"
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TRAIN }
  hdf5_data_param { source: "train.txt" batch_size: 32 shuffle: true } }
layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TEST }
  hdf5_data_param { source: "test.txt" batch_size: 50 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

SOLVER = """
net: "mlp.prototxt"
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "inv"
gamma: 0.0001
power: 0.75
max_iter: 150
display: 25
test_iter: 6
test_interval: 75
snapshot: 75
snapshot_prefix: "mlp"
random_seed: 1
"""


def blobs(n, rng):
    centers = np.array([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 3]], np.float32)
    label = rng.integers(0, 3, n)
    data = centers[label] + rng.standard_normal((n, 4)).astype(np.float32) * 0.7
    return data.astype(np.float32), label.astype(np.float32)


@pytest.fixture
def mlp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for name, n in (("train", 640), ("test", 300)):
        data, label = blobs(n, rng)
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f["data"], f["label"] = data, label
        (tmp_path / f"{name}.txt").write_text(f"{name}.h5\n")
    (tmp_path / "mlp.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path


def test_train_test_and_plot_end_to_end(mlp_dir, capsys):
    assert main(["train", "--solver", "solver.prototxt", "--log-file", "log.jsonl"]) == 0
    err = capsys.readouterr().err
    assert "effective batch 32 x iter_size 1 = 32" in err
    assert "Iteration 25 (" in err and "Iteration 25, lr = " in err
    assert "Iteration 75, Testing net (#0)" in err
    assert "Test net output #0: accuracy = " in err
    assert "Optimization Done." in err
    assert "last snapshot: mlp_iter_150.solverstate" in err
    for name in ("mlp_iter_75.caffemodel", "mlp_iter_150.caffemodel",
                 "mlp_iter_150.solverstate"):
        assert (mlp_dir / name).is_file()
    records = [json.loads(line) for line in (mlp_dir / "log.jsonl").read_text().splitlines()]
    train = [r for r in records if r["phase"] == "train"]
    tests = [r for r in records if r["phase"] == "test"]
    assert [r["iter"] for r in train] == [0, 25, 50, 75, 100, 125]
    assert [r["iter"] for r in tests] == [0, 75, 150]
    assert tests[-1]["losses"] == ["loss"] and tests[-1]["scores"]["accuracy"] >= 0.95
    assert train[-1]["loss"] < train[0]["loss"]

    # netdef test on the trained weights, like caffe test.
    assert main(["test", "--model", "mlp.prototxt", "--weights", "mlp_iter_150.caffemodel",
                 "--iterations", "6", "--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert report["iterations"] == 6 and report["scores"]["accuracy"] >= 0.95
    assert report["loss_weights"] == {"loss": 1.0}
    assert "Batch 5, accuracy = " in err
    assert main(["test", "--model", "mlp.prototxt", "--weights", "mlp_iter_150.caffemodel",
                 "--iterations", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Loss: ") and lines[1].startswith("accuracy = ")
    assert lines[2].startswith("loss = ") and "(* 1 = " in lines[2]

    assert main(["plot-log", "log.jsonl", "curves.png"]) == 0
    assert (mlp_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "test #0 accuracy" in capsys.readouterr().err


def test_fine_tune_from_weights_and_resume_from_snapshot(mlp_dir, capsys):
    text = SOLVER.replace("max_iter: 150", "max_iter: 20").replace("snapshot: 75",
                                                                   "snapshot: 10")
    text = text.replace("test_interval: 75", "test_interval: 100").replace("display: 25",
                                                                           "display: 5")
    (mlp_dir / "solver.prototxt").write_text(text)
    assert main(["train", "--solver", "solver.prototxt", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "Iteration" not in err and "last snapshot: mlp_iter_20.solverstate" in err
    final = (mlp_dir / "mlp_iter_20.caffemodel").read_bytes()
    # Resuming from iteration 10 ends on the same weights, bit for bit.
    (mlp_dir / "mlp_iter_20.caffemodel").unlink()
    assert main(["train", "--solver", "solver.prototxt", "--snapshot",
                 "mlp_iter_10.solverstate", "--log-file", "resume.csv"]) == 0
    err = capsys.readouterr().err
    assert "Restored iteration 10 from mlp_iter_10.solverstate" in err
    assert (mlp_dir / "mlp_iter_20.caffemodel").read_bytes() == final
    rows = list(csv.DictReader((mlp_dir / "resume.csv").read_text().splitlines()))
    assert rows and set(rows[0]) == {"iteration", "seconds", "phase", "net", "name", "kind",
                                     "value"}
    assert {r["name"] for r in rows if r["phase"] == "train"} >= {"loss", "lr", "raw_loss"}
    # Fine-tuning: the weights are copied by layer name.
    assert main(["train", "--solver", "solver.prototxt", "--weights",
                 "mlp_iter_10.caffemodel"]) == 0
    assert "Finetuning from mlp_iter_10.caffemodel" in capsys.readouterr().err
    # A caffemodel given as --snapshot is refused with the hint.
    assert main(["train", "--solver", "solver.prototxt", "--snapshot",
                 "mlp_iter_10.caffemodel"]) == 2
    err = capsys.readouterr().err
    assert "netdef: error:" in err and "--weights" in err and "Traceback" not in err


def test_cli_errors_are_one_line(mlp_dir, capsys):
    (mlp_dir / "bad.prototxt").write_text('net: "mlp.prototxt"\nlr_policy: "stpe"\n')
    assert main(["train", "--solver", "bad.prototxt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("netdef: error: bad.prototxt:2:1: unknown lr_policy 'stpe'")
    assert "did you mean 'step'?" in err[-1]
    (mlp_dir / "deploy.prototxt").write_text(
        'name: "d" input: "data" input_shape { dim: 1 dim: 4 }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        'inner_product_param { num_output: 2 } }\n')
    assert main(["test", "--model", "deploy.prototxt", "--weights", "none.caffemodel"]) == 2
    assert main(["train", "--solver", "missing.prototxt"]) == 2
    assert "missing.prototxt" in capsys.readouterr().err
    (mlp_dir / "w.caffemodel").write_bytes(b"")
    assert main(["test", "--model", "mlp.prototxt", "--weights", "mlp.prototxt",
                 "--iterations", "0"]) == 2


def test_test_refuses_input_nets(mlp_dir, capsys):
    from netdef.net import Net

    (mlp_dir / "deploy.prototxt").write_text(
        'name: "d" input: "data" input_shape { dim: 1 dim: 4 }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
        'inner_product_param { num_output: 2 } }\n')
    Net("deploy.prototxt").save("d.caffemodel")
    assert main(["test", "--model", "deploy.prototxt", "--weights", "d.caffemodel"]) == 2
    assert "Input blobs (data)" in capsys.readouterr().err


def test_plot_log_reads_csv_and_text_logs(mlp_dir, capsys):
    (mlp_dir / "log.csv").write_text(
        "iteration,seconds,phase,net,name,kind,value\n"
        "0,0.1,train,,loss,loss,2.0\n0,0.1,train,,lr,lr,0.1\n"
        "10,0.2,train,,loss,loss,1.0\n10,0.2,test,0,accuracy,score,0.9\n"
        "10,0.2,test,0,loss,loss,1.1\n")
    log = read_log(mlp_dir / "log.csv")
    assert log["train_loss"] == [(0, 2.0), (10, 1.0)] and log["lr"] == [(0, 0.1)]
    assert log["test"][(0, "accuracy")] == [(10, 0.9)] and (0, "loss") in log["test_losses"]
    (mlp_dir / "caffe.log").write_text(
        "I0101 solver.cpp:228] Iteration 0 (0 iter/s, 0.1s/100 iters), loss = 2.3\n"
        "I0101 sgd_solver.cpp:106] Iteration 0, lr = 0.01\n"
        "I0101 solver.cpp:330] Iteration 100, Testing net (#0)\n"
        "I0101 solver.cpp:397]     Test net output #0: accuracy = 0.8\n"
        "I0101 solver.cpp:397]     Test net output #1: loss = 0.6 (* 1 = 0.6 loss)\n"
        "I0101 solver.cpp:228] Iteration 100 (10 iter/s, 10s/100 iters), loss = 0.5\n")
    log = read_log(mlp_dir / "caffe.log")
    assert log["train_loss"] == [(0, 2.3), (100, 0.5)]
    assert log["test"][(0, "accuracy")] == [(100, 0.8)] and (0, "loss") in log["test_losses"]
    assert main(["plot-log", "caffe.log", "c.svg"]) == 0
    assert (mlp_dir / "c.svg").is_file()
    (mlp_dir / "empty.log").write_text("nothing here\n")
    assert main(["plot-log", "empty.log", "x.png"]) == 2
    assert "no training records" in capsys.readouterr().err


def test_plot_log_without_matplotlib_says_how_to_install(mlp_dir, capsys, monkeypatch):
    (mlp_dir / "log.jsonl").write_text('{"phase": "train", "iter": 0, "loss": 1.0}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot-log", "log.jsonl", "x.png"]) == 2
    assert "netdef[plot]" in capsys.readouterr().err
