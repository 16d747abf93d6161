"""The execution plan: a fixed schedule over instantiated layers, with
activation storage bound once.

A plan belongs to one set of input shapes. ``Net`` caches plans by input
shape, so alternating batch sizes re-plans once per shape, not per call.
Parameters are never part of the arena; activations are, unless the caller
asks to keep every blob (pycaffe semantics: all blobs readable after
forward), in which case each blob gets its own memory.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from netdef.compile.fuse import fuse_for_inference
from netdef.compile.instantiate import Instance, Step
from netdef.compile.memory import MemoryPlan, plan_memory


@dataclass
class Plan:
    steps: list[Step]
    memory: MemoryPlan
    arena: np.ndarray
    log: list[str] = field(default_factory=list)

    def run(self, start: int = 0, end: int | None = None, timings: dict | None = None) -> None:
        """Forward steps[start:end+1]. With ``timings``, accumulate seconds per step name."""
        stop = len(self.steps) if end is None else end + 1
        if timings is None:
            for step in self.steps[start:stop]:
                step.layer.forward(step.bottoms, step.tops)
            return
        clock = time.perf_counter
        for step in self.steps[start:stop]:
            t0 = clock()
            step.layer.forward(step.bottoms, step.tops)
            timings[step.name] = timings.get(step.name, 0.0) + clock() - t0


def build_plan(inst: Instance, *, reuse: bool, fuse: bool = False, keep_names=(),
               arena: np.ndarray | None = None) -> Plan:
    """Bind storage for every activation of ``inst`` and fix the schedule.

    ``fuse`` folds BatchNorm/Scale/ReLU into convolutions (inference only).
    """
    log: list[str] = []
    steps = list(inst.steps)
    kept_names = set(inst.graph.outputs) | set(keep_names)
    if fuse:
        steps = fuse_for_inference(steps, kept_names, log)
    external = {id(inst.blobs[name]) for name in inst.source_tops()}
    keep = {id(inst.blobs[n]) for n in kept_names if n in inst.blobs}
    memory = plan_memory(steps, external, keep, reuse=reuse)
    arena = memory.bind(arena)
    return Plan(steps, memory, arena, log + memory.log)

