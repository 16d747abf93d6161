"""Create one layer object per graph node, wire their blobs, infer shapes.

This is everything a net needs short of numbers: summary, draw and check
stop here; the executor adds storage and a schedule on top. In-place layers
share one Blob object between bottom and top, and parameter blobs named in
``param { name: ... }`` are shared between layers (Caffe's weight sharing).
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass, field

from netdef.blob import Blob
from netdef.errors import GraphError, NetdefError
from netdef.frontend.graph import Graph, Node
from netdef.layers.base import Layer, UnknownShape, create_layer, layer_class, shape_text
from netdef.frontend.schema import pb


@dataclass
class Step:
    node: Node
    layer: Layer
    bottoms: list[Blob]
    tops: list[Blob]

    ready: bool = True        # False while setup waits for a bottom's shape
    # Set by compile.backward.mark_backward (Caffe's rules):
    need_backward: bool = False
    propagate_down: list[bool] = field(default_factory=list)   # per bottom
    loss_weights: list[float] = field(default_factory=list)    # per top

    @property
    def name(self) -> str:
        return self.node.name


@dataclass
class Instance:
    """Layers with their blobs and inferred shapes."""

    graph: Graph
    steps: list[Step]
    blobs: dict[str, Blob]                         # by blob name, in creation order
    unknown: dict[str, str] = field(default_factory=dict)   # blob -> why its shape is unknown
    errors: list[NetdefError] = field(default_factory=list)  # collected with collect_errors
    shared: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    _param_owners: dict = field(default_factory=dict, repr=False)

    @property
    def layers(self) -> list[Layer]:
        return [s.layer for s in self.steps]

    def step(self, name: str) -> Step:
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(name)

    def source_tops(self) -> list[str]:
        """Tops of source layers (Input and data layers): the user fills them."""
        return [t for s in self.steps if not s.bottoms for t in s.node.tops]

    def params(self) -> dict[str, list[Blob]]:
        """Parameter blobs by layer name (pycaffe's ``net.params``)."""
        return {s.name: s.layer.blobs for s in self.steps if s.layer.blobs}

    def reshape(self) -> list[Step]:
        """Re-run shape inference after the input shapes changed.

        Layers that could not be set up before (an input without a shape)
        are set up now; they are returned, so the caller can fill their
        new parameter blobs.
        """
        self.unknown.clear()
        newly: list[Step] = []
        for step in self.steps:
            missing = [b.name for b in step.bottoms if b.name in self.unknown]
            if missing:
                _mark_unknown(self, step.node, self.unknown[missing[0]])
                continue
            if step.ready:
                step.layer.remember_bottoms(step.bottoms)
                step.layer.reshape(step.bottoms, step.tops)
            elif not step.bottoms and all(t.shape for t in step.tops):
                step.ready = True              # a source whose tops the user shaped
            else:
                try:
                    step.layer.layer_setup(step.bottoms, step.tops)
                except UnknownShape as why:
                    _mark_unknown(self, step.node, f"layer '{step.name}': {why}")
                    continue
                _share_params(self, step, self._param_owners)
                step.ready = True
                newly.append(step)
        return newly


def instantiate(graph: Graph, input_shapes: dict[str, tuple] | None = None,
                collect_errors: bool = False) -> Instance:
    """Build the layers of ``graph`` and infer every blob shape.

    ``input_shapes`` overrides the shapes of tops of source layers (Input and
    data layers), like ``--input-shape data=1,3,224,224``. With
    ``collect_errors`` a failing layer is recorded and its tops become
    unknown instead of stopping at the first problem (``netdef check``).
    """
    input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
    _check_override_names(graph, input_shapes)
    blobs: dict[str, Blob] = {}
    inst = Instance(graph, [], blobs)
    param_owners: dict[str, tuple[str, int, Blob]] = inst._param_owners
    # Files named by layers (image lists, Python modules) are looked up
    # beside the prototxt too, as Caffe users expect when running elsewhere.
    search_path = None
    if graph.filename and not graph.filename.startswith("<"):
        search_path = str(pathlib.Path(graph.filename).resolve().parent)
    for node in graph.nodes:
        try:
            layer_class(node.type, _field_where(graph, node, "type"), node.name)
            layer = create_layer(node.param, graph.phase, node.where)
        except NetdefError as err:
            if not collect_errors:
                raise
            inst.errors.append(err)
            _mark_unknown(inst, node, f"layer '{node.name}' could not be created")
            continue
        if hasattr(layer, "search_path"):
            layer.search_path = search_path
        bottoms = [blobs[b] for b in node.bottoms]
        tops = []
        for k, t in enumerate(node.tops):
            if k in node.in_place_tops:
                tops.append(bottoms[k])
            else:
                blobs[t] = Blob(name=t)
                tops.append(blobs[t])
        step = Step(node, layer, bottoms, tops)
        inst.steps.append(step)
        missing = [b for b in node.bottoms if b in inst.unknown]
        if missing:
            step.ready = False
            _mark_unknown(inst, node, inst.unknown[missing[0]])
            continue
        try:
            layer.layer_setup(bottoms, tops)
            _override_source_shapes(step, input_shapes)
            _share_params(inst, step, param_owners)
        except UnknownShape as why:
            step.ready = False
            _source_unknown(inst, step, input_shapes, f"layer '{node.name}': {why}")
        except NetdefError as err:
            if not collect_errors:
                raise
            step.ready = False
            inst.errors.append(err)
            _mark_unknown(inst, node, f"layer '{node.name}' failed")
    return inst


def _source_unknown(inst: Instance, step: Step, input_shapes: dict, reason: str) -> None:
    """A layer could not infer its tops. For a source layer (no bottoms), tops
    named in ``input_shapes`` take the user's shape, and tops the layer did
    shape before giving up (a data layer's label) stay known."""
    if step.bottoms:
        _mark_unknown(inst, step.node, reason)
        return
    _override_source_shapes(step, input_shapes)
    for top in step.tops:
        if top.name not in input_shapes and top.shape == ():
            inst.unknown[top.name] = reason


def _field_where(graph: Graph, node: Node, *path):
    """Where a field of the node's layer was written (its start if unknown)."""
    source = graph.source
    if source is None or node.source_index is None:
        return node.where
    return source.field_location(node.source_index, *path) or node.where


def _mark_unknown(inst: Instance, node: Node, reason: str) -> None:
    for t in node.tops:
        inst.unknown[t] = reason
        inst.blobs.setdefault(t, Blob(name=t))


def _check_override_names(graph: Graph, input_shapes: dict) -> None:
    sources = {t for n in graph.nodes if not n.bottoms for t in n.tops}
    for name in input_shapes:
        if name not in sources:
            from netdef.errors import did_you_mean

            raise GraphError(f"--input-shape names '{name}', which is not produced by an "
                             "Input or data layer", hint=did_you_mean(name, sources)
                             or f"source blobs: {', '.join(sorted(sources)) or 'none'}")


def _override_source_shapes(step: Step, input_shapes: dict | None) -> None:
    if not input_shapes or step.bottoms:
        return
    for top in step.tops:
        if top.name in input_shapes:
            top.reshape(input_shapes[top.name])


def _share_params(inst: Instance, step: Step, owners: dict) -> None:
    """Caffe's weight sharing: blobs with the same ParamSpec name are one."""
    layer = step.layer
    for i, spec in enumerate(step.node.param.param):
        if not spec.name or i >= len(layer.blobs):
            continue
        blob = layer.blobs[i]
        if spec.name not in owners:
            owners[spec.name] = (layer.name, i, blob)
            continue
        owner_layer, owner_index, owner_blob = owners[spec.name]
        permissive = spec.share_mode == pb.ParamSpec.PERMISSIVE
        same = (owner_blob.count == blob.count) if permissive else (owner_blob.shape == blob.shape)
        if not same:
            rule = "element count" if permissive else "shape"
            raise GraphError(
                f"layer '{layer.name}' ({layer.type}): parameter '{spec.name}' is shared with "
                f"layer '{owner_layer}' but their {rule}s differ: {shape_text(blob.shape)} vs "
                f"{shape_text(owner_blob.shape)}", where=layer.where)
        layer.blobs[i] = owner_blob
        inst.shared[(layer.name, i)] = (owner_layer, owner_index)
