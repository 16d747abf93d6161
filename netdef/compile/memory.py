"""Activation memory planning: one arena, buffers reused across lifetimes.

Each blob that needs storage is a *buffer* with a lifetime [first write,
last read] in schedule order. Two buffers whose lifetimes overlap may not
share memory; others may. Buffers are placed greedily, largest first, at the
lowest arena offset that does not collide with an already placed buffer
whose lifetime overlaps. In-place tops are the same Blob as their bottom;
tops of ``shares_data`` layers (Split, Flatten, Reshape) are views of their
bottom's buffer and extend its lifetime.

Set NETDEF_NO_MEMORY_PLAN=1 to give every buffer its own memory (for
bisecting numerical differences).

A plan that runs backward uses one timeline of 2n steps: forward step i at
time i, its backward at time 2n-1-i. An activation then lives until the
last backward that reads it (a layer's backward may read its bottoms and
tops), and each diff is a buffer of its own, written by its consumer's
backward (or seeded with a loss weight when backward starts, time n) and
read by its producer's backward: diffs live briefly and share memory with
each other and with activations that are already dead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from netdef.blob import DTYPE, Blob

ALIGN = 16  # floats: 64-byte alignment for every buffer
FOREVER = 1 << 30


@dataclass
class Buffer:
    blobs: list[Blob]
    size: int                 # elements
    start: int                # step index of the first write
    end: int                  # step index of the last read (FOREVER: kept)
    offset: int = -1
    diff: bool = False        # holds the blobs' diffs, not their data


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    arena_size: int                    # elements
    naive_size: int                    # elements without reuse
    views: dict[int, tuple[int, tuple]] = field(default_factory=dict)  # id(blob) -> (offset, shape)
    log: list[str] = field(default_factory=list)

    def bind(self, arena: np.ndarray | None = None) -> np.ndarray:
        """Allocate the arena (or use the given one) and point every blob at it.

        What a user wrote into a blob before the plan existed (or into the
        previous plan of the same shapes) survives, for every blob that
        keeps its memory; everything else starts as zeros, so no forward
        (``forward(start=...)`` included) ever reads memory nobody wrote.
        """
        saved = [(blob, blob.data.copy()) for buf in self.buffers
                 if not buf.diff and buf.end == FOREVER
                 for blob in buf.blobs if blob.allocated]
        if arena is None or arena.size < self.arena_size:
            arena = np.zeros(max(self.arena_size, 1), DTYPE)
        else:
            arena[:self.arena_size] = 0.0
        for buf in self.buffers:
            view = arena[buf.offset:buf.offset + buf.size]
            for blob in buf.blobs:
                part = view[:blob.count].reshape(blob.shape)
                if buf.diff:
                    blob.bind(diff=part)
                else:
                    blob.bind(data=part)
        for blob, contents in saved:
            blob.data[...] = contents
        return arena


def _round(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_memory(steps, external: set[int], keep: set[int], reuse: bool = True,
                backward: bool = False) -> MemoryPlan:
    """Plan storage for the tops of ``steps``.

    ``external``: ids of blobs that keep their own storage (net inputs fed by
    the user). ``keep``: ids of blobs whose contents must survive the whole
    forward (net outputs, blobs the caller asked for). ``backward``: the
    steps' ``need_backward``/``propagate_down`` are set and backward will
    run, so activations live on into backward and diffs get buffers too
    (only when reusing; without reuse every diff is allocated on first use).
    """
    if os.environ.get("NETDEF_NO_MEMORY_PLAN") == "1":
        reuse = False
    owner: dict[int, Buffer] = {}
    buffers: list[Buffer] = []
    for i, step in enumerate(steps):
        for b in step.bottoms:
            buf = owner.get(id(b))
            if buf is not None:
                buf.end = max(buf.end, i)
        base = owner.get(id(step.bottoms[0])) if step.bottoms else None
        for top in step.tops:
            if id(top) in owner or id(top) in external:
                continue                       # in place, or user-owned
            if step.layer.shares_data and base is not None:
                base.blobs.append(top)
                base.end = max(base.end, i)
                owner[id(top)] = base
                continue
            buf = Buffer([top], top.count, i, i)
            buffers.append(buf)
            owner[id(top)] = buf
    if backward and reuse:
        buffers += _extend_into_backward(steps, owner, external, keep)
    for buf in buffers:
        buf.size = max(b.count for b in buf.blobs)
        if not reuse or any(id(b) in keep for b in buf.blobs):
            buf.end = FOREVER
    naive = sum(_round(b.size) for b in buffers)
    arena = _place(buffers) if reuse else _place_disjoint(buffers)
    plan = MemoryPlan(buffers, arena, naive)
    mib = 4 / 2**20
    plan.log.append(f"memory: {len(buffers)} activation buffers, {naive * mib:.1f} MiB -> "
                    f"{arena * mib:.1f} MiB" + ("" if reuse else " (reuse off)"))
    return plan


def _extend_into_backward(steps, owner: dict, external: set[int], keep: set[int]) -> list[Buffer]:
    """Lengthen activation lifetimes to their last backward read; return one
    buffer per diff that backward reads or writes."""
    n = len(steps)
    diffs: dict[int, Buffer] = {}

    def touch(blob, t: int) -> None:
        if id(blob) in external or id(blob) in keep:
            return                      # the user reads these diffs: own storage
        buf = diffs.get(id(blob))
        if buf is None:
            diffs[id(blob)] = Buffer([blob], blob.count, t, t, diff=True)
        else:
            buf.start, buf.end = min(buf.start, t), max(buf.end, t)

    for i, step in enumerate(steps):
        if not step.need_backward:
            continue
        t = 2 * n - 1 - i
        for blob in (*step.bottoms, *step.tops):
            buf = owner.get(id(blob))
            if buf is not None:
                buf.end = max(buf.end, t)
        for blob in step.tops:
            touch(blob, t)
        for blob, down in zip(step.bottoms, step.propagate_down):
            if down:
                touch(blob, t)
        for blob, weight in zip(step.tops, step.loss_weights):
            if weight:
                touch(blob, n)          # seeded when backward starts
    return list(diffs.values())


def _place_disjoint(buffers: list[Buffer]) -> int:
    offset = 0
    for buf in buffers:
        buf.offset = offset
        offset += _round(buf.size)
    return offset


def _place(buffers: list[Buffer]) -> int:
    placed: list[Buffer] = []
    top = 0
    for buf in sorted(buffers, key=lambda b: (-b.size, b.start)):
        busy = sorted((p.offset, p.offset + _round(p.size)) for p in placed
                      if p.start <= buf.end and buf.start <= p.end)
        offset = 0
        for lo, hi in busy:
            if offset + _round(buf.size) <= lo:
                break
            offset = max(offset, hi)
        buf.offset = offset
        top = max(top, offset + _round(buf.size))
        placed.append(buf)
    return top
