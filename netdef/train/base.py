"""The solver base: nets, the training loop, tests, display, snapshots, signals.

``Solver`` owns everything that does not depend on the update rule, in
Caffe's order (Solver::Step):

    clear diffs -> test (every test_interval) -> iter_size x forward/backward
    -> smoothed loss, display -> apply_update() -> iter += 1
    -> snapshot (every ``snapshot`` iterations, or on request) -> stop on request

``apply_update`` and the per-parameter state are the subclass's (SGDSolver
and its variants, netdef.train.sgd). Solvers register by Caffe's type
string (``@register_solver("Adam")``); ``get_solver`` picks the class from
the solver file's ``type``.

Progress and results go to ``log`` (a callable taking one line; stderr by
default) and to callbacks (``add_callback(fn)``), which receive one dict
per event: "start", "iteration" (after every update), "train" (display
iterations: smoothed and raw loss, lr, outputs), "test" (mean scores),
"snapshot". The CLI draws its progress bar and writes its machine-readable
log from those events.

Exact resume: a solverstate holds the weights, the solver's history, the
iteration and lr step, and (netdef's record, netdef.train.state) the
random state of every random layer, so N iterations + snapshot + restore +
N iterations give the same weights, bit for bit, as 2N iterations.
"""
from __future__ import annotations

import math
import os
import secrets
import sys
import time

import numpy as np

from netdef.errors import DataError, NetdefError, did_you_mean
from netdef.frontend.schema import pb
from netdef.train import state as state_io
from netdef.train.config import SolverConfig, load_solver
from netdef.train.lr_policy import learning_rate
from netdef.train.signals import NoSignals, SignalActions

SOLVERS: dict[str, type] = {}


def register_solver(type_name: str):
    """Class decorator: make ``type: "<type_name>"`` create this solver."""

    def decorate(cls):
        cls.type = type_name
        SOLVERS[type_name] = cls
        return cls

    return decorate


class TrainingError(NetdefError):
    """Training cannot go on: the loss or the weights stopped being finite."""


def _fmt(value: float) -> str:
    return f"{value:g}"


class Solver:
    """Base of every solver; use a registered subclass (``get_solver``).

    ``Solver(solver, log=None, sigint_effect="stop", sighup_effect="snapshot")``:
    ``solver`` is a solver prototxt path, prototxt text, a SolverParameter
    or a SolverConfig.
    """

    type = ""
    history_per_param = 1       # history blobs per learnable parameter in a state

    def __init__(self, solver, *, log=None, sigint_effect: str = "stop",
                 sighup_effect: str = "snapshot"):
        from netdef.net import Net

        self.config: SolverConfig = load_solver(solver)
        self.param = p = self.config.param
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.config.check()
        self.check_param()
        if p.HasField("type") and p.type != self.type:
            self.config.notes.append(f"the solver file says type \"{p.type}\"; "
                                     f"running {type(self).__name__} ({self.type})")
        self.sigint_effect, self.sighup_effect = sigint_effect, sighup_effect
        SignalActions(sigint_effect, sighup_effect)            # validates the effects
        if p.random_seed >= 0:
            self.seed = int(p.random_seed)
        else:
            self.seed = secrets.randbits(31)
            self.config.notes.append(f"random_seed is not set: using {self.seed} "
                                     f"(set random_seed: {self.seed} to repeat this run)")
        spec = self.config.train_net()
        self.log(f"Creating training net from {spec.origin}")
        self.net = Net(spec.source, phase="TRAIN", seed=self.seed, level=spec.state.level,
                       stages=spec.stages, log=self.log)
        self.test_nets = []
        for i, test in enumerate(self.config.test_nets()):
            self.log(f"Creating test net (#{i}) specified by {test.origin}")
            # Own seeds, so a test net's random data (DummyData) is not the train net's.
            net = Net(test.source, phase="TEST", seed=self.seed + 1 + i, level=test.state.level,
                      stages=test.stages, log=self.log)
            net.share_with(self.net)
            self.test_nets.append(net)
        self.snapshot_prefix = self.config.snapshot_prefix()
        for note in self.config.notes:
            self.log(f"note: {note}")
        self.iter = 0
        self.lr_state = {"current_step": 0}
        self.rate = None                          # lr of the last update
        self.smoothed_loss = 0.0
        self._losses: list[float] = []
        self.requested_early_exit = False
        self.last_snapshot: str | None = None
        self.callbacks: list = []
        self._actions = NoSignals()
        self._loss_weights = None
        self.params = self.net.learnable_params
        self.history = [np.zeros(info.blob.shape, np.float32)
                        for _ in range(self.history_per_param) for info in self.params]
        for weights in p.weights:
            self.load_weights(weights)

    # ---- overridden by the update rule -----------------------------------
    def check_param(self) -> None:
        """Refuse solver settings this update rule cannot use."""

    def apply_update(self) -> None:
        raise NotImplementedError

    # ---- pycaffe surface -------------------------------------------------------
    @property
    def current_step(self) -> int:
        return self.lr_state["current_step"]

    def add_callback(self, fn) -> None:
        """``fn(event: dict)`` is called on every event (see the module docstring)."""
        self.callbacks.append(fn)

    def load_weights(self, paths: str) -> None:
        """Fine-tune: copy weights by layer name from one or more .caffemodel
        files (comma-separated, like caffe's --weights) into the nets."""
        for path in [w for w in str(paths).split(",") if w]:
            self.log(f"Finetuning from {path}")
            self.net.copy_from(path)
            for net in self.test_nets:             # test-only layers too; quietly
                net.copy_from(path, quiet=True)

    def get_learning_rate(self) -> float:
        """The rate of the current update (advances the lr step state, as Caffe)."""
        return float(np.float32(learning_rate(self.param, self.iter, self.lr_state)))

    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (Caffe's Solver::Step)."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        self._losses, self.smoothed_loss = [], 0.0
        timer, last_display = time.perf_counter(), self.iter
        self._emit("start", start=start_iter, stop=stop_iter)
        while self.iter < stop_iter:
            self.net.clear_param_diffs()
            if (p.test_interval and self.iter % p.test_interval == 0
                    and (self.iter > 0 or p.test_initialization)):
                self.test_all()
                if self.requested_early_exit:
                    break
            display = bool(p.display) and self.iter % p.display == 0
            loss = 0.0
            for _ in range(p.iter_size):
                # Forward, check, then backward (net.forward_backward in two
                # halves), so a diverged loss never reaches the gradients.
                part = self.net.forward_loss()
                if not math.isfinite(part):
                    self._diverged(part)
                self.net.backward()
                loss += part
            loss /= p.iter_size
            self._update_smoothed_loss(loss, start_iter)
            outputs = None
            if display:
                now = time.perf_counter()
                lapse = now - timer
                per_s = (self.iter - last_display) / (lapse or 1.0)
                self.log(f"Iteration {self.iter} ({per_s:.4g} iter/s, {lapse:.4g}s/{p.display} "
                         f"iters), loss = {_fmt(self.smoothed_loss)}")
                timer, last_display = now, self.iter
                outputs, _ = self._log_outputs(self.net, "Train", self._train_outputs())
            self.apply_update()
            if display:
                self._emit("train", iter=self.iter, loss=self.smoothed_loss, raw_loss=loss,
                           lr=self.rate, outputs=outputs)
            self.iter += 1
            self._emit("iteration", iter=self.iter, loss=loss)
            request = self._actions.requested()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == "snapshot":
                self.snapshot()
            if request == "stop":
                self.requested_early_exit = True
                break

    def solve(self, resume=None) -> None:
        """Train to max_iter (Caffe's Solver::Solve), optionally resuming from a
        .solverstate; SIGINT/SIGHUP are handled meanwhile (see netdef.train.signals)."""
        p = self.param
        self.log(f"Solving {self.net.name}")
        self.log(f"Learning Rate Policy: {p.lr_policy}")
        self.requested_early_exit = False
        if resume is not None:
            self.log(f"Restoring previous solver status from {resume}")
            self.restore(resume)
        self._log_start()
        if p.snapshot or p.snapshot_after_train:
            self._check_snapshot_folder()
        with SignalActions(self.sigint_effect, self.sighup_effect) as actions:
            self._actions = actions
            try:
                start_iter = self.iter
                try:
                    self.step(p.max_iter - self.iter)
                except DataError:
                    self._snapshot_before_stopping(start_iter)
                    raise
                if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
                    self.snapshot()
                if self.requested_early_exit:
                    self.log("Optimization stopped early.")
                    return
                if p.display and self.iter % p.display == 0:
                    loss = self.net.forward_loss()
                    self._update_smoothed_loss(loss, start_iter)
                    self.log(f"Iteration {self.iter}, loss = {_fmt(self.smoothed_loss)}")
                if p.test_interval and self.iter % p.test_interval == 0:
                    self.test_all()
                self.log("Optimization Done.")
            finally:
                self._actions = NoSignals()

    # ---- testing --------------------------------------------------------------
    def test_all(self) -> list:
        results = []
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            results.append(self.test(i))
        return results

    def test(self, i: int = 0) -> dict | None:
        """Run test net ``i`` for its test_iter batches; {output: mean score}."""
        p = self.param
        self.log(f"Iteration {self.iter}, Testing net (#{i})")
        net = self.test_nets[i]
        n = p.test_iter[i]
        sums, loss = None, 0.0
        for _ in range(n):
            request = self._actions.requested()
            while request != "none":
                if request == "snapshot":
                    self.snapshot()
                else:
                    self.requested_early_exit = True
                request = self._actions.requested()
            if self.requested_early_exit:
                break
            out = net.forward()
            if p.test_compute_loss:
                loss += net.loss
            values = np.concatenate([np.asarray(out[name], np.float64).ravel()
                                     for name in net.outputs]) if net.outputs else np.zeros(0)
            sums = values if sums is None else sums + values
        if self.requested_early_exit:
            self.log("Test interrupted.")
            return None
        if p.test_compute_loss and n:
            self.log(f"Test loss: {_fmt(loss / n)}")
        means = (sums / n) if (sums is not None and n) else np.zeros(0)
        scores, weights = self._log_outputs(net, "Test", means)
        self._emit("test", iter=self.iter, net=i, scores=scores, loss_weights=weights,
                   loss=(loss / n) if p.test_compute_loss and n else None)
        return scores

    # ---- snapshots -------------------------------------------------------------
    def snapshot_filename(self, extension: str) -> str:
        return f"{self.snapshot_prefix}_iter_{self.iter}{extension}"

    def snapshot(self) -> tuple[str, str]:
        """Write ``<prefix>_iter_N.caffemodel`` and ``.solverstate`` (each atomic);
        returns their paths. Non-finite weights are never written."""
        for info in self.params:
            if not np.isfinite(info.blob.data).all():
                kept = f"; the last good snapshot, {self.last_snapshot}, is kept" \
                    if self.last_snapshot else ""
                raise TrainingError(
                    f"iteration {self.iter}: parameter {info.index} of layer '{info.layer}' "
                    f"holds NaN or infinity; the snapshot was not written{kept}",
                    hint="lower base_lr, or set clip_gradients")
        model = self.snapshot_filename(".caffemodel")
        self.log(f"Snapshotting to binary proto file {model}")
        self.net.save(model)
        path = self.snapshot_filename(".solverstate")
        self.log(f"Snapshotting solver state to binary proto file {path}")
        state = pb.SolverState(iter=self.iter, learned_net=model,
                               current_step=self.current_step)
        from netdef.io.caffemodel import array_to_blob

        for h in self.history:
            state.history.append(array_to_blob(h))
        record = {"solver": self.type, "history_per_param": self.history_per_param,
                  "seed": self.seed,
                  "layers": {"train": state_io.layer_states(self.net),
                             "test": [state_io.layer_states(t) for t in self.test_nets]}}
        state_io.write_state(path, state, record)
        self.last_snapshot = path
        self._emit("snapshot", iter=self.iter, model=model, state=path)
        return model, path

    def restore(self, path) -> None:
        """Continue from a .solverstate exactly where it was written.

        Refuses a caffemodel, a truncated or foreign file, and a state
        written by another solver type or for another net; nothing is
        changed unless the whole state fits.
        """
        from netdef.io.caffemodel import blob_shape, blob_to_array

        where = os.fspath(path)
        state, record = state_io.read_state(path)
        if record is not None and record.get("solver") != self.type:
            raise state_io.StateError(
                f"the state was written by a {record.get('solver')} solver; this is a "
                f"{self.type} solver", where=where,
                hint=f'set type: "{record.get("solver")}" in the solver, or start from its '
                     f"weights (--weights {state.learned_net or 'the .caffemodel'})")
        n, k = len(self.params), self.history_per_param
        if len(state.history) != n * k:
            per = "1 per parameter" if k == 1 else f"{k} per parameter"
            raise state_io.StateError(
                f"the state holds {len(state.history)} history blobs; this {self.type} solver "
                f"of net '{self.net.name}' needs {n * k} ({per})", where=where,
                hint="was it written by another solver type, or for another net?")
        arrays = []
        for j, bp in enumerate(state.history):
            info = self.params[j % n]
            shape, legacy = blob_shape(bp)
            want = info.blob.shape
            fits = shape == want or (legacy and math.prod(shape) == math.prod(want)
                                     and len(want) <= 4)
            if not fits:
                raise state_io.StateError(
                    f"history blob {j} has shape {shape} but parameter {info.index} of layer "
                    f"'{info.layer}' has shape {want}", where=where,
                    hint="the state was written for another net")
            arrays.append(blob_to_array(bp, where=f"{where}: history blob {j}").reshape(want))
        if state.HasField("learned_net") and state.learned_net:
            self.net.copy_from(state_io.resolve_learned_net(state.learned_net, path), quiet=True)
        for h, arr in zip(self.history, arrays):
            h[...] = arr
        self.iter = int(state.iter)
        self.lr_state["current_step"] = int(state.current_step)
        layers = (record or {}).get("layers") or {}
        missing = state_io.set_layer_states(self.net, layers.get("train", {}))
        for net, saved in zip(self.test_nets, layers.get("test", [])):
            state_io.set_layer_states(net, saved)
        if missing:
            self.log(f"note: the state has no random state for layer(s) "
                     f"{', '.join(missing)} (written by Caffe?): they continue from their seed, "
                     f"so the run will not repeat the original exactly")
        self.log(f"Restored iteration {self.iter} from {where}")

    def _snapshot_before_stopping(self, start_iter: int) -> None:
        """A data source failed mid-run (a corrupt record): keep the progress.
        The weights are those of a finished update, so the snapshot resumes."""
        done = self.last_snapshot == self.snapshot_filename(".solverstate")
        if self.iter > start_iter and not done:
            self.log(f"Iteration {self.iter}: a data layer failed; snapshotting before stopping")
            _, path = self.snapshot()
            self.log(f"resume with --snapshot {path} once the data is fixed")

    # ---- internals -------------------------------------------------------------
    def _emit(self, event: str, **fields) -> None:
        if self.callbacks:
            fields["event"] = event
            for fn in self.callbacks:
                fn(fields)

    def _update_smoothed_loss(self, loss: float, start_iter: int) -> None:
        """Caffe's running mean of the last ``average_loss`` losses."""
        window = self.param.average_loss
        if len(self._losses) < window:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            idx = (self.iter - start_iter) % window
            self.smoothed_loss += (loss - self._losses[idx]) / window
            self._losses[idx] = loss

    def _train_outputs(self) -> np.ndarray:
        return np.concatenate([self.net.blobs[name].data.astype(np.float64).ravel()
                               for name in self.net.outputs]) if self.net.outputs else np.zeros(0)

    def _log_outputs(self, net, what: str, values) -> tuple[dict, dict]:
        """Caffe's "    Train net output #k: name = v (* w = wv loss)" lines;
        returns ({score name: value}, {score name: loss weight})."""
        weights = net.blob_loss_weights
        scores, score_weights, k = {}, {}, 0
        for name in net.outputs:
            count = net.blobs[name].count
            for e in range(count):
                value = float(values[k])
                w = weights.get(name, 0.0)
                extra = f" (* {_fmt(w)} = {_fmt(w * value)} loss)" if w else ""
                self.log(f"    {what} net output #{k}: {name} = {_fmt(value)}{extra}")
                key = name if count == 1 else f"{name}[{e}]"
                scores[key], score_weights[key] = value, w
                k += 1
        return scores, score_weights

    def _diverged(self, loss: float) -> None:
        layer = self.net.first_nonfinite()
        if layer is not None:
            kind = dict(zip(self.net.layer_names, (lay.type for lay in self.net.layers)))
            culprit = f"the first layer whose output is not finite is '{layer}' ({kind[layer]})"
        else:
            culprit = "every layer's output is finite (the sum of the losses overflowed)"
        kept = (f"; the last snapshot, {self.last_snapshot}, is intact" if self.last_snapshot
                else "")
        raise TrainingError(f"iteration {self.iter}: the loss is {loss}; {culprit}. Training "
                            f"stopped before updating the weights{kept}",
                            hint="lower base_lr, set clip_gradients, or check the data")

    def _log_start(self) -> None:
        p = self.param
        batch = self._batch_size()
        rate = float(np.float32(learning_rate(p, self.iter, dict(self.lr_state))))
        size = f"{batch} x iter_size {p.iter_size} = {batch * p.iter_size}" if batch \
            else f"unknown x iter_size {p.iter_size}"
        self.log(f"{self.type} solver: effective batch {size}; lr {_fmt(rate)} at iteration "
                 f"{self.iter} (base_lr {_fmt(p.base_lr)}, lr_policy \"{p.lr_policy}\"), "
                 f"{len(self.params)} learnable parameter blobs")

    def _batch_size(self) -> int | None:
        for name in self.net._inst.source_tops():
            shape = self.net.blobs[name].shape
            if shape:
                return int(shape[0])
        return None

    def _check_snapshot_folder(self) -> None:
        folder = os.path.dirname(self.snapshot_prefix) or "."
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            why = "does not exist" if not os.path.isdir(folder) else "is not writable"
            raise NetdefError(f"cannot write snapshots to '{self.snapshot_prefix}_iter_N': "
                              f"the folder '{folder}' {why}",
                              where=self.config.where("snapshot_prefix"),
                              hint="create the folder, or change snapshot_prefix")


def solver_class(config: SolverConfig) -> type:
    """The registered class for the solver's ``type``, with did-you-mean."""
    import netdef.train.variants  # noqa: F401  (registers the solvers)

    name = config.param.type
    if name in SOLVERS:
        return SOLVERS[name]
    where = config.where_first(("type",), ("solver_type",))
    raise NetdefError(f"unknown solver type {name!r}", where=where,
                      hint=did_you_mean(name, SOLVERS) or f"known: {', '.join(SOLVERS)}")


def get_solver(solver, **kwargs) -> Solver:
    """The solver named by the file's ``type`` (pycaffe's ``caffe.get_solver``)."""
    config = load_solver(solver)
    return solver_class(config)(config, **kwargs)
