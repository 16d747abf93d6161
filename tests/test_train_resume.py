"""Snapshots, exact resume, refused states, signals and faults during training."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from netdef.errors import NetdefError
from netdef.frontend.schema import pb
from netdef.io.caffemodel import read_caffemodel
from netdef.train import StateError, TrainingError, get_solver
from netdef.train import state as state_io

# Random data (DummyData) and a Dropout mask: the resumed run must repeat
# both streams exactly.
NET = """
name: "rnd"
layer { name: "data" type: "DummyData" top: "x" top: "y"
  dummy_data_param { shape { dim: 6 dim: 4 } shape { dim: 6 dim: 2 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "uniform" min: -1 max: 1 } } }
layer { name: "fc1" type: "InnerProduct" bottom: "x" top: "h"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "h" top: "h" }
layer { name: "drop" type: "Dropout" bottom: "h" top: "h" dropout_param { dropout_ratio: 0.3 } }
layer { name: "fc2" type: "InnerProduct" bottom: "h" top: "p"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def quiet(_line):
    pass


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(NET)
    return tmp_path


def write_solver(folder, name="solver.prototxt", **fields):
    body = {"net": '"net.prototxt"', "type": '"SGD"', "base_lr": 0.05, "momentum": 0.9,
            "lr_policy": '"multistep"', "gamma": 0.5, "max_iter": 8, "test_iter": 2,
            "test_interval": 3, "random_seed": 7, "snapshot_prefix": '"snap"'}
    body.update(fields)
    text = "".join(f"{k}: {v}\n" for k, v in body.items() if v is not None)
    text += "stepvalue: 3\nstepvalue: 6\n"
    path = folder / name
    path.write_text(text)
    return str(path)


def weights(solver):
    return [info.blob.data.copy() for info in solver.params]


@pytest.mark.parametrize("kind", ["SGD", "Adam", "AdaDelta", "Nesterov"])
def test_resume_is_bit_identical(run_dir, kind):
    path = write_solver(run_dir, type=f'"{kind}"', base_lr=1.0 if kind == "AdaDelta" else 0.05,
                        momentum=0.95 if kind == "AdaDelta" else 0.9)
    whole = get_solver(path, log=quiet)
    whole.step(8)
    first = get_solver(path, log=quiet)
    first.step(4)
    model, state = first.snapshot()
    assert (model, state) == ("snap_iter_4.caffemodel", "snap_iter_4.solverstate")
    resumed = get_solver(path, log=quiet)
    resumed.restore(state)
    assert resumed.iter == 4 and resumed.current_step == 1
    resumed.step(4)
    for a, b in zip(weights(whole), weights(resumed)):
        assert np.array_equal(a, b)
    assert [h.tobytes() for h in whole.history] == [h.tobytes() for h in resumed.history]


def test_solve_resume_continues_to_max_iter_and_matches(run_dir):
    path = write_solver(run_dir, snapshot=4, max_iter=8)
    whole = get_solver(path, log=quiet)
    whole.solve()
    reference = weights(whole)
    for name in ("snap_iter_4.caffemodel", "snap_iter_4.solverstate",
                 "snap_iter_8.caffemodel", "snap_iter_8.solverstate"):
        assert (run_dir / name).is_file(), name
    again = get_solver(path, log=quiet)
    again.solve(resume="snap_iter_4.solverstate")
    assert again.iter == 8
    for a, b in zip(reference, weights(again)):
        assert np.array_equal(a, b)
    # Only the expected snapshot files, no temporaries left behind.
    assert sorted(p.name for p in run_dir.iterdir() if "snap" in p.name) == [
        "snap_iter_4.caffemodel", "snap_iter_4.solverstate",
        "snap_iter_8.caffemodel", "snap_iter_8.solverstate"]


def test_snapshot_files_are_caffe_messages(run_dir):
    solver = get_solver(write_solver(run_dir, type='"Adam"'), log=quiet)
    solver.step(2)
    model, path = solver.snapshot()
    layers = {lb.name: lb.blobs for lb in read_caffemodel(model)}
    assert np.array_equal(layers["fc1"][0], solver.net.params["fc1"][0].data)
    state, record = state_io.read_state(path)
    assert state.iter == 2 and state.learned_net == model and state.current_step == 0
    assert len(state.history) == 2 * len(solver.params) == 8
    assert record["solver"] == "Adam" and "drop" in record["layers"]["train"]
    # What Caffe reads: the plain message parses (netdef's field is skipped).
    plain = pb.SolverState.FromString(open(path, "rb").read())
    assert plain.iter == 2 and len(plain.history) == 8
    assert list(plain.history[0].shape.dim) == [5, 4]


def test_caffe_written_state_without_record_restores(run_dir):
    path = write_solver(run_dir)
    first = get_solver(path, log=quiet)
    first.step(3)
    _, state_path = first.snapshot()
    state, _ = state_io.read_state(state_path)
    caffe_style = run_dir / "caffe.solverstate"
    caffe_style.write_bytes(state.SerializeToString())
    lines = []
    other = get_solver(path, log=lines.append)
    other.restore(str(caffe_style))
    assert other.iter == 3
    for a, b in zip(weights(first), weights(other)):
        assert np.array_equal(a, b)
    assert any("no random state for layer(s) data, drop" in line for line in lines)


def test_learned_net_found_beside_a_moved_state(run_dir):
    solver = get_solver(write_solver(run_dir), log=quiet)
    solver.step(2)
    solver.snapshot()
    moved = run_dir / "moved"
    moved.mkdir()
    for name in ("snap_iter_2.caffemodel", "snap_iter_2.solverstate"):
        os.replace(run_dir / name, moved / name)
    other = get_solver(write_solver(run_dir), log=quiet)
    other.restore(str(moved / "snap_iter_2.solverstate"))
    for a, b in zip(weights(solver), weights(other)):
        assert np.array_equal(a, b)
    os.remove(moved / "snap_iter_2.caffemodel")
    with pytest.raises(StateError, match="'snap_iter_2.caffemodel', do not exist"):
        other.restore(str(moved / "snap_iter_2.solverstate"))


# ------------------------------------------------------------ refused states ----
@pytest.fixture
def snapshot(run_dir):
    solver = get_solver(write_solver(run_dir), log=quiet)
    solver.step(2)
    return solver.snapshot()


def test_caffemodel_as_state_is_refused_with_a_hint(run_dir, snapshot):
    model, _ = snapshot
    solver = get_solver(write_solver(run_dir), log=quiet)
    with pytest.raises(StateError, match="not a solver state.*--weights"):
        solver.restore(model)
    renamed = run_dir / "weights.bin"
    renamed.write_bytes(open(model, "rb").read())
    with pytest.raises(StateError, match="--weights"):
        solver.restore(str(renamed))
    assert solver.iter == 0


@pytest.mark.parametrize("cut", [0.5, 0.99, 10])
def test_truncated_state_is_refused(run_dir, snapshot, cut):
    _, path = snapshot
    data = open(path, "rb").read()
    size = int(len(data) * cut) if cut < 1 else cut
    broken = run_dir / "broken.solverstate"
    broken.write_bytes(data[:size])
    solver = get_solver(write_solver(run_dir), log=quiet)
    before = weights(solver)
    with pytest.raises(StateError, match="truncated"):
        solver.restore(str(broken))
    assert solver.iter == 0
    for a, b in zip(before, weights(solver)):
        assert np.array_equal(a, b)


def test_damaged_or_foreign_state_is_refused(run_dir, snapshot):
    _, path = snapshot
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 0xFF
    damaged = run_dir / "damaged.solverstate"
    damaged.write_bytes(bytes(data))
    solver = get_solver(write_solver(run_dir), log=quiet)
    with pytest.raises(StateError, match="checksum"):
        solver.restore(str(damaged))
    junk = run_dir / "junk.solverstate"
    junk.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)))
    with pytest.raises(StateError, match="not a solver state"):
        solver.restore(str(junk))
    text = run_dir / "text.solverstate"
    text.write_text('net: "x.prototxt"\n')
    with pytest.raises(StateError, match="text file"):
        solver.restore(str(text))
    empty = run_dir / "empty.solverstate"
    empty.write_bytes(b"")
    with pytest.raises(StateError, match="empty"):
        solver.restore(str(empty))
    with pytest.raises(StateError, match="cannot read"):
        solver.restore(str(run_dir / "missing.solverstate"))


def test_state_of_another_solver_type_is_refused(run_dir, snapshot):
    _, path = snapshot                               # written by SGD: 1 history blob/param
    adam = get_solver(write_solver(run_dir, name="adam.prototxt", type='"Adam"'), log=quiet)
    with pytest.raises(StateError, match="written by a SGD solver; this is a Adam"):
        adam.restore(path)
    state, _ = state_io.read_state(path)
    caffe_style = run_dir / "caffe.solverstate"
    caffe_style.write_bytes(state.SerializeToString())
    with pytest.raises(StateError, match="holds 4 history blobs.*needs 8 .2 per parameter"):
        adam.restore(str(caffe_style))
    nesterov = get_solver(write_solver(run_dir, name="n.prototxt", type='"Nesterov"'),
                          log=quiet)
    with pytest.raises(StateError, match="SGD solver"):
        nesterov.restore(path)


def test_state_of_another_net_is_refused(run_dir, snapshot):
    _, path = snapshot
    (run_dir / "wide.prototxt").write_text(NET.replace("num_output: 5", "num_output: 6"))
    wide = get_solver(write_solver(run_dir, name="w.prototxt", net='"wide.prototxt"'),
                      log=quiet)
    with pytest.raises(StateError, match=r"history blob 0 has shape \(5, 4\).*'fc1' has "
                                         r"shape \(6, 4\)"):
        wide.restore(path)


# --------------------------------------------------------------- divergence ----
def test_nan_loss_stops_and_keeps_the_last_snapshot(run_dir):
    (run_dir / "input.prototxt").write_text("""
name: "in"
layer { name: "data" type: "Input" top: "x" top: "y"
  input_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "p"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "exp" type: "Exp" bottom: "p" top: "q" }
layer { name: "loss" type: "EuclideanLoss" bottom: "q" bottom: "y" top: "loss" }
""")
    path = write_solver(run_dir, net='"input.prototxt"', test_iter=None, test_interval=None,
                        snapshot=2, max_iter=10)
    solver = get_solver(path, log=quiet)
    solver.net.blobs["x"].data[...] = 0.1

    def blow_up(event):
        if event["event"] == "iteration" and event["iter"] == 3:
            solver.net.blobs["x"].data[...] = 1e4        # exp overflows to inf
    solver.add_callback(blow_up)
    with pytest.raises(TrainingError) as info:
        solver.solve()
    text = str(info.value)
    assert "iteration 3: the loss is inf" in text or "iteration 3: the loss is nan" in text
    assert "first layer whose output is not finite is 'exp' (Exp)" in text
    assert "snap_iter_2.solverstate, is intact" in text
    assert solver.iter == 3
    names = sorted(p.name for p in run_dir.iterdir() if "snap" in p.name)
    assert names == ["snap_iter_2.caffemodel", "snap_iter_2.solverstate"]
    state, _ = state_io.read_state(run_dir / "snap_iter_2.solverstate")
    assert state.iter == 2


def test_non_finite_weights_are_never_snapshotted(run_dir):
    solver = get_solver(write_solver(run_dir), log=quiet)
    solver.step(1)
    solver.snapshot()
    solver.net.params["fc2"][0].data[0, 0] = np.nan
    solver.iter = 5
    with pytest.raises(TrainingError, match="parameter 0 of layer 'fc2' holds NaN.*"
                                            "snap_iter_1.solverstate, is kept"):
        solver.snapshot()
    assert not (run_dir / "snap_iter_5.caffemodel").exists()


def test_corrupt_record_mid_run_stops_with_a_snapshot(run_dir):
    from netdef.errors import DataError

    lines = []
    solver = get_solver(write_solver(run_dir, max_iter=20, test_iter=None,
                                     test_interval=None), log=lines.append)
    data = solver.net.layers[0]
    forward = data.forward

    def failing(bottoms, tops):
        if solver.iter == 5:
            raise DataError("layer 'data': record '00000042' is corrupt", key="00000042")
        forward(bottoms, tops)
    data.forward = failing
    with pytest.raises(DataError, match="00000042"):
        solver.solve()
    assert (run_dir / "snap_iter_5.solverstate").is_file()
    assert any("resume with --snapshot snap_iter_5.solverstate" in line for line in lines)
    again = get_solver(write_solver(run_dir, max_iter=20, test_iter=None, test_interval=None),
                       log=quiet)
    again.restore("snap_iter_5.solverstate")
    for a, b in zip(weights(solver), weights(again)):
        assert np.array_equal(a, b)


# --------------------------------------------------- interrupted snapshot writes ----
def test_writer_dying_mid_write_leaves_the_final_name_alone(run_dir, monkeypatch):
    solver = get_solver(write_solver(run_dir), log=quiet)
    solver.step(2)
    solver.snapshot()
    old = open("snap_iter_2.solverstate", "rb").read()
    real_open = state_io.atomic_open

    class Dies(Exception):
        pass

    def dying_open(path, mode="wb"):
        ctx = real_open(path, mode)

        class Wrapper:
            def __enter__(self):
                self.f = ctx.__enter__()
                return self

            def write(self, data):
                self.f.write(data[:len(data) // 2])
                raise Dies

            def __exit__(self, *exc):
                return ctx.__exit__(*exc)
        return Wrapper()

    monkeypatch.setattr(state_io, "atomic_open", dying_open)
    with pytest.raises(Dies):
        solver.snapshot()
    assert open("snap_iter_2.solverstate", "rb").read() == old
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("victim", ["netdef.train.state", "netdef.io.caffemodel"])
def test_kill_9_during_a_snapshot_write(run_dir, victim):
    path = write_solver(run_dir)
    first = get_solver(path, log=quiet)
    first.step(2)
    first.snapshot()
    first.step(2)                                    # iter 4 ...
    first.snapshot()                                 # ... and good files for it
    good = {name: open(name, "rb").read() for name in
            ("snap_iter_4.caffemodel", "snap_iter_4.solverstate")}
    script = textwrap.dedent(f"""
        import importlib, os, signal
        import netdef.train.state, netdef.io.caffemodel
        from netdef.train import get_solver
        module = importlib.import_module({victim!r})
        real = module.atomic_open
        class Killer:
            def __init__(self, path, mode="wb"):
                self.ctx = real(path, mode)
            def __enter__(self):
                self.f = self.ctx.__enter__()
                return self
            def write(self, data):
                self.f.write(bytes(data)[:max(1, len(data) // 2)])
                self.f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            def __exit__(self, *exc):
                return self.ctx.__exit__(*exc)
        module.atomic_open = Killer
        solver = get_solver({path!r}, log=lambda line: None)
        solver.restore("snap_iter_2.solverstate")
        solver.step(2)
        solver.snapshot()
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=run_dir, capture_output=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    for name, data in good.items():
        assert open(name, "rb").read() == data, name
    leftovers = [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers and all(p.startswith(".snap_iter_4.") for p in leftovers)
    # The intact state still restores.
    again = get_solver(path, log=quiet)
    again.restore("snap_iter_4.solverstate")
    assert again.iter == 4


# ------------------------------------------------------------------ signals ----
def test_sighup_snapshots_and_sigint_stops_in_solve(run_dir):
    path = write_solver(run_dir, max_iter=50, test_iter=None, test_interval=None)
    lines = []
    solver = get_solver(path, log=lines.append)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGHUP)

    def send(event):
        if event["event"] == "iteration" and event["iter"] == 3:
            os.kill(os.getpid(), signal.SIGHUP)
        if event["event"] == "iteration" and event["iter"] == 6:
            os.kill(os.getpid(), signal.SIGINT)
    solver.add_callback(send)
    solver.solve()
    assert solver.iter == 6 and solver.requested_early_exit
    assert "Optimization stopped early." in lines
    names = sorted(p.name for p in run_dir.iterdir() if "snap" in p.name)
    assert names == ["snap_iter_3.caffemodel", "snap_iter_3.solverstate",
                     "snap_iter_6.caffemodel", "snap_iter_6.solverstate"]
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGHUP)) == before


def test_signal_effects_are_configurable(run_dir):
    path = write_solver(run_dir, max_iter=5, test_iter=None, test_interval=None,
                        snapshot_after_train="false")
    solver = get_solver(path, log=quiet, sigint_effect="none", sighup_effect="stop")

    def send(event):
        if event["event"] == "iteration" and event["iter"] == 1:
            os.kill(os.getpid(), signal.SIGINT)      # ignored
        if event["event"] == "iteration" and event["iter"] == 2:
            os.kill(os.getpid(), signal.SIGHUP)      # stops
    solver.add_callback(send)
    solver.solve()
    assert solver.iter == 2 and solver.requested_early_exit
    with pytest.raises(ValueError):
        get_solver(path, log=quiet, sigint_effect="explode")


def test_step_outside_solve_installs_no_handlers(run_dir):
    solver = get_solver(write_solver(run_dir, test_iter=None, test_interval=None), log=quiet)
    seen = []
    solver.add_callback(lambda e: seen.append(signal.getsignal(signal.SIGINT)))
    solver.step(1)
    assert seen and all(h is signal.default_int_handler for h in seen)


def test_cli_sigint_snapshots_and_exits_130(run_dir):
    path = write_solver(run_dir, max_iter=10_000_000, test_iter=None, test_interval=None,
                        display=1)
    proc = subprocess.Popen([sys.executable, "-m", "netdef", "train", "--solver", path,
                             "--log-file", "log.jsonl"], cwd=run_dir,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        import time
        deadline = time.time() + 60
        while time.time() < deadline:
            if (run_dir / "log.jsonl").exists() and \
                    len((run_dir / "log.jsonl").read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()
    text = err.decode()
    assert "Optimization stopped early." in text
    states = [p.name for p in run_dir.iterdir() if p.name.endswith(".solverstate")]
    assert len(states) == 1
    assert f"last snapshot: {states[0]}" in text
    assert get_solver(path, log=quiet) is not None


def test_weights_and_snapshot_exclusive_in_cli(run_dir, capsys):
    from netdef.cli import main

    path = write_solver(run_dir)
    assert main(["train", "--solver", path, "--weights", "a", "--snapshot", "b"]) == 2


def test_restore_before_weights_sharing_keeps_test_nets_in_sync(run_dir, snapshot):
    _, path = snapshot
    solver = get_solver(write_solver(run_dir), log=quiet)
    solver.restore(path)
    assert solver.test_nets[0].params["fc1"][0] is solver.net.params["fc1"][0]
    np.testing.assert_array_equal(solver.test_nets[0].params["fc1"][0].data,
                                  read_caffemodel(path.replace("solverstate",
                                                               "caffemodel"))[0].blobs[0])


def test_restore_refuses_wrong_kind_before_touching_anything(run_dir, snapshot):
    model, _ = snapshot
    solver = get_solver(write_solver(run_dir), log=quiet)
    with pytest.raises(NetdefError):
        solver.restore(model)
    assert solver.iter == 0 and all(not h.any() for h in solver.history)
