"""Training: solvers, learning-rate policies, snapshots and the training loop.

    solver = netdef.get_solver("lenet_solver.prototxt")
    solver.solve()                      # or solver.step(100); solver.snapshot()
    solver.net, solver.test_nets        # the TRAIN net and the TEST nets sharing its weights

Modules: ``config`` (reading and checking a solver file), ``base`` (the
loop, tests, display, snapshot/restore, signals), ``sgd`` (the update
pipeline), ``variants`` (Nesterov, AdaGrad, RMSProp, AdaDelta, Adam),
``lr_policy``, ``state`` (solverstate files), ``signals``, ``evaluate``
(``netdef test``), ``logfile`` and ``plot`` (machine-readable logs and
their curves).
"""
from netdef.train.base import SOLVERS, Solver, TrainingError, get_solver, register_solver
from netdef.train.sgd import SGDSolver
from netdef.train.state import StateError
from netdef.train.variants import (AdaDeltaSolver, AdaGradSolver, AdamSolver, NesterovSolver,
                                   RMSPropSolver)

__all__ = ["SOLVERS", "Solver", "TrainingError", "StateError", "get_solver", "register_solver",
           "SGDSolver", "NesterovSolver", "AdaGradSolver", "RMSPropSolver", "AdaDeltaSolver",
           "AdamSolver"]
