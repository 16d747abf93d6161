"""Per-layer forward and backward timing, like ``caffe time``.

Runs a few untimed warm-up passes (which also load or compile the Numba
kernels), then ``iterations`` timed passes, and reports the mean forward
time of every layer and of the whole net; for a net that runs backward (a
TRAIN net with a loss, or any net with ``force_backward``), each pass is a
forward and a backward pass, and backward is reported beside forward.
Every source top (Input and data layers) is fed random numbers; tops named
like labels get zeros, a valid class for every loss.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class TimingReport:
    name: str
    batch: int
    iterations: int
    layers: list[tuple[str, str, float]]      # (layer, type, mean forward ms)
    total_ms: float                            # mean wall time of one pass
    first_ms: float                            # the very first forward (kernel load)
    backward: list[float] | None = None        # mean backward ms per layer, if run
    forward_ms: float = 0.0                    # mean wall time of the forward part
    backward_ms: float = 0.0                   # ... and of the backward part

    def lines(self) -> list[str]:
        width = max([len(n) for n, _, _ in self.layers] + [5])
        if self.backward is None:
            out = [f"{name:<{width}}  {kind:<16} {ms:9.3f} ms"
                   for name, kind, ms in self.layers]
            out.append(f"{'total':<{width}}  {'':<16} {self.total_ms:9.3f} ms  "
                       f"(batch {self.batch}, mean of {self.iterations} forward passes)")
        else:
            out = [f"{'layer':<{width}}  {'type':<16} {'forward':>9}    {'backward':>9}"]
            out += [f"{name:<{width}}  {kind:<16} {ms:9.3f} ms {b:9.3f} ms"
                    for (name, kind, ms), b in zip(self.layers, self.backward)]
            out.append(f"{'total':<{width}}  {'':<16} {self.forward_ms:9.3f} ms "
                       f"{self.backward_ms:9.3f} ms  forward-backward {self.total_ms:.3f} ms "
                       f"(batch {self.batch}, mean of {self.iterations} passes)")
        out.append(f"first forward (loads kernels): {self.first_ms:.1f} ms")
        return out

    def to_json(self) -> dict:
        layers = [{"name": n, "type": t, "ms": ms} for n, t, ms in self.layers]
        out = {"net": self.name, "batch": self.batch, "iterations": self.iterations,
               "total_ms": self.total_ms, "first_ms": self.first_ms, "layers": layers}
        if self.backward is not None:
            for row, ms in zip(layers, self.backward):
                row["backward_ms"] = ms
            out["forward_ms"], out["backward_ms"] = self.forward_ms, self.backward_ms
        return out


def time_net(net, iterations: int = 50, warmup: int = 2, progress=None, *,
             bar: bool | None = False, log=None) -> TimingReport:
    """Time ``net`` (a netdef.Net) on random inputs of its current shapes.

    ``progress(done, total)`` is called after each timed pass; ``bar`` draws
    a ``netdef.progress`` bar over them (None: when stderr is a terminal).
    With ``log``, kernels compiled by the first pass are announced there
    (``kernels.compile_notice``).
    """
    from netdef.progress import progress_bar

    net._plan()          # plans (and checks the memory) before the inputs are allocated
    rng = np.random.default_rng(0)
    fed = net._inst.source_tops()
    inputs = {name: (np.zeros(net.blobs[name].shape, np.float32) if "label" in name.lower()
                     else rng.standard_normal(net.blobs[name].shape, dtype=np.float32))
              for name in fed}
    t0 = time.perf_counter()
    if log is not None:
        from netdef.kernels import compile_notice

        with compile_notice(log, enabled=bar):
            net.forward(**inputs)
    else:
        net.forward(**inputs)
    first = (time.perf_counter() - t0) * 1e3
    plan = net._plan()
    backward = plan.runs_backward
    for _ in range(warmup):
        plan.run()
        if backward:
            plan.run_backward()
    per_layer: dict[str, float] = {}
    per_layer_back: dict[str, float] = {}
    walls, forward_walls, backward_walls = [], [], []
    clock = time.perf_counter
    with progress_bar(total=iterations, desc="time", unit="pass", enabled=bar) as shown:
        for i in range(iterations):
            t0 = clock()
            plan.run(timings=per_layer)
            t1 = clock()
            if backward:
                plan.run_backward(timings=per_layer_back)
            t2 = clock()
            walls.append(t2 - t0)
            forward_walls.append(t1 - t0)
            backward_walls.append(t2 - t1)
            shown.update(1)
            if progress:
                progress(i + 1, iterations)
    rows = [(s.name, s.layer.type, per_layer.get(s.name, 0.0) / iterations * 1e3)
            for s in plan.steps]
    back = ([per_layer_back.get(s.name, 0.0) / iterations * 1e3 for s in plan.steps]
            if backward else None)
    batch = net.blobs[fed[0]].shape[0] if fed and net.blobs[fed[0]].shape else 0
    return TimingReport(net.name, batch, iterations, rows, float(np.mean(walls)) * 1e3, first,
                        back, float(np.mean(forward_walls)) * 1e3,
                        float(np.mean(backward_walls)) * 1e3)
