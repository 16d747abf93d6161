"""From a (current-format) NetParameter to a wired layer graph.

Small passes over plain data, each testable with an inline prototxt:

1. ``filter_by_state``: Caffe's include/exclude rules for phase, level, stage.
2. ``wire``: resolve every bottom to the layer that produced it, recognise
   in-place layers (top[i] == bottom[i]), reject duplicate producers and
   undefined bottoms, order layers topologically and report cycles.
3. ``insert_splits``: a blob read by several layers gets a Split layer, so
   that in backward each reader has its own gradient to accumulate.

The result is a ``Graph`` of ``Node`` records in execution order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from netdef.errors import GraphError, Location, did_you_mean
from netdef.frontend.schema import PHASE_NAMES, pb, phase_value


@dataclass
class Node:
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    param: pb.LayerParameter
    where: Location | None = None
    source_index: int | None = None   # index in the NetParameter (None: inserted)
    inserted: bool = False            # a Split added by insert_splits

    @property
    def in_place_tops(self) -> list[int]:
        return [i for i, t in enumerate(self.tops)
                if i < len(self.bottoms) and self.bottoms[i] == t]

    @property
    def in_place(self) -> bool:
        return bool(self.in_place_tops)


@dataclass
class Graph:
    name: str
    phase: int
    nodes: list[Node]
    filename: str = "<string>"
    state: pb.NetState | None = None
    excluded: list[str] = field(default_factory=list)   # layers dropped by rules
    warnings: list[str] = field(default_factory=list)
    source: object = None                                # the NetSource, if any

    @property
    def phase_name(self) -> str:
        return PHASE_NAMES[self.phase]

    @property
    def inputs(self) -> list[str]:
        """Tops of Input layers (pycaffe's ``net.inputs``)."""
        return [t for n in self.nodes if n.type == "Input" for t in n.tops]

    @property
    def outputs(self) -> list[str]:
        """Blobs left unconsumed after the last layer (``net.outputs``)."""
        live: dict[str, None] = {}
        for node in self.nodes:
            for b in node.bottoms:
                live.pop(b, None)
            for t in node.tops:
                live[t] = None
        return list(live)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)


# --------------------------------------------------------------- state ----
def make_state(phase="TEST", level: int = 0, stages=()) -> pb.NetState:
    state = pb.NetState(phase=phase_value(phase), level=level)
    state.stage.extend(stages)
    return state


def rule_met(rule: pb.NetStateRule, state: pb.NetState) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def layer_included(layer: pb.LayerParameter, state: pb.NetState,
                   where: Location | None = None) -> bool:
    if layer.include and layer.exclude:
        raise GraphError(f"layer '{layer.name}' has both include and exclude rules; "
                         "Caffe allows only one kind", where=where)
    if layer.include:
        return any(rule_met(r, state) for r in layer.include)
    return not any(rule_met(r, state) for r in layer.exclude)


def filter_by_state(net: pb.NetParameter, state: pb.NetState, locations=None):
    """Indices of the layers kept for ``state`` and names of those dropped."""
    kept, dropped = [], []
    for i, layer in enumerate(net.layer):
        where = locations[i] if locations else None
        (kept if layer_included(layer, state, where) else dropped).append(i)
    return kept, [net.layer[i].name for i in dropped]


# ---------------------------------------------------------------- wire ----
def wire(nodes: list[Node], warnings: list[str], left_out: dict | None = None,
         state: pb.NetState | None = None) -> list[Node]:
    """Check producers/consumers; return the nodes in a valid execution order.

    ``left_out`` maps a blob to the (layer, location) of layers that produce
    it but were excluded by the net ``state``, so an unproduced bottom can
    say which state would keep its producer.
    """
    producers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for t in node.tops:
            producers.setdefault(t, []).append(i)

    produced: dict[str, int] = {}          # blob -> node that last wrote it so far
    deps: list[set[int]] = []
    forward_refs: list[tuple[int, str]] = []
    for i, node in enumerate(nodes):
        mine: set[int] = set()
        for b in node.bottoms:
            if b in produced:
                mine.add(produced[b])
                continue
            later = [j for j in producers.get(b, []) if j > i]
            if not later:
                if left_out and b in left_out:
                    raise _excluded_producer(node, b, left_out[b], state)
                known = [t for t in producers if t not in node.tops]
                raise GraphError(
                    f"layer '{node.name}' ({node.type}): bottom '{b}' is not produced by any "
                    "layer" + (" kept in this phase" if known else ""),
                    where=node.where, hint=did_you_mean(b, known))
            mine.add(later[0])
            forward_refs.append((i, b))
        for k, t in enumerate(node.tops):
            if t in produced and not (k < len(node.bottoms) and node.bottoms[k] == t):
                first = nodes[produced[t]]
                inplace_hint = None
                if t in node.bottoms:
                    inplace_hint = ("an in-place layer must list the blob at the same position "
                                    "in bottom and top")
                at = f" (at {first.where})" if first.where else ""
                raise GraphError(
                    f"layer '{node.name}' ({node.type}): top '{t}' is already produced by "
                    f"layer '{first.name}'{at}", where=node.where, hint=inplace_hint)
            produced[t] = i
        deps.append(mine)

    if not forward_refs:
        return nodes
    order = _topological_order(nodes, deps)
    for i, b in forward_refs:
        warnings.append(f"layer '{nodes[i].name}' reads '{b}' before the layer that "
                        "produces it; layers were reordered")
    return [nodes[i] for i in order]


def _excluded_producer(node: Node, blob: str, producers: list, state) -> GraphError:
    """A bottom whose producers the net state leaves out: say which state keeps one."""
    seen, options, described = set(), [], []
    for layer, where in producers:
        rules = "; ".join(_rule_text(kind, r) for kind in ("include", "exclude")
                          for r in getattr(layer, kind))
        same_file = where is not None and node.where is not None and \
            getattr(where, "file", None) == getattr(node.where, "file", None)
        at = f" (line {where.line})" if same_file else (f" at {where}" if where else "")
        described.append(f"'{layer.name}'{at} {rules or 'without rules'}")
        for rule in layer.include:
            flags = _state_flags(rule, state)
            if flags and flags not in seen:
                seen.add(flags)
                options.append(flags)
    now = _state_text(state)
    hint = ("select a state that keeps one: " + ", or ".join(options)) if options else \
        "change the include/exclude rules or the --phase/--level/--stage options"
    return GraphError(f"layer '{node.name}' ({node.type}): bottom '{blob}' comes only from "
                      f"layers that this net state ({now}) leaves out: {', '.join(described)}",
                      where=node.where, hint=hint)


def _rule_text(kind: str, rule: pb.NetStateRule) -> str:
    parts = []
    if rule.HasField("phase"):
        parts.append(f"phase: {PHASE_NAMES[rule.phase]}")
    if rule.HasField("min_level"):
        parts.append(f"min_level: {rule.min_level}")
    if rule.HasField("max_level"):
        parts.append(f"max_level: {rule.max_level}")
    parts += [f'stage: "{st}"' for st in rule.stage]
    parts += [f'not_stage: "{st}"' for st in rule.not_stage]
    return f"{kind} {{ {' '.join(parts)} }}"


def _state_text(state: pb.NetState | None) -> str:
    if state is None:
        return "?"
    stages = ", ".join(f"'{st}'" for st in state.stage) or "none"
    return f"phase {PHASE_NAMES[state.phase]}, level {state.level}, stages {stages}"


def _state_flags(rule: pb.NetStateRule, state: pb.NetState | None) -> str:
    """Command-line options giving a state that meets ``rule`` (from ``state``)."""
    phase = PHASE_NAMES[rule.phase] if rule.HasField("phase") else \
        (PHASE_NAMES[state.phase] if state is not None else "TEST")
    flags = [f"--phase {phase}"]
    level = state.level if state is not None else 0
    if rule.HasField("min_level") and level < rule.min_level:
        level = rule.min_level
    if rule.HasField("max_level") and level > rule.max_level:
        level = rule.max_level
    if level:
        flags.append(f"--level {level}")
    stages = [st for st in (state.stage if state is not None else ()) if st not in rule.not_stage]
    stages += [st for st in rule.stage if st not in stages]
    flags += [f"--stage {st}" for st in stages]
    return " ".join(flags)


def _topological_order(nodes: list[Node], deps: list[set[int]]) -> list[int]:
    remaining = {i: set(d) - {i} for i, d in enumerate(deps)}
    order: list[int] = []
    while remaining:
        ready = [i for i, d in remaining.items() if not d]
        if not ready:
            cycle = _find_cycle(remaining)
            names = " -> ".join(f"'{nodes[i].name}'" for i in cycle)
            raise GraphError(f"the layers form a cycle: {names}", where=nodes[cycle[0]].where)
        first = min(ready)                   # keep file order where possible
        order.append(first)
        del remaining[first]
        for d in remaining.values():
            d.discard(first)
    return order


def _find_cycle(remaining: dict[int, set[int]]) -> list[int]:
    start = min(remaining)
    path, seen = [start], {start: 0}
    while True:
        nxt = min(remaining[path[-1]])
        if nxt in seen:
            return path[seen[nxt]:] + [nxt]
        seen[nxt] = len(path)
        path.append(nxt)


# -------------------------------------------------------------- splits ----
def split_blob_name(layer: str, blob: str, top_index: int, split_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{split_index}"


def split_layer_name(layer: str, blob: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def insert_splits(nodes: list[Node]) -> list[Node]:
    """Give every blob version read by more than one layer a Split layer
    (Caffe's naming, so weights and blob names match Caffe's nets)."""
    # (producer node index, top index) of the version each bottom reads.
    last_writer: dict[str, tuple[int, int]] = {}
    readers: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for i, node in enumerate(nodes):
        for j, b in enumerate(node.bottoms):
            src = last_writer.get(b)
            if src is not None:
                readers.setdefault(src, []).append((i, j))
        for k, t in enumerate(node.tops):
            last_writer[t] = (i, k)

    renamed: dict[tuple[int, int], str] = {}
    splits_after: dict[int, list[Node]] = {}
    reweighted: dict[int, Node] = {}
    for (pi, k), users in readers.items():
        producer = reweighted.get(pi, nodes[pi])
        weight = _written_loss_weight(producer, k)
        # A top that carries a loss weight and is also read counts the loss
        # as one more reader: split top 0 carries the weight (Caffe's rule),
        # so the loss gradient and the readers' gradients add up.
        if len(users) + (weight != 0.0) < 2:
            continue
        blob = producer.tops[k]
        n_tops = len(users) + (weight != 0.0)
        tops = [split_blob_name(producer.name, blob, k, s) for s in range(n_tops)]
        param = pb.LayerParameter(name=split_layer_name(producer.name, blob, k), type="Split")
        if weight:
            param.loss_weight.extend([weight] + [0.0] * len(users))
            moved = pb.LayerParameter()
            moved.CopyFrom(producer.param)
            del moved.loss_weight[:]
            moved.loss_weight.extend([0.0 if i == k else w for i, w in
                                      enumerate(_padded_weights(producer))])
            producer = Node(producer.name, producer.type, producer.bottoms,
                            list(producer.tops), moved, producer.where,
                            producer.source_index, producer.inserted)
            reweighted[pi] = producer
        for (ci, j), new_name in zip(users, tops[n_tops - len(users):]):
            renamed[(ci, j)] = new_name
            consumer = nodes[ci]
            if j in consumer.in_place_tops:
                raise GraphError(
                    f"layer '{consumer.name}' ({consumer.type}) modifies '{blob}' in place "
                    f"while {len(users) - 1} other layer(s) also read it; give its top "
                    "another name", where=consumer.where)
        param.bottom.append(blob)
        param.top.extend(tops)
        splits_after.setdefault(pi, []).append(
            Node(param.name, "Split", [blob], tops, param, producer.where, inserted=True))

    if not splits_after:
        return nodes
    out: list[Node] = []
    for i, node in enumerate(nodes):
        node = reweighted.get(i, node)
        bottoms = [renamed.get((i, j), b) for j, b in enumerate(node.bottoms)]
        if bottoms != node.bottoms:
            node = Node(node.name, node.type, bottoms, list(node.tops), node.param,
                        node.where, node.source_index, node.inserted)
        out.append(node)
        out.extend(splits_after.get(i, []))
    return out


def _padded_weights(node: Node) -> list[float]:
    weights = list(node.param.loss_weight)
    return weights + [0.0] * (len(node.tops) - len(weights))


def _written_loss_weight(node: Node, k: int) -> float:
    """The ``loss_weight`` written for top ``k`` (0 when none is written)."""
    weights = node.param.loss_weight
    return float(weights[k]) if k < len(weights) else 0.0


# --------------------------------------------------------------- build ----
def build_graph(source, phase="TEST", level: int = 0, stages=(), splits: bool = True) -> Graph:
    """NetSource (or NetParameter) -> Graph for one net state.

    ``splits=False`` leaves shared blobs unsplit (what summary and draw show).
    """
    if isinstance(source, pb.NetParameter):
        net, filename, locations = source, "<string>", None
    else:
        net, filename = source.param, source.filename
        locations = source.layer_locations
    if net.layers:
        raise GraphError("the net still has legacy 'layers' entries; read it with "
                         "netdef.read_net, which upgrades them", where=filename)
    state = make_state(phase, level, stages)
    kept, dropped = filter_by_state(net, state, locations)
    nodes = []
    for i in kept:
        layer = net.layer[i]
        where = locations[i] if locations else None
        nodes.append(Node(layer.name, layer.type, list(layer.bottom), list(layer.top),
                          layer, where, source_index=i))
    left_out: dict[str, list] = {}
    kept_set = set(kept)
    for i, layer in enumerate(net.layer):
        if i not in kept_set:
            for t in layer.top:
                left_out.setdefault(t, []).append((layer, locations[i] if locations else None))
    warnings: list[str] = []
    nodes = wire(nodes, warnings, left_out, state)
    if splits:
        nodes = insert_splits(nodes)
    return Graph(net.name, state.phase, nodes, filename, state, dropped, warnings,
                 source=None if isinstance(source, pb.NetParameter) else source)
