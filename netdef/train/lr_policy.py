"""Learning-rate policies: a table from Caffe's ``lr_policy`` name to a small function.

Each function takes the SolverParameter ``p``, the iteration ``it`` (the
number of updates done so far) and the solver's ``state`` (a dict holding
``current_step``, which "step" sets and "multistep" advances, and which a
solverstate stores), and returns the rate for this update:

    fixed      base_lr
    step       base_lr * gamma ^ floor(it / stepsize)
    exp        base_lr * gamma ^ it
    inv        base_lr * (1 + gamma * it) ^ (-power)
    multistep  base_lr * gamma ^ (number of stepvalues reached)
    poly       base_lr * (1 - it / max_iter) ^ power
    sigmoid    base_lr / (1 + exp(-gamma * (it - stepsize)))

As in Caffe, the rate is worked out in double precision and used as a
float32, and "multistep" advances at most one step per call (it is called
once per iteration). ``check_policy`` validates the parameters a policy
needs before training starts, with the field's file:line:col.
"""
from __future__ import annotations

import math

from netdef.errors import Location, NetdefError, did_you_mean


def _fixed(p, it, state):
    return p.base_lr


def _step(p, it, state):
    state["current_step"] = it // p.stepsize
    return p.base_lr * math.pow(p.gamma, state["current_step"])


def _exp(p, it, state):
    return p.base_lr * math.pow(p.gamma, it)


def _inv(p, it, state):
    return p.base_lr * math.pow(1.0 + p.gamma * it, -p.power)


def _multistep(p, it, state):
    step = state["current_step"]
    if step < len(p.stepvalue) and it >= p.stepvalue[step]:
        state["current_step"] = step + 1
    return p.base_lr * math.pow(p.gamma, state["current_step"])


def _poly(p, it, state):
    return p.base_lr * math.pow(1.0 - it / p.max_iter, p.power)


def _sigmoid(p, it, state):
    return p.base_lr / (1.0 + math.exp(-p.gamma * (it - p.stepsize)))


LR_POLICIES = {
    "fixed": _fixed,
    "step": _step,
    "exp": _exp,
    "inv": _inv,
    "multistep": _multistep,
    "poly": _poly,
    "sigmoid": _sigmoid,
}

# What each policy reads besides base_lr: (field, requirement, test).
_NEEDS = {
    "step": [("stepsize", "> 0", lambda v: v > 0), ("gamma", ">= 0", lambda v: v >= 0)],
    "exp": [("gamma", ">= 0", lambda v: v >= 0)],
    "inv": [("gamma", ">= 0", lambda v: v >= 0)],
    "multistep": [("gamma", ">= 0", lambda v: v >= 0)],
    "poly": [("max_iter", "> 0", lambda v: v > 0)],
    "sigmoid": [("stepsize", "> 0", lambda v: v > 0), ("gamma", ">= 0", lambda v: v >= 0)],
}


def check_policy(p, where=lambda *path: None) -> None:
    """Refuse an unknown ``lr_policy`` (did you mean ...?) or a policy whose
    parameters are missing. ``where(field)`` gives a field's location."""
    name = p.lr_policy
    if name not in LR_POLICIES:
        known = ", ".join(LR_POLICIES)
        if not p.HasField("lr_policy"):
            raise NetdefError("the solver sets no lr_policy", where=where(),
                              hint=f'add e.g. lr_policy: "fixed"; known: {known}')
        raise NetdefError(f"unknown lr_policy {name!r}", where=where("lr_policy"),
                          hint=did_you_mean(name, LR_POLICIES) or f"known: {known}")
    for field, requirement, ok in _NEEDS.get(name, ()):
        value = getattr(p, field)
        if not ok(value):
            raise NetdefError(f'lr_policy "{name}" needs {field} {requirement}, got {value:g}',
                              where=_first(where, field, "lr_policy"))


def _first(where, *fields):
    """The location of the first of ``fields`` written in the file."""
    for name in fields:
        location = where(name)
        if isinstance(location, Location):
            return location
    return where()


def learning_rate(p, it: int, state: dict) -> float:
    """The rate of update number ``it`` (Caffe's GetLearningRate)."""
    return LR_POLICIES[p.lr_policy](p, it, state)
