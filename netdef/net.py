"""``Net``: the pycaffe-shaped Python API over a compiled plan.

    net = netdef.Net("deploy.prototxt", weights="model.caffemodel")
    net.blobs["data"].data[...] = batch        # or net.forward(data=batch)
    out = net.forward()                        # {"prob": array}
    net.params["conv1"][0].data                # weights, (96, 3, 11, 11)

The Net only wires things together: prototxt -> graph -> layers with
shapes -> plan -> run. By default every blob keeps its own memory so that
any blob can be read after forward, as in pycaffe. ``optimize=True`` lets
the memory planner reuse activation buffers (only net outputs and the blobs
named in ``keep`` stay readable); ``netdef run`` and benchmarks use it.
"""
from __future__ import annotations

import sys
from collections import OrderedDict

import numpy as np

from netdef.blob import DTYPE
from netdef.compile.instantiate import Instance, instantiate
from netdef.compile.plan import Plan, build_plan
from netdef.errors import InputError, NetdefError, did_you_mean
from netdef.frontend.graph import build_graph
from netdef.frontend.schema import PHASE_NAMES, TEST, phase_value


class Net:
    """A net ready to run: ``Net(prototxt, weights=None, phase="TEST")``.

    ``prototxt`` is a path, prototxt text or a NetSource, in any Caffe
    format (V0/V1 and ``input:`` headers are upgraded). Parameters come from
    ``weights`` (a .caffemodel, copied by layer name) and otherwise from the
    layers' fillers, seeded by ``seed``. ``input_shapes`` overrides input
    shapes ({"data": (1, 3, 224, 224)}). ``optimize`` reuses activation
    memory and, for TEST nets, folds BatchNorm/Scale/ReLU into convolutions;
    blobs named in ``keep`` stay readable. ``strict`` refuses weight blobs
    that fit only after a reshape.
    """

    def __init__(self, net, weights=None, phase="TEST", *, seed: int = 0,
                 input_shapes: dict | None = None, level: int = 0, stages=(),
                 optimize: bool = False, keep=(), strict: bool = False,
                 log=None):
        from netdef.frontend.source import NetSource, read_net

        self.source = net if isinstance(net, NetSource) else read_net(net)
        self.phase = phase_value(phase)
        self.graph = build_graph(self.source, self.phase, level, stages)
        self._inst: Instance = instantiate(self.graph, input_shapes)
        self.optimize = optimize
        self._keep = tuple(keep)
        self._log = log or (lambda msg: print(msg, file=sys.stderr))
        self._current_plan: Plan | None = None
        self._plan_key = None
        self._inferred_key = self._shape_key()
        self.load_report = None
        self.random_weights = True
        self._filled: set[int] = set()     # ids of parameter blobs holding values
        if weights is not None:
            self.copy_from(weights, strict=strict)
        self._init_params(seed)            # only what the weights did not cover

    # ---- pycaffe surface ----------------------------------------------
    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def blobs(self) -> OrderedDict:
        return OrderedDict((n, b) for n, b in self._inst.blobs.items())

    @property
    def params(self) -> OrderedDict:
        return OrderedDict(self._inst.params())

    @property
    def layers(self):
        return self._inst.layers

    @property
    def layer_names(self) -> list[str]:
        return [s.name for s in self._inst.steps]

    @property
    def inputs(self) -> list[str]:
        return self.graph.inputs

    @property
    def outputs(self) -> list[str]:
        return self.graph.outputs

    def input_shape(self, name: str | None = None) -> tuple:
        name = name or self._default_input()
        return self._inst.blobs[name].shape

    def forward(self, blobs=None, start: str | None = None, end: str | None = None,
                **inputs) -> dict[str, np.ndarray]:
        """Run forward; keyword arguments fill input blobs (a new shape re-plans).

        Returns {blob name: array} for the net outputs, or for the tops of
        layer ``end`` when given, plus any names in ``blobs``.
        """
        for name, value in inputs.items():
            self._feed(name, value)
        plan = self._plan()
        first = self._step_index(start) if start else 0
        last = self._step_index(end) if end else None
        plan.run(first, last)
        names = list(self._inst.step(end).node.tops) if end else list(self.outputs)
        names += [b for b in (blobs or ()) if b not in names]
        return {n: self._inst.blobs[n].data for n in names}

    def backward(self, *args, **kwargs):
        raise NetdefError("backward is not available yet: training arrives in a later release")

    def reshape(self) -> None:
        """Re-infer shapes from the current input blob shapes (pycaffe's reshape).

        Also rebuilds the plan, so parameters edited in place are picked up
        by an optimized (fused) plan.
        """
        self.params_changed()
        self._plan()

    @property
    def plan_log(self) -> list[str]:
        """What the compiler did for the current input shapes (fusion, memory)."""
        return list(self._plan().log)

    # ---- weights ----------------------------------------------------------
    def copy_from(self, path, strict: bool = False, quiet: bool = False):
        """Load a .caffemodel by layer name, like Caffe's CopyTrainedLayersFrom."""
        from netdef.io.caffemodel import match_weights, read_caffemodel

        file_layers = read_caffemodel(path)
        net_layers = [(s.name, s.layer.type, [b.shape for b in s.layer.blobs])
                      for s in self._inst.steps if s.layer.blobs]
        report = match_weights(net_layers, file_layers, strict=strict, source=str(path))
        params = self._inst.params()
        for name, arrays in report.arrays.items():
            for blob, arr in zip(params[name], arrays):
                blob.data = np.ascontiguousarray(arr, dtype=DTYPE).reshape(blob.shape)
                self._filled.add(id(blob))
        if not quiet:
            for line in report.warnings:
                self._log(f"warning: {line}")
        self.load_report = report
        self.random_weights = False
        self.params_changed()
        return report

    def params_changed(self) -> None:
        """Call after editing ``net.params[...]`` data in place: an optimized
        plan holds BatchNorm/Scale folded into copies of the conv weights."""
        self._current_plan = None

    def save(self, path) -> None:
        """Write the net and its weights as a .caffemodel (current format, atomic)."""
        from netdef.io.caffemodel import write_caffemodel

        weights = {name: [b.data for b in blobs] for name, blobs in self._inst.params().items()}
        write_caffemodel(path, self.source.param, weights)

    # ---- internals ---------------------------------------------------------
    def _init_params(self, seed: int) -> None:
        from netdef.fillers import make_rng

        self._rng = make_rng(seed)
        for step in self._inst.steps:
            self._fill(step.layer, self._rng)

    def _fill(self, layer, rng) -> None:
        from netdef.fillers import fill

        for blob, filler in zip(layer.blobs, layer.fillers):
            if id(blob) in self._filled:
                continue                   # a shared parameter is filled once
            self._filled.add(id(blob))
            blob.data = fill(blob.shape, filler, rng,
                             where=f"layer '{layer.name}' ({layer.type})")

    def _default_input(self) -> str:
        fed = self._inst.source_tops()
        if not fed:
            raise NetdefError(f"net '{self.name}' has no input blobs")
        return fed[0]

    def _feed(self, name: str, value) -> None:
        fed = self._inst.source_tops()
        if name not in fed:
            raise InputError(f"'{name}' is not an input of net '{self.name}'",
                             hint=did_you_mean(name, fed) or f"inputs: {', '.join(fed)}")
        arr = np.asarray(value, dtype=DTYPE)
        producer = next(s for s in self._inst.steps if not s.bottoms and name in s.node.tops)
        if hasattr(producer.layer, "fed"):
            producer.layer.fed = True      # data layers then leave the blob alone
        blob = self._inst.blobs[name]
        if arr.shape != blob.shape:
            blob.reshape(arr.shape)
        blob.data = np.ascontiguousarray(arr)

    def _shape_key(self) -> tuple:
        return tuple((n, self._inst.blobs[n].shape) for n in self._inst.source_tops())

    def _plan(self) -> Plan:
        """The plan for the current input shapes, re-planning when they changed."""
        key = self._shape_key()
        if self._current_plan is not None and key == self._plan_key:
            return self._current_plan
        if key != self._inferred_key:
            for step in self._inst.reshape():          # layers set up only now
                self._fill(step.layer, self._rng)
            self._inferred_key = key
        if self._inst.unknown:
            blob, why = next(iter(self._inst.unknown.items()))
            raise NetdefError(f"cannot run net '{self.name}': the shape of '{blob}' is unknown "
                              f"({why})")
        old = self._current_plan.arena if self._current_plan is not None else None
        # Fusion folds BatchNorm's stored statistics, which only a TEST net
        # uses; memory reuse is sound for any forward-only plan.
        fuse = self.optimize and self.phase == TEST
        self._current_plan = build_plan(self._inst, reuse=self.optimize, fuse=fuse,
                                        keep_names=self._keep, arena=old)
        self._plan_key = key
        return self._current_plan

    def _step_index(self, name: str) -> int:
        for i, s in enumerate(self._inst.steps):
            if s.name == name:
                return i
        raise NetdefError(f"net '{self.name}' has no layer '{name}'",
                          hint=did_you_mean(name, self.layer_names))

    def __repr__(self) -> str:
        return (f"<netdef.Net '{self.name}' {PHASE_NAMES[self.phase]}: "
                f"{len(self._inst.steps)} layers, inputs {self.inputs}, outputs {self.outputs}>")

