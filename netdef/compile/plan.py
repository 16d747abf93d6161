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
from netdef.compile.memory import MemoryPlan, check_plan_fits, plan_memory


@dataclass
class Plan:
    steps: list[Step]
    memory: MemoryPlan
    arena: np.ndarray
    log: list[str] = field(default_factory=list)
    # step index -> top blobs whose (arena) diff must be zeroed before that
    # step's backward, because no other step writes it
    zero_diffs: dict[int, list] = field(default_factory=dict)
    # indices of steps whose forward has nothing to do: Split/Flatten/Reshape
    # whose tops the memory plan made views of the bottom (a Split's call
    # alone cost 10 us per top, checking that it need not copy), and Concats
    # whose bottoms it placed in the top
    idle: frozenset[int] = frozenset()

    def run(self, start: int = 0, end: int | None = None, timings: dict | None = None) -> None:
        """Forward steps[start:end+1]. With ``timings``, accumulate seconds per step name."""
        from netdef.kernels._jit import master_place

        stop = len(self.steps) if end is None else end + 1
        idle = self.idle
        with master_place():
            if timings is None:
                for i in range(start, stop):
                    if i not in idle:
                        step = self.steps[i]
                        step.layer.forward(step.bottoms, step.tops)
                return
            clock = time.perf_counter
            for i in range(start, stop):
                if i in idle:
                    continue
                step = self.steps[i]
                t0 = clock()
                step.layer.forward(step.bottoms, step.tops)
                timings[step.name] = timings.get(step.name, 0.0) + clock() - t0


    def run_backward(self, start: int | None = None, end: int = 0,
                     timings: dict | None = None, seed_losses: bool = True) -> None:
        """Backward steps[start] down to steps[end] (inclusive), skipping steps
        that need no backward. ``seed_losses`` first sets every loss top's
        diff to its loss weight (Caffe's convention; the loss layers scale
        their gradients by it)."""
        from netdef.kernels._jit import master_place

        first = len(self.steps) - 1 if start is None else start
        if seed_losses:
            self.seed_losses(first, end)
        clock = time.perf_counter
        with master_place():
            for i in range(first, end - 1, -1):
                step = self.steps[i]
                if not step.need_backward:
                    continue
                for blob in self.zero_diffs.get(i, ()):
                    blob.diff[...] = 0.0
                if timings is None:
                    step.layer.backward(step.tops, step.propagate_down, step.bottoms)
                    continue
                t0 = clock()
                step.layer.backward(step.tops, step.propagate_down, step.bottoms)
                timings[step.name] = timings.get(step.name, 0.0) + clock() - t0

    def seed_losses(self, start: int | None = None, end: int = 0) -> None:
        """Fill each loss top's diff with its loss weight (steps end..start)."""
        first = len(self.steps) - 1 if start is None else start
        for step in self.steps[end:first + 1]:
            for top, weight in zip(step.tops, step.loss_weights):
                if weight:
                    top.diff[...] = weight

    @property
    def runs_backward(self) -> bool:
        return any(s.need_backward for s in self.steps)


def build_plan(inst: Instance, *, reuse: bool, fuse: bool = False, keep_names=(),
               arena: np.ndarray | None = None, force_backward: bool = False) -> Plan:
    """Bind storage for every activation of ``inst`` and fix the schedule.

    ``fuse`` folds BatchNorm/Scale/ReLU into convolutions (inference only).
    Which steps run backward is decided here too (compile.backward); a plan
    that runs backward is never fused.
    """
    from netdef.compile.backward import mark_backward

    log: list[str] = mark_backward(inst, force_backward)
    steps = list(inst.steps)
    if any(s.need_backward for s in steps):
        if fuse:
            log.append("fuse: off (the net runs backward)")
        fuse = False

    kept_names = set(inst.graph.outputs) | set(keep_names)
    if fuse:
        steps = fuse_for_inference(steps, kept_names, log)
    external = {id(inst.blobs[name]) for name in inst.source_tops()}
    keep = {id(inst.blobs[n]) for n in kept_names if n in inst.blobs}
    backward = any(s.need_backward for s in steps)
    memory = plan_memory(steps, external, keep, reuse=reuse, backward=backward)
    check_plan_fits(inst, memory, arena)     # a clear error, not numpy's MemoryError
    arena = memory.bind(arena)
    idle = frozenset(i for i, s in enumerate(steps) if s.layer.shares_data and s.tops
                     and all(id(t) in memory.aliased for t in s.tops)) | memory.joined
    return Plan(steps, memory, arena, log + memory.log, _unwritten_diffs(steps, memory), idle)


def _unwritten_diffs(steps, memory: MemoryPlan) -> dict[int, list]:
    """Arena diffs that a backward step reads but nothing writes (a branch
    into a layer that needs no backward): they must read as zeros."""
    in_arena = {id(b) for buf in memory.buffers if buf.diff for b in buf.blobs}
    written: set[int] = set()
    for step in steps:
        if step.need_backward:
            written.update(id(b) for b, d in zip(step.bottoms, step.propagate_down) if d)
        written.update(id(t) for t, w in zip(step.tops, step.loss_weights) if w)
    zero: dict[int, list] = {}
    for i, step in enumerate(steps):
        if step.need_backward:
            blobs = [t for t in step.tops if id(t) in in_arena and id(t) not in written]
            if blobs:
                zero[i] = blobs
    return zero

