"""pycaffe's solvers over netdef.train: ``caffe.SGDSolver(path)`` ... ``caffe.get_solver``.

Each class builds the netdef solver of the same update rule from a solver
prototxt and shows pycaffe's surface: ``net`` and ``test_nets`` (compat
Nets, so ``solver.net.blobs['data'].data[...] = x`` and
``solver.net.set_input_arrays`` work; the test nets share the training
net's weights), ``step``, ``solve``, ``snapshot``, ``restore``, ``iter``,
``apply_update``, ``share_weights``, ``add_callback(on_start, on_gradients)``
and ``param``. As in pycaffe, ``SGDSolver(path)`` is SGD whatever the file's
``type`` says (netdef logs a note); ``get_solver`` follows the file.

``caffe.set_random_seed(s)`` before creating a solver seeds it when the
solver file sets no ``random_seed``.

Callbacks: ``on_gradients`` runs after the gradients of every iteration are
complete, right before the update, as in Caffe; ``on_start`` runs at the
start of every iteration, before its forward pass -- but after the
iteration's test pass, where Caffe calls it just before.
"""
from __future__ import annotations

import os


def _config(filename):
    from netdef.compat.caffe import random_seed
    from netdef.train.config import load_solver

    config = load_solver(filename if not isinstance(filename, os.PathLike)
                         else os.fspath(filename))
    seed = random_seed()
    if seed is not None and config.param.random_seed < 0:
        config.param.random_seed = seed
    return config


class _Solver:
    """The pycaffe surface shared by every solver (see the module docstring)."""

    _type = "SGD"        # the netdef solver type (netdef.train.SOLVERS key)

    def __init__(self, filename):
        import netdef.train.variants  # noqa: F401  (registers every solver)
        from netdef.train.base import SOLVERS

        self._attach(SOLVERS[self._type](_config(filename)))

    def _attach(self, inner) -> None:
        from netdef.compat.caffe import Net

        self._solver = inner
        self._net = Net._wrap(inner.net)
        self._test_nets = [Net._wrap(n) for n in inner.test_nets]
        self._on_start, self._on_gradients = [], []
        self._stop = None

    @classmethod
    def _from(cls, inner) -> _Solver:
        obj = cls.__new__(cls)
        obj._attach(inner)
        return obj

    # ---- attributes -----------------------------------------------------------
    @property
    def net(self):
        return self._net

    @property
    def test_nets(self) -> list:
        return list(self._test_nets)

    @property
    def iter(self) -> int:
        return self._solver.iter

    @property
    def param(self):
        return self._solver.param

    @property
    def type(self) -> str:
        return self._solver.type

    # ---- running ----------------------------------------------------------------
    def step(self, iters: int) -> None:
        self._solver.step(int(iters))

    def solve(self, resume_file=None) -> None:
        self._solver.solve(resume_file)

    def apply_update(self) -> None:
        """One update from the current gradients (no callbacks, as pycaffe)."""
        type(self._solver).apply_update(self._solver)

    def snapshot(self) -> None:
        self._solver.snapshot()

    def restore(self, filename) -> None:
        self._solver.restore(os.fspath(filename))

    def share_weights(self, net) -> None:
        """Make ``net`` use the training net's weights (pycaffe's share_weights)."""
        net.share_with(self._net)

    def add_callback(self, on_start, on_gradients) -> None:
        """``on_start()`` before every iteration, ``on_gradients()`` before
        every update (pycaffe's callback pair)."""
        if not self._on_start:
            inner = self._solver
            update = type(inner).apply_update

            def apply_update() -> None:
                for fn in self._on_gradients:
                    fn()
                update(inner)

            inner.apply_update = apply_update     # what netdef's step() calls
            inner.add_callback(self._event)
        self._on_start.append(on_start)
        self._on_gradients.append(on_gradients)

    def _event(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            self._stop = event["stop"]
        if kind == "start" and event["start"] < event["stop"] or \
                kind == "iteration" and self._stop is not None and event["iter"] < self._stop:
            for fn in self._on_start:
                fn()

    def __repr__(self) -> str:
        return f"<caffe.{type(self).__name__} over {self._solver!r}>"


class SGDSolver(_Solver):
    _type = "SGD"


class NesterovSolver(_Solver):
    _type = "Nesterov"


class AdaGradSolver(_Solver):
    _type = "AdaGrad"


class RMSPropSolver(_Solver):
    _type = "RMSProp"


class AdaDeltaSolver(_Solver):
    _type = "AdaDelta"


class AdamSolver(_Solver):
    _type = "Adam"


_BY_TYPE = {cls._type: cls for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver,
                                       AdaDeltaSolver, AdamSolver)}


def get_solver(filename) -> _Solver:
    """The solver the file's ``type`` names (pycaffe's ``caffe.get_solver``)."""
    from netdef.train.base import solver_class

    config = _config(filename)
    inner = solver_class(config)(config)
    return _BY_TYPE.get(inner.type, _Solver)._from(inner)
