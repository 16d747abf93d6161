"""Activation memory planning: one arena, buffers reused across lifetimes.

Each blob that needs storage is a *buffer* with a lifetime [first write,
last read] in schedule order. Two buffers whose lifetimes overlap may not
share memory; others may. Buffers are placed greedily, largest first, at the
lowest arena offset that does not collide with an already placed buffer
whose lifetime overlaps. In-place tops are the same Blob as their bottom;
tops of ``shares_data`` layers (Split, Flatten, Reshape) are views of their
bottom's buffer and extend its lifetime; over a net input (which keeps its
own storage) they follow the input blob (``Blob.follow``) and need none.
In plans that only run forward, the bottoms of a Concat of one image are
parts of its top's buffer (``_join_in_place``).

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
from netdef.errors import NetdefError

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
    # id(blob) -> its first element within the buffer, for the bottoms of
    # a Concat that are written in place in its top (others start at 0)
    parts: dict[int, int] = field(default_factory=dict)


@dataclass
class MemoryPlan:
    buffers: list[Buffer]
    arena_size: int                    # elements
    naive_size: int                    # elements without reuse
    follows: list[tuple[Blob, Blob]] = field(default_factory=list)     # (top, the input it follows)
    aliased: set[int] = field(default_factory=set)   # ids of shares_data tops that are their bottom's memory
    joined: set[int] = field(default_factory=set)    # indices of Concat steps whose bottoms are their top
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
                first = buf.parts.get(id(blob), 0)
                part = view[first:first + blob.count].reshape(blob.shape)
                if buf.diff:
                    blob.bind(diff=part)
                else:
                    blob.bind(data=part)
        for blob, contents in saved:
            blob.data[...] = contents
        for top, source in self.follows:
            top.follow(source)
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
    joined: set[int] = set()
    readers: dict[int, int] = {}
    for step in steps:
        for b in step.bottoms:
            readers[id(b)] = readers.get(id(b), 0) + 1
    follows: list[tuple[Blob, Blob]] = []
    aliased: set[int] = set()
    outside = set(external)          # storage of its own: inputs, and the tops following them
    for i, step in enumerate(steps):
        for b in step.bottoms:
            buf = owner.get(id(b))
            if buf is not None:
                buf.end = max(buf.end, i)
        base = owner.get(id(step.bottoms[0])) if step.bottoms else None
        for top in step.tops:
            if id(top) in owner or id(top) in outside:
                continue                       # in place, or user-owned
            if step.layer.shares_data and step.bottoms and id(step.bottoms[0]) in outside:
                follows.append((top, step.bottoms[0]))
                outside.add(id(top))
                aliased.add(id(top))
                continue
            if step.layer.shares_data and base is not None:
                aliased.add(id(top))
                base.blobs.append(top)
                base.end = max(base.end, i)
                owner[id(top)] = base
                continue
            buf = Buffer([top], top.count, i, i)
            buffers.append(buf)
            owner[id(top)] = buf
        if reuse and not backward and _join_in_place(step, owner, buffers, readers):
            joined.add(i)
    if backward and reuse:
        buffers += _extend_into_backward(steps, owner, external, keep)
    for buf in buffers:
        buf.size = max(b.count for b in buf.blobs)
        if not reuse or any(id(b) in keep for b in buf.blobs):
            buf.end = FOREVER
    naive = sum(_round(b.size) for b in buffers)
    arena = _place(buffers) if reuse else _place_disjoint(buffers)
    plan = MemoryPlan(buffers, arena, naive, follows=follows, aliased=aliased, joined=joined)
    mib = 4 / 2**20
    grads = sum(buf.diff for buf in buffers)
    kinds = f"{len(buffers) - grads} activation" + (f" and {grads} gradient" if grads else "")
    plan.log.append(f"memory: {kinds} buffers, {naive * mib:.1f} MiB -> "
                    f"{arena * mib:.1f} MiB" + ("" if reuse else " (reuse off)")
                    + (f", the bottoms of {len(joined)} Concats written in their tops" if joined else ""))
    return plan


def _join_in_place(step, owner: dict, buffers: list, readers: dict) -> bool:
    """For a Concat whose parts of the top are contiguous (nothing but
    dimensions of 1 before its axis: one image, for channels) and whose
    bottoms each have a buffer of their own that only this Concat reads,
    place every bottom in the top's buffer at its part, so that the layers
    writing the bottoms write the top and the Concat copies nothing.
    GoogLeNet's nine concatenations copied 0.5 ms per forward pass; two
    nets in one process, alternating, with and without: GoogLeNet 0.96-0.97
    of the time, SqueezeNet 0.96-0.98. Inference plans only (a plan that
    runs backward keeps the copies). Returns whether it did."""
    if getattr(step.layer, "type", None) != "Concat" or len(step.bottoms) < 2 or len(step.tops) != 1:
        return False
    top = step.tops[0]
    axis = step.layer.axis
    if any(d != 1 for d in top.shape[:axis]):
        return False
    target = owner.get(id(top))
    if target is None or target.blobs != [top]:
        return False
    parts = []
    for b in step.bottoms:
        buf = owner.get(id(b))
        if (buf is None or buf is target or buf.blobs != [b] or readers.get(id(b)) != 1
                or any(p is buf for p in parts)):
            return False
        parts.append(buf)
    first = 0
    for b, buf in zip(step.bottoms, parts, strict=True):
        buffers.remove(buf)
        target.blobs.append(b)
        target.parts[id(b)] = first
        target.start = min(target.start, buf.start)
        owner[id(b)] = target
        first += b.count
    return True


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


# ------------------------------------------------------------ fit check ----
class OutOfMemory(NetdefError):
    """A net whose blobs cannot fit in the memory this machine has available."""


def available_bytes() -> int | None:
    """Memory this process can still get, in bytes, or None when unknown.

    Linux's MemAvailable (plus free swap), capped by a cgroup (container)
    limit; elsewhere the free physical pages. ``NETDEF_MEMORY_LIMIT`` (bytes)
    overrides it, for tests and for users who want a tighter budget.
    """
    override = os.environ.get("NETDEF_MEMORY_LIMIT")
    if override:
        try:
            return int(float(override))
        except ValueError:
            pass
    found = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {k: v for k, _, v in (line.partition(":") for line in f)}
        found = (int(info["MemAvailable"].split()[0]) +
                 int(info.get("SwapFree", "0 kB").split()[0])) * 1024
    except (OSError, KeyError, ValueError, IndexError):
        try:
            found = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            found = None
    try:                                   # cgroup v2: a container's own limit
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read().strip())
        if limit != "max":
            room = max(int(limit) - used, 0)
            found = room if found is None else min(found, room)
    except (OSError, ValueError):
        pass
    return found


def size_text(nbytes: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"      # pragma: no cover


def require_memory(needed: int, what: str, *, detail: str = "", where=None,
                   hint: str | None = None) -> None:
    """Raise OutOfMemory before allocating ``needed`` bytes that cannot fit.

    ``what`` is the subject and verb: "net 'LeNet' needs".
    """
    available = available_bytes()
    if available is None or needed <= available:
        return
    raise OutOfMemory(f"{what} {size_text(needed)} of memory{detail}, but only "
                      f"{size_text(available)} is available", where=where, hint=hint)


def check_plan_fits(inst, memory: MemoryPlan, arena: np.ndarray | None) -> None:
    """Before ``memory.bind``: the arena to allocate plus the unallocated
    input blobs must fit in the available memory (compile.plan calls this)."""
    itemsize = np.dtype(DTYPE).itemsize
    new_arena = 0 if arena is not None and arena.size >= memory.arena_size else \
        memory.arena_size * itemsize
    inputs = [inst.blobs[n] for n in inst.source_tops() if n in inst.blobs]
    fresh_inputs = sum(b.count for b in inputs if not b.allocated) * itemsize
    needed = new_arena + fresh_inputs
    if needed == 0:
        return
    biggest = max((b for buf in memory.buffers for b in buf.blobs), key=lambda b: b.count,
                  default=None)
    detail = f" ({size_text(new_arena)} of activations"
    if memory.buffers and any(buf.diff for buf in memory.buffers):
        detail += " and gradients"
    detail += f", {size_text(fresh_inputs)} of inputs)" if fresh_inputs else ")"
    shapes = ", ".join(f"'{b.name}' {b.shape}" for b in inputs)
    hint = (f"the largest blob is '{biggest.name}' {biggest.shape}, "
            f"{size_text(biggest.count * itemsize)}; " if biggest is not None else "")
    hint += f"inputs: {shapes}; a smaller batch needs less" if shapes else "use smaller inputs"
    where = next((s.node.where for s in inst.steps if not s.bottoms and s.node.where), None)
    require_memory(needed, f"net '{inst.graph.name}' with these input shapes needs", detail=detail,
                   where=where, hint=hint)


def check_params_fit(inst) -> None:
    """Before the parameters are filled or loaded: they must fit too (Net calls this)."""
    itemsize = np.dtype(DTYPE).itemsize
    seen: dict[int, tuple] = {}
    for step in inst.steps:
        for blob in step.layer.blobs:
            if id(blob) not in seen and not blob.allocated:
                seen[id(blob)] = (blob.count, step)
    needed = sum(count for count, _ in seen.values()) * itemsize
    if needed == 0:
        return
    count, step = max(seen.values(), key=lambda item: item[0])
    require_memory(needed, f"the parameters of net '{inst.graph.name}' need",
                   where=step.node.where,
                   hint=f"the largest is in layer '{step.name}' ({step.node.type}), "
                        f"{size_text(count * itemsize)}; is num_output or an input size "
                        "mistyped?")
