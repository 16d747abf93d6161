"""``Net``: the pycaffe-shaped Python API over a compiled plan.

    net = netdef.Net("deploy.prototxt", weights="model.caffemodel")
    net.blobs["data"].data[...] = batch        # or net.forward(data=batch)
    out = net.forward()                        # {"prob": array}
    net.params["conv1"][0].data                # weights, (96, 3, 11, 11)

The Net only wires things together: prototxt -> graph -> layers with
shapes -> plan -> run. By default every blob keeps its own memory so that
any blob can be read after forward, as in pycaffe. ``optimize=True`` lets
the memory planner reuse activation buffers (only net outputs, the blobs
named in ``keep`` and those asked for by ``forward(blobs=...)`` stay
readable); ``netdef run`` and benchmarks use it.
"""
from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from netdef.blob import DTYPE
from netdef.compile.instantiate import Instance, instantiate
from netdef.compile.memory import check_params_fit
from netdef.compile.plan import Plan, build_plan
from netdef.errors import InputError, NetdefError, did_you_mean
from netdef.frontend.graph import build_graph
from netdef.frontend.schema import PHASE_NAMES, TEST, phase_value


@dataclass(frozen=True)
class ParamInfo:
    """A learnable parameter blob with its per-parameter solver multipliers."""

    layer: str
    index: int
    blob: object
    lr_mult: float
    decay_mult: float


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
                 force_backward: bool | None = None, log=None):
        from netdef.frontend.source import NetSource, read_net

        self.source = net if isinstance(net, NetSource) else read_net(net)
        self.phase = phase_value(phase)
        self.graph = build_graph(self.source, self.phase, level, stages)
        self._inst: Instance = instantiate(self.graph, input_shapes)
        # Gradients reach the data only with force_backward (Caffe's rule);
        # the keyword overrides the prototxt's field.
        self.force_backward = (self.source.param.force_backward if force_backward is None
                               else bool(force_backward))
        self.optimize = optimize
        self._keep = tuple(keep)
        self._log = log or (lambda msg: print(msg, file=sys.stderr))
        self._current_plan: Plan | None = None
        self._plan_key = None
        self._inferred_key = self._shape_key()
        self.load_report = None
        self.random_weights = True
        self._filled: set[int] = set()     # ids of parameter blobs holding values
        check_params_fit(self._inst)       # before any parameter is allocated
        if weights is not None:
            self.copy_from(weights, strict=strict)
        self._init_params(seed)            # only what the weights did not cover
        self.reseed(seed)

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
        missing = tuple(b for b in dict.fromkeys(blobs or ())
                        if b not in self._keep and b not in self.outputs)
        if self.optimize and missing:
            # a reused buffer would hold a later layer's output by the time
            # the pass returns: blobs asked for by name are kept from now on
            self._keep += missing
            self._current_plan = None
        plan = self._plan()
        first = self._step_index(start) if start else 0
        last = self._step_index(end) if end else None
        plan.run(first, last)
        names = list(self._inst.step(end).node.tops) if end else list(self.outputs)
        names += [b for b in (blobs or ()) if b not in names]
        return {n: self._inst.blobs[n].data for n in names}

    def backward(self, diffs=None, start: str | None = None, end: str | None = None,
                 **top_diffs) -> dict[str, np.ndarray]:
        """Backward from layer ``start`` (default: the last) down to ``end``
        (default: the first), as pycaffe's ``Net.backward``.

        Keyword arguments set the diff of output blobs first
        (``net.backward(prob=grad)``). Loss tops are seeded with their loss
        weights. Parameter diffs accumulate (``clear_param_diffs`` resets
        them); bottom diffs are overwritten. Returns {name: diff} for the
        net inputs and the blobs named in ``diffs``. The diffs of the data
        are computed only with ``force_backward`` (prototxt or keyword).
        """
        plan = self._plan()
        first = self._step_index(start) if start else None
        last = self._step_index(end) if end else 0
        names = list(self.inputs) + [d for d in (diffs or ()) if d not in self.inputs]
        for name in names:
            if name not in self._inst.blobs:
                raise InputError(f"net '{self.name}' has no blob '{name}'",
                                 hint=did_you_mean(name, list(self._inst.blobs)))
        for name in top_diffs:
            if name not in self.outputs:
                raise InputError(f"'{name}' is not an output of net '{self.name}'",
                                 hint=did_you_mean(name, self.outputs)
                                 or f"outputs: {', '.join(self.outputs)}")
        plan.seed_losses(first, last)
        for name, value in top_diffs.items():      # given diffs win over loss weights
            blob = self._inst.blobs[name]
            blob.diff[...] = np.asarray(value, DTYPE).reshape(blob.shape)
        plan.run_backward(first, last, seed_losses=False)
        return {n: self._inst.blobs[n].diff for n in names}

    def forward_loss(self) -> float:
        """Forward the whole net; the weighted sum of its losses (Caffe's
        ForwardPrefilled return value)."""
        self._plan().run()
        return self.loss

    @property
    def loss(self) -> float:
        """The weighted loss of the last forward pass."""
        total = 0.0
        for step in self._plan().steps:
            for top, weight in zip(step.tops, step.loss_weights):
                if weight:
                    total += weight * float(top.data.sum(dtype=np.float64))
            if not step.tops and step.layer.is_loss and step.layer.loss is not None:
                from netdef.compile.backward import topless_loss_weight

                total += topless_loss_weight(step) * step.layer.loss
        return total

    def forward_backward(self, clear: bool = False) -> float:
        """One forward and one backward pass; returns the loss. Parameter
        diffs accumulate unless ``clear`` zeroes them first."""
        if clear:
            self.clear_param_diffs()
        loss = self.forward_loss()
        self._plan().run_backward(seed_losses=True)
        return loss

    def clear_param_diffs(self) -> None:
        for blob in self._unique_params():
            blob.diff[...] = 0.0

    @property
    def blob_loss_weights(self) -> OrderedDict:
        """{blob name: loss weight} for every blob (pycaffe's)."""
        weights = OrderedDict((n, 0.0) for n in self._inst.blobs)
        for step in self._plan().steps:
            for top, w in zip(step.tops, step.loss_weights):
                if w:
                    weights[top.name] = w
        return weights

    @property
    def learnable_params(self) -> list:
        """One ParamInfo per distinct parameter blob, in Caffe's order (a
        shared parameter appears once, with its owner's multipliers).

        Stored statistics (BatchNorm's mean, variance and factor) are listed
        too, with lr_mult 0, as Caffe lists them: so a solver keeps one
        history blob per parameter and solverstates match Caffe's."""
        from netdef.compile.backward import lr_mults

        seen: set[int] = set()
        out = []
        for step in self._inst.steps:
            specs = step.node.param.param
            mults = lr_mults(step)
            for j, blob in enumerate(step.layer.blobs):
                if id(blob) in seen:
                    continue
                seen.add(id(blob))
                decay = specs[j].decay_mult if j < len(specs) else 1.0
                out.append(ParamInfo(step.name, j, blob, mults[j], float(decay)))
        return out

    def share_with(self, other: Net) -> None:
        """Use ``other``'s parameter blobs (by layer name) as this net's own,
        as Caffe's ShareTrainedLayersWith: a solver's test nets see the
        training net's weights without copies."""
        theirs = other._inst.params()
        for step in self._inst.steps:
            source = theirs.get(step.name)
            if source is None:
                continue
            mine = step.layer.blobs
            if len(source) != len(mine):
                raise NetdefError(
                    f"cannot share layer '{step.name}': {len(mine)} parameter blobs here, "
                    f"{len(source)} in net '{other.name}'")
            for j, blob in enumerate(source):
                if blob.shape != mine[j].shape:
                    raise NetdefError(
                        f"cannot share layer '{step.name}' param {j}: shape "
                        f"{mine[j].shape} here, {blob.shape} in net '{other.name}'")
                mine[j] = blob
                self._filled.add(id(blob))
        self.params_changed()

    def reseed(self, seed: int) -> None:
        """Reseed every random layer (Dropout masks, stochastic pooling, data
        shuffling and augmentation) so a run can be repeated exactly."""
        for i, step in enumerate(self._inst.steps):
            layer = step.layer
            if hasattr(layer, "reseed"):
                layer.reseed(seed + i)
            elif hasattr(layer, "rng"):
                layer.rng = np.random.default_rng([seed, i])

    def first_nonfinite(self) -> str | None:
        """Run forward again, one layer at a time, and name the first layer
        whose output holds NaN or infinity (None if none does), for the
        message when training diverges. Checking right after each layer
        is what makes this right when activations share memory."""
        plan = self._plan()
        for i, step in enumerate(plan.steps):
            plan.run(i, i)
            if not all(np.isfinite(top.data).all() for top in step.tops):
                return step.name
        return None

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
        plan holds BatchNorm/Scale folded into copies of the conv weights,
        and the Winograd transforms of 3x3 convolution weights."""
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

    def _unique_params(self):
        seen: set[int] = set()
        for step in self._inst.steps:
            for blob in step.layer.blobs:
                if id(blob) not in seen:
                    seen.add(id(blob))
                    yield blob

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
                                        keep_names=self._keep, arena=old,
                                        force_backward=self.force_backward)
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

