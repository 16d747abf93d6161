"""``netdef test``: the mean of every output blob over N batches (caffe test).

The net reads its own data (Data, ImageData, HDF5Data, DummyData ...
layers) in the phase asked for, TEST by default. Each element of each
output blob is one score, as in Caffe (an output of 3 values gives 3
scores of the same name); a loss output also shows its weighted value.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from netdef.errors import NetdefError


@dataclass
class TestReport:
    net: str
    iterations: int
    names: list[str]                 # one per score (an output's name, repeated per element)
    keys: list[str]                  # unique: name, or name[k] for multi-element outputs
    means: list[float]
    loss_weights: list[float]
    loss: float                      # mean weighted loss over the batches
    batches: list[list[float]] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"Loss: {self.loss:g}"]
        for name, mean, w in zip(self.names, self.means, self.loss_weights):
            extra = f" (* {w:g} = {w * mean:g} loss)" if w else ""
            out.append(f"{name} = {mean:g}{extra}")
        return out

    def to_json(self) -> dict:
        return {"net": self.net, "iterations": self.iterations, "loss": self.loss,
                "scores": dict(zip(self.keys, self.means)),
                "loss_weights": {k: w for k, w in zip(self.keys, self.loss_weights) if w}}


def evaluate(model, weights, iterations: int = 50, phase: str = "TEST", level: int = 0,
             stages=(), log=None, progress=None) -> TestReport:
    """Score ``model`` with ``weights`` over ``iterations`` forward passes.

    ``log(line)`` receives caffe's per-batch lines ("Batch 3, accuracy = 0.98");
    ``progress(done, total)`` is called after every batch.
    """
    from netdef.net import Net

    if iterations < 1:
        raise NetdefError(f"iterations must be at least 1, got {iterations}")
    net = Net(model, weights, phase, level=level, stages=stages, log=log)
    if net.inputs:
        raise NetdefError(
            f"net '{net.name}' takes its data from Input blobs ({', '.join(net.inputs)}), "
            "which nothing fills here", where=net.source.filename,
            hint="test a net with data layers (the train_val prototxt); for Input nets use "
                 "netdef run, or net.forward(...) from Python")
    names, keys, weights_of = [], [], []
    loss_weights = net.blob_loss_weights
    sums, loss, batches = None, 0.0, []
    for i in range(iterations):
        out = net.forward()
        loss += net.loss
        values = []
        for name in net.outputs:
            values += [float(v) for v in np.asarray(out[name], np.float64).ravel()]
        if sums is None:
            sums = np.zeros(len(values))
            for name in net.outputs:
                count = net.blobs[name].count
                names += [name] * count
                keys += [name] if count == 1 else [f"{name}[{k}]" for k in range(count)]
                weights_of += [loss_weights.get(name, 0.0)] * count
        sums += values
        batches.append(values)
        if log is not None:
            for name, value in zip(names, values):
                log(f"Batch {i}, {name} = {value:g}")
        if progress is not None:
            progress(i + 1, iterations)
    means = [float(s / iterations) for s in sums]
    return TestReport(net.name, iterations, names, keys, means, weights_of, loss / iterations,
                      batches)
