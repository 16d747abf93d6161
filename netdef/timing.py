"""Per-layer forward timing, like ``caffe time``.

Runs a few untimed warm-up passes (which also load or compile the Numba
kernels), then ``iterations`` timed passes, and reports the mean forward
time of every layer and of the whole net.
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
    layers: list[tuple[str, str, float]]      # (layer, type, mean ms)
    total_ms: float                            # mean wall time of one forward
    first_ms: float                            # the very first forward (kernel load)

    def lines(self) -> list[str]:
        width = max([len(n) for n, _, _ in self.layers] + [5])
        out = [f"{name:<{width}}  {kind:<16} {ms:9.3f} ms" for name, kind, ms in self.layers]
        out.append(f"{'total':<{width}}  {'':<16} {self.total_ms:9.3f} ms  "
                   f"(batch {self.batch}, mean of {self.iterations} forward passes)")
        out.append(f"first forward (loads kernels): {self.first_ms:.1f} ms")
        return out

    def to_json(self) -> dict:
        return {"net": self.name, "batch": self.batch, "iterations": self.iterations,
                "total_ms": self.total_ms, "first_ms": self.first_ms,
                "layers": [{"name": n, "type": t, "ms": ms} for n, t, ms in self.layers]}


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
    inputs = {name: rng.standard_normal(net.input_shape(name), dtype=np.float32)
              for name in net.inputs}
    t0 = time.perf_counter()
    if log is not None:
        from netdef.kernels import compile_notice

        with compile_notice(log, enabled=bar):
            net.forward(**inputs)
    else:
        net.forward(**inputs)
    first = (time.perf_counter() - t0) * 1e3
    for _ in range(warmup):
        net.forward()
    plan = net._plan()
    per_layer: dict[str, float] = {}
    walls = []
    with progress_bar(total=iterations, desc="time", unit="pass", enabled=bar) as shown:
        for i in range(iterations):
            t0 = time.perf_counter()
            plan.run(timings=per_layer)
            walls.append(time.perf_counter() - t0)
            shown.update(1)
            if progress:
                progress(i + 1, iterations)
    rows = [(s.name, s.layer.type, per_layer.get(s.name, 0.0) / iterations * 1e3)
            for s in plan.steps]
    batch = net.input_shape(net.inputs[0])[0] if net.inputs else 0
    return TimingReport(net.name, batch, iterations, rows,
                        float(np.mean(walls)) * 1e3, first)
