"""``netdef deploy``: derive the inference net from a train_val net.

What a Caffe user does by hand when publishing a model:

1. keep the TEST-phase layers (rules applied, then removed);
2. replace the data layers by one Input layer whose shape is the data top's
   inferred shape (batch overridable); label tops disappear;
3. replace the main loss by its probability layer (SoftmaxWithLoss ->
   Softmax "prob"); auxiliary losses (a smaller loss_weight, as GoogLeNet's
   loss1/loss2) go, with the branches that only fed them;
4. drop Accuracy layers and anything that only fed removed layers;
5. strip what Caffe ignores at inference: fillers and param specs.

The TEST net is shape-inferred with the same ``build_graph`` + ``instantiate``
as everything else, so the Input shape is what the data layer would produce.
"""
from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from netdef.compile.instantiate import Instance
from netdef.errors import GraphError, InputError
from netdef.frontend.graph import Graph, Node, build_graph
from netdef.layers.base import layer_class
from netdef.frontend.schema import pb
from netdef.summary import analyze, load_source

# Loss type -> the layer type that gives its probabilities, and the
# parameter message the two share.
PROBABILITY = {
    "SoftmaxWithLoss": ("Softmax", "softmax_param"),
    "SigmoidCrossEntropyLoss": ("Sigmoid", None),
}
# Layers that only evaluate (need labels), removed like losses.
EVALUATION_TYPES = {"Accuracy"}
# LayerParameter fields meaningless in a deploy net.
TRAINING_FIELDS = ("include", "exclude", "phase", "param", "propagate_down", "loss_weight")


def _is_data(node: Node) -> bool:
    return not node.bottoms and node.type != "Input"


def _is_loss_type(type_name: str) -> bool:
    try:
        return layer_class(type_name).is_loss
    except GraphError:
        return False


def _loss_weight(node: Node) -> float:
    return node.param.loss_weight[0] if node.param.loss_weight else 1.0


def _strip_fillers(message) -> None:
    """Clear every FillerParameter field, at any depth (descriptor-driven)."""
    for fd, value in message.ListFields():
        if fd.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if fd.message_type.name == "FillerParameter":
            message.ClearField(fd.name)
        elif fd.is_repeated:
            for item in value:
                _strip_fillers(item)
        else:
            _strip_fillers(value)


def _clean(layer: pb.LayerParameter) -> pb.LayerParameter:
    out = pb.LayerParameter()
    out.CopyFrom(layer)
    for name in TRAINING_FIELDS:
        out.ClearField(name)
    _strip_fillers(out)
    return out


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


class _Deriver:
    """One derivation; holds the TEST instance and the decisions taken."""

    def __init__(self, inst: Instance, train_nodes: list[Node]):
        self.inst = inst
        self.train_nodes = train_nodes
        self.nodes = inst.graph.nodes
        self.is_loss = {s.name: s.layer.is_loss for s in inst.steps}
        self.taken = {n.name for n in self.nodes} | {t for n in self.nodes for t in n.tops}

    def input_layer(self, data: list[Node], input_shapes: dict, batch: int | None):
        layer = pb.LayerParameter(name=data[0].name, type="Input")
        for node in data:
            top = node.tops[0]
            shape = input_shapes.get(top)
            if shape is None:
                if top in self.inst.unknown:
                    raise InputError(
                        f"the shape of data top '{top}' of layer '{node.name}' is unknown "
                        f"({self.inst.unknown[top]})", where=node.where,
                        hint=f"give it with --input-shape {top}=N,C,H,W")
                shape = self.inst.blobs[top].shape
            shape = list(shape)
            if batch is not None and shape:
                shape[0] = batch
            layer.top.append(top)
            layer.input_param.shape.add().dim.extend(shape)
        return layer

    def main_losses(self) -> list[Node]:
        losses = [n for n in self.nodes if self.is_loss.get(n.name)]
        if not losses:
            # Some nets (SqueezeNet) compute their loss in TRAIN only; its
            # type still says which probability layer the deploy net wants.
            tops = {t for n in self.nodes for t in n.tops}
            losses = [n for n in self.train_nodes
                      if _is_loss_type(n.type) and n.bottoms and n.bottoms[0] in tops]
        if not losses:
            return []
        best = max(_loss_weight(n) for n in losses)
        return [n for n in losses if _loss_weight(n) == best and best > 0]

    def probability_layer(self, loss: Node, several: bool) -> pb.LayerParameter | None:
        if loss.type not in PROBABILITY:
            return None
        type_name, shared = PROBABILITY[loss.type]
        base = f"{loss.name}_prob" if several else "prob"
        name = _unique(base, self.taken)
        layer = pb.LayerParameter(name=name, type=type_name)
        layer.bottom.append(loss.bottoms[0])
        layer.top.append(name)
        if shared and loss.param.HasField(shared):
            getattr(layer, shared).CopyFrom(getattr(loss.param, shared))
        return layer

    def derive(self, input_shapes: dict, batch: int | None, name: str) -> pb.NetParameter:
        data = [n for n in self.nodes if _is_data(n)]
        if not data and not any(n.type == "Input" for n in self.nodes):
            raise GraphError("the TEST net has no data or Input layer, so there is no input "
                             "to derive a deploy net from")
        labels = {t for n in data for t in n.tops[1:]}
        main = self.main_losses()
        probs = {n.name: self.probability_layer(n, len(main) > 1) for n in main}
        removed = {n.name for n in self.nodes
                   if _is_data(n) or self.is_loss.get(n.name) or n.type in EVALUATION_TYPES}
        # Outputs of the deploy net: probabilities, the predictions of main
        # losses without a probability counterpart, and surviving outputs.
        wanted = set()
        for loss in main:
            wanted.add(loss.bottoms[0])
        producers = {t for n in self.nodes if n.name not in removed for t in n.tops}
        wanted |= {t for t in self.inst.graph.outputs if t in producers}
        kept = self._reachable([n for n in self.nodes if n.name not in removed], wanted)
        self._raise_errors_of(kept)
        for node in kept:
            bad = [b for b in node.bottoms if b in labels]
            if bad:
                raise GraphError(f"layer '{node.name}' ({node.type}) reads the label blob "
                                 f"'{bad[0]}', which a deploy net does not have",
                                 where=node.where)
        used = {b for n in kept for b in n.bottoms}
        data = [n for n in data if n.tops[0] in used]    # e.g. not a label-only source
        if not kept or (not data and not any(n.type == "Input" for n in kept)):
            raise GraphError("nothing in the TEST net leads from its input to an output "
                             "once losses, accuracies and labels are removed")
        net = pb.NetParameter(name=name)
        if data:
            net.layer.append(self.input_layer(data, input_shapes, batch))
        for node in kept:
            net.layer.append(_clean(node.param))
        for loss in main:
            if probs[loss.name] is not None:
                net.layer.append(probs[loss.name])
        return net

    def _raise_errors_of(self, kept: list[Node]) -> None:
        """Shape errors matter only in layers the deploy net keeps (a loss
        may disagree with a user-given input shape; it is dropped anyway)."""
        where = {n.where for n in kept if n.where is not None}
        for err in self.inst.errors:
            if err.where in where:
                raise err

    @staticmethod
    def _reachable(nodes: list[Node], wanted: set[str]) -> list[Node]:
        """The nodes that contribute to a wanted blob, in order."""
        needed, keep = set(wanted), []
        for node in reversed(nodes):
            if any(t in needed for t in node.tops):
                keep.append(node)
                needed |= set(node.bottoms)
        return keep[::-1]


def make_deploy(train_val_source, input_shapes=None, batch: int | None = None) -> pb.NetParameter:
    """The deploy NetParameter derived from a train_val net (path, text or NetSource).

    ``input_shapes`` ({top: shape}) fixes data shapes that cannot be inferred
    (or should differ); ``batch`` replaces the first dimension of every input.
    """
    if batch is not None and batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    input_shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
    source = load_source(train_val_source)
    if isinstance(source, Graph):
        raise GraphError("make_deploy needs the net itself (a path, text or NetSource), "
                         "not a Graph built for one phase")
    inst = analyze(source, "TEST", input_shapes, collect_errors=True)
    try:
        train_nodes = build_graph(source, "TRAIN", splits=False).nodes
    except GraphError:
        train_nodes = []        # only consulted when the TEST net has no loss
    return _Deriver(inst, train_nodes).derive(input_shapes, batch, inst.graph.name)
