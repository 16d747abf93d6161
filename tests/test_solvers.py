"""Solvers: each update rule, lr policy and pipeline stage against a NumPy
reference of Caffe's formulas; solver file checks and errors."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

import netdef
from netdef.blob import Blob
from netdef.errors import NetdefError, ParseError
from netdef.net import ParamInfo
from netdef.train import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                          RMSPropSolver, SGDSolver, get_solver)
from netdef.train.lr_policy import LR_POLICIES, learning_rate
from netdef.frontend.schema import pb

NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "x" top: "y"
  input_param { shape { dim: %(batch)d dim: 3 } shape { dim: %(batch)d dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "p"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                        bias_filler { type: "constant" value: 0.1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "p" bottom: "y" top: "loss" }
"""


def solver_text(batch=4, **fields) -> str:
    body = {"base_lr": 0.1, "lr_policy": '"fixed"', "max_iter": 10, "random_seed": 1,
            "snapshot_after_train": "false"}
    body.update(fields)
    lines = [f"{k}: {v}" for k, v in body.items()]
    net = NET % {"batch": batch}
    return "net_param {" + net + "}\n" + "\n".join(lines) + "\n"


def quiet(_line):
    pass


def make(cls=SGDSolver, **fields):
    return cls(solver_text(**fields), log=quiet)


# ------------------------------------------------------------ update rules ----
RULES = {
    "SGD": (SGDSolver, {"momentum": 0.9}),
    "Nesterov": (NesterovSolver, {"momentum": 0.9}),
    "AdaGrad": (AdaGradSolver, {"delta": 1e-6}),
    "RMSProp": (RMSPropSolver, {"rms_decay": 0.95, "delta": 1e-6}),
    "AdaDelta": (AdaDeltaSolver, {"momentum": 0.95, "delta": 1e-6, "base_lr": 1.0}),
    "Adam": (AdamSolver, {"momentum": 0.9, "momentum2": 0.999, "delta": 1e-8,
                          "base_lr": 0.01}),
}


def reference_run(kind, p, weights, mults, grads_per_iter):
    """Caffe's update rules in float64, written out one formula at a time."""
    w = [x.astype(np.float64) for x in weights]
    n = len(w)
    h = [np.zeros_like(x) for x in w] * 1
    h2 = [np.zeros_like(x) for x in w]
    h = [np.zeros_like(x) for x in w]
    state = {"current_step": 0}
    for it, grads in enumerate(grads_per_iter):
        rate = learning_rate(p, it, state)
        g = [x.astype(np.float64) for x in grads]
        if p.clip_gradients >= 0:
            norm = math.sqrt(sum(float((x ** 2).sum()) for x in g))
            if norm > p.clip_gradients:
                g = [x * (p.clip_gradients / norm) for x in g]
        g = [x / p.iter_size for x in g]
        for i in range(n):
            lr_mult, decay_mult = mults[i]
            decay = p.weight_decay * decay_mult
            if p.regularization_type == "L2":
                g[i] = g[i] + decay * w[i]
            else:
                g[i] = g[i] + decay * np.sign(w[i])
            lr = rate * lr_mult
            if kind == "SGD":
                h[i] = p.momentum * h[i] + lr * g[i]
                step = h[i]
            elif kind == "Nesterov":
                old = h[i]
                h[i] = p.momentum * h[i] + lr * g[i]
                step = (1 + p.momentum) * h[i] - p.momentum * old
            elif kind == "AdaGrad":
                h[i] = h[i] + g[i] ** 2
                step = lr * g[i] / (np.sqrt(h[i]) + p.delta)
            elif kind == "RMSProp":
                h[i] = p.rms_decay * h[i] + (1 - p.rms_decay) * g[i] ** 2
                step = lr * g[i] / (np.sqrt(h[i]) + p.delta)
            elif kind == "AdaDelta":
                m = p.momentum
                h[i] = m * h[i] + (1 - m) * g[i] ** 2
                s = g[i] * np.sqrt((h2[i] + p.delta) / (h[i] + p.delta))
                h2[i] = m * h2[i] + (1 - m) * s ** 2
                step = lr * s
            elif kind == "Adam":
                b1, b2, t = p.momentum, p.momentum2, it + 1
                h[i] = b1 * h[i] + (1 - b1) * g[i]
                h2[i] = b2 * h2[i] + (1 - b2) * g[i] ** 2
                step = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * h[i] / (
                    np.sqrt(h2[i]) + p.delta)
            w[i] = w[i] - step
    return w


def fake_params(solver, weights, mults):
    """Point the solver at hand-made parameters (what the update math sees)."""
    params = []
    for j, (w, (lr_mult, decay_mult)) in enumerate(zip(weights, mults)):
        blob = Blob(w.shape, name=f"p{j}")
        blob.data[...] = w
        params.append(ParamInfo("fake", j, blob, lr_mult, decay_mult))
    solver.params = params
    solver.history = [np.zeros(w.shape, np.float32)
                      for _ in range(solver.history_per_param) for w in weights]
    solver._scratch = None
    return params


def run_updates(solver, params, grads_per_iter):
    for grads in grads_per_iter:
        for info, g in zip(params, grads):
            info.blob.diff[...] = g
        solver.apply_update()
        solver.iter += 1
    return [info.blob.data.copy() for info in params]


def random_case(seed=0, iters=5):
    rng = np.random.default_rng(seed)
    shapes = [(3, 4), (4,), (2, 1, 3)]
    weights = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(iters)]
    return weights, grads


@pytest.mark.parametrize("kind", list(RULES))
@pytest.mark.parametrize("extra", [
    {},
    {"weight_decay": 0.01},
    {"weight_decay": 0.02, "regularization_type": '"L1"'},
    {"clip_gradients": 0.5},
    {"iter_size": 3, "lr_policy": '"step"', "stepsize": 2, "gamma": 0.5},
], ids=["plain", "L2", "L1", "clip", "iter_size+step"])
def test_update_rule_matches_caffe_formula(kind, extra):
    cls, fields = RULES[kind]
    solver = make(cls, **{**fields, **extra})
    weights, grads = random_case()
    mults = [(1.0, 1.0), (2.0, 0.0), (0.5, 3.0)]
    params = fake_params(solver, weights, mults)
    got = run_updates(solver, params, grads)
    want = reference_run(kind, solver.param, weights, mults, grads)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)


def test_history_layout_per_solver():
    assert [make(cls, **fields).history_per_param for cls, fields in RULES.values()] == \
        [1, 1, 1, 1, 2, 2]
    adam = make(AdamSolver)
    assert len(adam.history) == 2 * len(adam.params) == 4


def test_lr_mult_zero_freezes_even_with_decay_and_momentum():
    solver = make(SGDSolver, momentum=0.9, weight_decay=0.1)
    weights, grads = random_case(1)
    params = fake_params(solver, weights, [(0.0, 1.0), (1.0, 1.0), (0.0, 0.0)])
    got = run_updates(solver, params, grads)
    assert np.array_equal(got[0], weights[0]) and np.array_equal(got[2], weights[2])
    assert not np.array_equal(got[1], weights[1])


def test_weight_decay_and_decay_mult_on_a_zero_gradient():
    # With a zero gradient and no momentum, one SGD step is exactly -lr * decay term.
    for reg, term in (("L2", lambda w: w), ("L1", np.sign)):
        solver = make(SGDSolver, weight_decay=0.5, regularization_type=f'"{reg}"')
        w = np.array([[-2.0, 0.0, 3.0]], np.float32)
        params = fake_params(solver, [w, w], [(1.0, 1.0), (1.0, 2.0)])
        got = run_updates(solver, params, [[np.zeros_like(w)] * 2])
        np.testing.assert_allclose(got[0], w - 0.1 * 0.5 * term(w), rtol=1e-6)
        np.testing.assert_allclose(got[1], w - 0.1 * 1.0 * term(w), rtol=1e-6)


def test_clip_gradients_scales_the_global_norm():
    solver = make(SGDSolver, clip_gradients=1.0, base_lr=1.0)
    lines = []
    solver.log = lines.append
    zero = np.zeros((2,), np.float32)
    params = fake_params(solver, [zero, zero], [(1.0, 1.0)] * 2)
    got = run_updates(solver, params, [[np.array([3.0, 0.0], np.float32),
                                        np.array([0.0, 4.0], np.float32)]])
    np.testing.assert_allclose(got[0], [-0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(got[1], [0.0, -0.8], rtol=1e-6)
    assert any("Gradient clipping" in line and "L2 norm 5 > 1" in line for line in lines)
    # Below the threshold nothing changes.
    params = fake_params(solver, [zero], [(1.0, 1.0)])
    got = run_updates(solver, params, [[np.array([0.3, 0.4], np.float32)]])
    np.testing.assert_allclose(got[0], [-0.3, -0.4], rtol=1e-6)


# ------------------------------------------------------------- lr policies ----
def policy_param(**fields):
    p = pb.SolverParameter(base_lr=0.1, max_iter=100)
    for k, v in fields.items():
        if k == "stepvalue":
            p.stepvalue.extend(v)
        else:
            setattr(p, k, v)
    return p


@pytest.mark.parametrize("name,fields,formula", [
    ("fixed", {}, lambda it: 0.1),
    ("step", {"stepsize": 30, "gamma": 0.1}, lambda it: 0.1 * 0.1 ** (it // 30)),
    ("exp", {"gamma": 0.99}, lambda it: 0.1 * 0.99 ** it),
    ("inv", {"gamma": 1e-4, "power": 0.75}, lambda it: 0.1 * (1 + 1e-4 * it) ** -0.75),
    ("multistep", {"gamma": 0.5, "stepvalue": [10, 25, 60]},
     lambda it: 0.1 * 0.5 ** sum(it >= s for s in (10, 25, 60))),
    ("poly", {"power": 2.0}, lambda it: 0.1 * (1 - it / 100) ** 2),
    ("sigmoid", {"gamma": -0.1, "stepsize": 50},
     lambda it: 0.1 / (1 + math.exp(0.1 * (it - 50)))),
])
def test_lr_policy_matches_formula(name, fields, formula):
    assert name in LR_POLICIES
    p = policy_param(lr_policy=name, **fields)
    state = {"current_step": 0}
    for it in range(100):
        assert learning_rate(p, it, state) == pytest.approx(formula(it), rel=1e-6), it


def test_multistep_and_step_keep_current_step():
    p = policy_param(lr_policy="multistep", gamma=0.5, stepvalue=[3, 5])
    state = {"current_step": 0}
    steps = []
    for it in range(7):
        learning_rate(p, it, state)
        steps.append(state["current_step"])
    assert steps == [0, 0, 0, 1, 1, 2, 2]
    solver = make(SGDSolver, lr_policy='"step"', stepsize=4, gamma=0.5)
    solver.step(9)
    assert solver.current_step == 2 and solver.rate == pytest.approx(0.025)


def test_solver_rate_is_float32():
    solver = make(SGDSolver, base_lr=0.1)
    assert solver.get_learning_rate() == float(np.float32(0.1))


# -------------------------------------------------- iter_size and the loop ----
def feed(net, x, y):
    net.blobs["x"].data[...] = x
    net.blobs["y"].data[...] = y


def test_iter_size_two_half_batches_equal_one_full_batch():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    half = make(SGDSolver, batch=4, iter_size=2, momentum=0.9, weight_decay=0.01)
    full = make(SGDSolver, batch=8, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        half.net.clear_param_diffs()
        for part in (slice(0, 4), slice(4, 8)):
            feed(half.net, x[part], y[part])
            half.net.forward_backward()
        half.apply_update()
        half.iter += 1
        full.net.clear_param_diffs()
        feed(full.net, x, y)
        full.net.forward_backward()
        full.apply_update()
        full.iter += 1
    for a, b in zip(half.params, full.params):
        np.testing.assert_allclose(a.blob.data, b.blob.data, rtol=1e-5, atol=1e-6)


def test_step_with_iter_size_averages_the_passes():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = rng.standard_normal((4, 2)).astype(np.float32)
    twice = make(SGDSolver, batch=4, iter_size=2)
    once = make(SGDSolver, batch=8)
    feed(twice.net, x, y)
    feed(once.net, np.concatenate([x, x]), np.concatenate([y, y]))
    twice.step(4)
    once.step(4)
    for a, b in zip(twice.params, once.params):
        np.testing.assert_allclose(a.blob.data, b.blob.data, rtol=1e-5, atol=1e-6)


def test_training_on_input_blobs_reduces_the_loss():
    solver = make(SGDSolver, batch=16, momentum=0.9, base_lr=0.05)
    rng = np.random.default_rng(0)
    true_w = rng.standard_normal((2, 3)).astype(np.float32)
    losses = []
    for _ in range(40):
        x = rng.standard_normal((16, 3)).astype(np.float32)
        feed(solver.net, x, x @ true_w.T)
        solver.step(1)
        losses.append(solver.smoothed_loss)
    assert solver.iter == 40
    assert losses[-1] < 0.05 * losses[0]


def test_display_and_average_loss_lines():
    lines = []
    solver = SGDSolver(solver_text(display=2, average_loss=2), log=lines.append)
    solver.step(4)
    shown = [line for line in lines if line.startswith("Iteration")]
    assert shown[0].startswith("Iteration 0 (") and ", loss = " in shown[0]
    assert "Iteration 0, lr = 0.1" in shown
    assert any(line.startswith("    Train net output #0: loss = ") and "(* 1 = " in line
               for line in lines)
    assert any(line.startswith("Iteration 2 (") for line in shown)


def test_smoothed_loss_is_caffes_running_mean():
    solver = make(SGDSolver, average_loss=3)
    solver._losses, solver.smoothed_loss = [], 0.0
    values = [4.0, 2.0, 6.0, 10.0, 1.0]
    seen = []
    for i, v in enumerate(values):
        solver.iter = i
        solver._update_smoothed_loss(v, 0)
        seen.append(solver.smoothed_loss)
    assert seen == pytest.approx([4.0, 3.0, 4.0, 6.0, 17 / 3])


def test_test_nets_share_weights_and_report_means():
    text = solver_text(test_iter=3, test_interval=2, test_initialization="false",
                       display=0)
    lines = []
    solver = SGDSolver(text, log=lines.append)
    assert len(solver.test_nets) == 1
    test = solver.test_nets[0]
    assert test.params["fc"][0] is solver.net.params["fc"][0]
    events = []
    solver.add_callback(events.append)
    solver.step(4)
    tests = [e for e in events if e["event"] == "test"]
    assert [e["iter"] for e in tests] == [2]
    assert "loss" in tests[0]["scores"] and tests[0]["loss_weights"]["loss"] == 1.0
    assert "Iteration 2, Testing net (#0)" in lines


# ------------------------------------------------------- the registry, API ----
def test_get_solver_picks_the_type_and_api_is_pycaffe_like():
    for name, (cls, fields) in RULES.items():
        text = solver_text(type=f'"{name}"', **fields)
        solver = get_solver(text, log=quiet)
        assert type(solver) is cls and solver.type == name
    solver = netdef.get_solver(solver_text(), log=quiet)
    assert solver.iter == 0 and solver.test_nets == []
    assert isinstance(solver.net, netdef.Net) and solver.net.phase == pb.TRAIN
    solver.step(2)
    assert solver.iter == 2


def test_legacy_solver_type_enum_is_upgraded():
    solver = get_solver(solver_text(solver_type="ADAM"), log=quiet)
    assert isinstance(solver, AdamSolver)


# --------------------------------------------------------- solver file errors ----
def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def solver_file(tmp_path, extra="", net="net.prototxt"):
    write(tmp_path, "net.prototxt", NET % {"batch": 2})
    return write(tmp_path, "solver.prototxt",
                 f'net: "{tmp_path / net}"\nbase_lr: 0.1\nmax_iter: 2\nrandom_seed: 1\n{extra}')


@pytest.mark.parametrize("extra,where,words", [
    ('lr_policy: "stpe"\n', 5, ["unknown lr_policy 'stpe'", "did you mean 'step'"]),
    ('lr_policy: "fixed"\ntype: "Adm"\n', 6, ["unknown solver type 'Adm'", "'Adam'"]),
    ('lr_policy: "fixed"\ntype: "adam"\n', 6, ["'Adam'"]),
    ('lr_policy: "fixed"\nregularization_type: "L3"\n', 6, ["regularization_type 'L3'"]),
    ('lr_policy: "step"\n', 5, ["stepsize > 0"]),
    ('lr_policy: "fixed"\ntype: "AdaGrad"\nmomentum: 0.9\n', 7, ["momentum cannot be used"]),
])
def test_solver_errors_point_at_the_field(tmp_path, extra, where, words):
    path = solver_file(tmp_path, extra)
    with pytest.raises(NetdefError) as info:
        get_solver(path, log=quiet)
    text = str(info.value)
    assert f"{path}:{where}:" in text, text
    for w in words:
        assert w in text, text


def test_solver_field_typo_and_enum_typo_get_did_you_mean(tmp_path):
    path = solver_file(tmp_path, 'lr_policy: "fixed"\nbase_lrr: 0.1\n')
    with pytest.raises(ParseError, match=r"solver.prototxt:6:1.*'base_lr'"):
        get_solver(path, log=quiet)
    path = solver_file(tmp_path, 'lr_policy: "fixed"\nsolver_mode: CPUU\n')
    with pytest.raises(ParseError, match=r"solver.prototxt:6:\d+.*'CPU'"):
        get_solver(path, log=quiet)


def test_missing_lr_policy_and_bad_counts(tmp_path):
    with pytest.raises(NetdefError, match="sets no lr_policy"):
        get_solver(solver_file(tmp_path), log=quiet)
    path = solver_file(tmp_path, 'lr_policy: "fixed"\ntest_iter: 2\n')
    with pytest.raises(NetdefError, match=r"solver.prototxt:6:1: 1 test net.*test_interval"):
        get_solver(path, log=quiet)
    path = write(tmp_path, "s2.prototxt", 'lr_policy: "fixed"\ntest_iter: 2\n'
                 f'train_net: "{tmp_path}/net.prototxt"\n')
    with pytest.raises(NetdefError, match="1 test_iter value.s. for 0 test net"):
        get_solver(path, log=quiet)
    path = write(tmp_path, "s3.prototxt", 'lr_policy: "fixed"\n')
    with pytest.raises(NetdefError, match="names no train net"):
        get_solver(path, log=quiet)


def test_missing_net_file_names_path_and_line(tmp_path):
    path = solver_file(tmp_path, 'lr_policy: "fixed"\n', net="nope/missing.prototxt")
    with pytest.raises(NetdefError) as info:
        get_solver(path, log=quiet)
    text = str(info.value)
    assert f"{path}:1:1: net file '{tmp_path}/nope/missing.prototxt' does not exist" in text


def test_net_path_relative_to_the_solver_file_with_a_note(tmp_path, monkeypatch):
    sub = tmp_path / "models"
    sub.mkdir()
    write(sub, "net.prototxt", NET % {"batch": 2})
    path = write(sub, "solver.prototxt", 'net: "net.prototxt"\nlr_policy: "fixed"\n'
                 'snapshot_prefix: "snaps/x"\n')
    (sub / "snaps").mkdir()
    monkeypatch.chdir(tmp_path)
    lines = []
    solver = get_solver(path, log=lines.append)
    notes = [line for line in lines if line.startswith("note:")]
    assert any("net 'net.prototxt' is not in the working directory" in n and
               "relative to the solver file" in n for n in notes), notes
    assert any("snapshot_prefix" in n for n in notes), notes
    assert solver.snapshot_prefix == os.path.join(str(sub), "snaps", "x")
    # Caffe's rule: relative to the working directory wins when it exists.
    monkeypatch.chdir(sub)
    lines.clear()
    get_solver("solver.prototxt", log=lines.append)
    assert not any("working directory" in line for line in lines)


def test_caffe_root_relative_net_path_found_beside_the_solver(tmp_path, monkeypatch):
    write(tmp_path, "net.prototxt", NET % {"batch": 2})
    path = write(tmp_path, "solver.prototxt", 'net: "examples/mnist/net.prototxt"\n'
                 'lr_policy: "fixed"\nsnapshot_format: HDF5\n')
    monkeypatch.chdir("/")
    lines = []
    get_solver(path, log=lines.append)
    assert any("the file of that name beside the solver" in line for line in lines), lines
    assert any("solver.prototxt:3:1: snapshot_format: HDF5 is not supported" in line
               for line in lines), lines


def test_snapshot_prefix_defaults_follow_caffe(tmp_path):
    path = solver_file(tmp_path, 'lr_policy: "fixed"\n')
    assert get_solver(path, log=quiet).snapshot_prefix == str(tmp_path / "solver")
    (tmp_path / "snaps").mkdir()
    path = solver_file(tmp_path, f'lr_policy: "fixed"\nsnapshot_prefix: "{tmp_path}/snaps"\n')
    assert get_solver(path, log=quiet).snapshot_prefix == str(tmp_path / "snaps" / "solver")


def test_unwritable_snapshot_folder_fails_before_training(tmp_path):
    path = solver_file(tmp_path, 'lr_policy: "fixed"\nsnapshot: 1\n'
                       f'snapshot_prefix: "{tmp_path}/no/such/x"\n')
    solver = get_solver(path, log=quiet)
    with pytest.raises(NetdefError, match=r"solver.prototxt:7:1: cannot write snapshots.*"
                                          r"does not exist"):
        solver.solve()
    assert solver.iter == 0


def test_test_state_selects_stages(tmp_path):
    net = NET % {"batch": 2} + """
layer { name: "extra" type: "Power" bottom: "p" top: "q" include { stage: "deep" } }
"""
    write(tmp_path, "net.prototxt", net)
    path = write(tmp_path, "solver.prototxt",
                 f'net: "{tmp_path}/net.prototxt"\nlr_policy: "fixed"\ntest_iter: 1\n'
                 'test_iter: 1\ntest_interval: 5\ntest_state { }\n'
                 'test_state { stage: "deep" }\n')
    solver = get_solver(path, log=quiet)
    assert [("q" in t.outputs) for t in solver.test_nets] == [False, True]
    assert "q" not in solver.net.outputs


def test_test_compute_loss_logs_the_mean_test_loss():
    lines = []
    solver = SGDSolver(solver_text(test_iter=2, test_interval=10, test_compute_loss="true"),
                       log=lines.append)
    scores = solver.test(0)
    assert any(line.startswith("Test loss: ") for line in lines)
    assert set(scores) == {"loss"}
