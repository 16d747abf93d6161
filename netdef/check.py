"""``netdef check``: a linter that reports every problem it finds in one run.

Everything is collected: every parse error the parser can step over (an
unknown field or a bad value is skipped and reading goes on; only broken
nesting stops it), every bad size, wiring errors per phase, every layer
that fails shape inference (``instantiate(collect_errors=True)``), and
warnings about nets that load but probably do not do what their author
meant. Each finding points at its ``file:line:col``.

Checks are small functions in ``NET_CHECKS`` (over the whole NetParameter)
and ``PHASE_CHECKS`` (over one shape-inferred phase); adding a check is
adding a function to one of the two lists.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from netdef.compile.instantiate import Instance, instantiate
from netdef.errors import GraphError, Location, NetdefError, ParseError
from netdef.frontend.graph import build_graph, layer_included, make_state
from netdef.frontend.schema import PHASE_NAMES, pb, phase_value

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    severity: str              # "error" or "warning"
    location: str              # file:line:col when known, else the file name
    message: str
    line: int = field(default=0, compare=False, repr=False)   # for ordering only

    def __str__(self) -> str:
        return f"{self.location}: {self.severity}: {self.message}"


class _Context:
    """What the checks see: the source, its layer locations and a sink."""

    def __init__(self, source):
        self.source = source
        self.param: pb.NetParameter = source.param
        self.found: list[Finding] = []
        self.stand_ins: set[str] = set()     # layers replaced after a wiring error
        self.invalid: set[str] = set()       # layers replaced because of a bad size

    def add(self, severity: str, message: str, index: int | None = None,
            loc: Location | None = None) -> None:
        """Record a finding at ``loc``, or at layer ``index`` of the source."""
        if loc is None and index is not None:
            loc = self.source.layer_location(index)
        where = str(loc) if loc is not None else self.source.filename
        self.found.append(Finding(severity, where, message,
                                  loc.line if isinstance(loc, Location) else 0))


# -------------------------------------------------------- helpers ----
def _is_source(layer: pb.LayerParameter) -> bool:
    return not layer.bottom and layer.type != "Input"


def _rule_uses_state_beyond_phase(layer: pb.LayerParameter) -> bool:
    return any(r.stage or r.not_stage or r.HasField("min_level") or r.HasField("max_level")
               for r in (*layer.include, *layer.exclude))


def _has_phase_rule(layer: pb.LayerParameter) -> bool:
    return any(r.HasField("phase") for r in (*layer.include, *layer.exclude))


def is_deploy(param: pb.NetParameter) -> bool:
    """An Input layer, no data layer and no phase rules: a net only for inference."""
    layers = param.layer
    has_input = any(layer.type == "Input" for layer in layers)
    return has_input and not any(_is_source(layer) for layer in layers) and \
        not any(_has_phase_rule(layer) for layer in layers)


# ------------------------------------------------------ net checks ----
def check_never_included(ctx: _Context) -> None:
    for i, layer in enumerate(ctx.param.layer):
        if _rule_uses_state_beyond_phase(layer) or (layer.include and layer.exclude):
            continue
        states = [make_state(p) for p in PHASE_NAMES.values()]
        if not any(layer_included(layer, s) for s in states):
            ctx.add(WARNING, f"layer '{layer.name}' ({layer.type}) is excluded from both "
                    "the TRAIN and the TEST net, so it never runs", index=i)


def check_data_phases(ctx: _Context) -> None:
    if not any(_has_phase_rule(layer) for layer in ctx.param.layer):
        return
    for i, layer in enumerate(ctx.param.layer):
        if _is_source(layer) and not layer.include and not layer.exclude:
            ctx.add(WARNING, f"data layer '{layer.name}' ({layer.type}) has no include rule "
                    "while other layers are phase-specific, so TRAIN and TEST read the same "
                    "data", index=i)


NET_CHECKS = [check_never_included, check_data_phases]


# ---------------------------------------------------- phase checks ----
def check_duplicate_names(ctx: _Context, inst: Instance) -> None:
    first: dict[str, object] = {}
    for node in inst.graph.nodes:
        if node.name in first:
            at = f" (first at {first[node.name]})" if first[node.name] else ""
            ctx.add(WARNING, f"layer name '{node.name}' is used twice in one net{at}; weights "
                    "are matched by name, so both layers would load the same ones",
                    loc=node.where)
        else:
            first[node.name] = node.where


def check_errors(ctx: _Context, inst: Instance) -> None:
    for err in inst.errors:
        msg = err.message + (f" ({err.hint})" if err.hint else "")
        ctx.add(ERROR, msg, loc=err.where if isinstance(err.where, Location) else None)


def check_unknown_shapes(ctx: _Context, inst: Instance) -> None:
    """One warning per layer where shape knowledge stops (not per blob after it)."""
    for step in _settled(inst):
        tops = [t for t in step.node.tops if t in inst.unknown]
        if not tops or step.name in ctx.stand_ins:
            continue
        ctx.add(WARNING, f"the shape of {', '.join(repr(t) for t in tops)} could not be "
                f"inferred: {inst.unknown[tops[0]]}", loc=step.node.where)


def check_param_specs(ctx: _Context, inst: Instance) -> None:
    for step in _settled(inst):
        n_specs, n_blobs = len(step.node.param.param), len(step.layer.blobs)
        if n_specs > n_blobs:
            what = "no parameter blobs" if n_blobs == 0 else f"only {n_blobs} parameter blob(s)"
            ctx.add(ERROR, f"layer '{step.name}' ({step.node.type}) has {n_specs} param "
                    f"spec(s) but {what}; Caffe refuses to load it",
                    loc=step.node.where)


def check_global_stats_in_train(ctx: _Context, inst: Instance) -> None:
    if inst.graph.phase != pb.TRAIN:
        return
    for step in inst.steps:
        p = step.node.param
        if p.type == "BatchNorm" and p.batch_norm_param.HasField("use_global_stats") \
                and p.batch_norm_param.use_global_stats:
            ctx.add(WARNING, f"BatchNorm '{step.name}' has use_global_stats: true in the "
                    "TRAIN net, so it never updates its statistics and normalizes with "
                    "stored ones", loc=step.node.where)


def check_loss_in_deploy(ctx: _Context, inst: Instance) -> None:
    if not is_deploy(ctx.param):
        return
    for step in inst.steps:
        if step.layer.is_loss:
            ctx.add(WARNING, f"loss layer '{step.name}' ({step.node.type}) in a deploy net "
                    "(it has an Input layer and no data layer); a loss needs labels",
                    loc=step.node.where)


def check_unused_tops(ctx: _Context, inst: Instance) -> None:
    """A top nobody reads, when it is not the net's final output.

    Loss and Accuracy tops are meant to be left unread. Among the other
    unread tops, the deepest (longest chain of layers from an input) are
    the net's outputs; every other one is computed for nothing, or its
    consumer is missing. Layers that failed, and what follows them, are
    left out: their problem is reported already.
    """
    failed = {s.name for s in inst.steps} - {s.name for s in _settled(inst)}
    producer, depth, tainted = {}, {}, set()
    for step in inst.steps:
        node = step.node
        d = 1 + max((depth.get(b, 0) for b in node.bottoms), default=0)
        bad = node.name in ctx.stand_ins or node.name in failed or \
            any(b in tainted for b in node.bottoms)
        for t in node.tops:
            producer[t], depth[t] = step, d
            (tainted.add if bad else tainted.discard)(t)
    candidates = [t for t in inst.graph.outputs if t in producer and t not in tainted
                  and not producer[t].layer.is_loss and producer[t].node.type != "Accuracy"]
    if len(candidates) < 2:
        return
    deepest = max(depth[t] for t in candidates)
    final = [t for t in candidates if depth[t] == deepest]
    for t in candidates:
        if t in final:
            continue
        step = producer[t]
        ctx.add(WARNING, f"top '{t}' of layer '{step.name}' ({step.node.type}) is never used "
                f"(the net's output is {', '.join(repr(f) for f in final)})",
                loc=step.node.where)


def check_nothing_trains(ctx: _Context, inst: Instance) -> None:
    if inst.graph.phase != pb.TRAIN:
        return
    learnable = 0
    for step in inst.steps:
        specs = step.node.param.param
        for i, ok in enumerate(step.layer.learnable):
            if not ok:
                continue
            learnable += 1
            if i >= len(specs) or specs[i].lr_mult != 0:
                return
    if learnable:
        ctx.add(WARNING, "every learnable parameter has lr_mult: 0, so training changes "
                "nothing")


def check_graph_warnings(ctx: _Context, inst: Instance) -> None:
    for message in inst.graph.warnings:
        ctx.add(WARNING, message)


def _settled(inst: Instance) -> list:
    """Steps whose setup ran: every bottom known and no error of their own."""
    failed = {e.where for e in inst.errors if e.where is not None}
    return [s for s in inst.steps
            if not any(b in inst.unknown for b in s.node.bottoms) and s.node.where not in failed]


PHASE_CHECKS = [check_duplicate_names, check_errors, check_unknown_shapes, check_param_specs,
                check_global_stats_in_train, check_loss_in_deploy, check_unused_tops,
                check_nothing_trains, check_graph_warnings]


# ------------------------------------------------------------ check ----
def check(net, phase=None, input_shapes=None, level: int = 0, stages=()) -> list[Finding]:
    """Every problem found in ``net`` (path, text or NetSource), errors first.

    With ``phase=None`` both the TRAIN and the TEST net are checked (only
    TEST for a deploy net, which nobody trains); a finding that appears in
    only one of them says which.
    """
    from netdef.frontend.source import NetSource, read_net

    problems: list[NetdefError] = []
    filename = getattr(net, "filename", None) or _name_of(net)
    try:
        source = net if isinstance(net, NetSource) else read_net(net, errors=problems)
    except NetdefError as err:
        problems.append(err)
        source = None
    read_errors = [_finding_from(e, filename) for e in problems]
    if source is None or any(getattr(e, "structural", False) for e in problems):
        return sorted(read_errors, key=lambda f: f.line)   # no whole net to look at

    ctx = _Context(source)
    for index in source.invalid_layers:       # reported above; shapeless from here on
        ctx.invalid.add(source.param.layer[index].name)
        source = _without(source, index, drop=False)
    ctx.source, ctx.param = source, source.param
    for fn in NET_CHECKS:
        fn(ctx)
    net_level = read_errors + list(ctx.found)

    if phase is not None:
        phases = [phase_value(phase)]
    elif is_deploy(source.param):
        phases = [pb.TEST]
    else:
        phases = [pb.TRAIN, pb.TEST]
    per_phase: list[list[Finding]] = []
    for ph in phases:
        ctx.found = []
        _check_phase(ctx, ph, input_shapes, level, stages)
        per_phase.append(ctx.found)

    later = _note_skipped_fields(source, problems, _merge_phases(phases, per_phase))
    findings = net_level + later
    return sorted(findings, key=lambda f: (f.severity != ERROR, f.line))


def _note_skipped_fields(source, problems, findings: list[Finding]) -> list[Finding]:
    """Findings at a layer that also had a field skipped by the parser say so:
    the skipped field (a misspelt 'bottom') may be their cause."""
    starts = [(loc.line, loc.col, i) for i, loc in enumerate(source.layer_locations)
              if isinstance(loc, Location)]
    starts.sort()
    skipped: dict[str, str] = {}               # layer location -> first skipped field
    for err in problems:
        where = err.where
        if not isinstance(where, Location) or not isinstance(err, ParseError):
            continue
        owner = [i for line, col, i in starts if (line, col) <= (where.line, where.col)]
        if owner:
            key = str(source.layer_locations[owner[-1]])
            skipped.setdefault(key, f"{where.line}:{where.col}")
    if not skipped:
        return findings
    return [Finding(f.severity, f.location, f"{f.message} (may follow from the field "
                    f"skipped at line {skipped[f.location]})", f.line)
            if f.location in skipped else f for f in findings]


def _check_phase(ctx: _Context, phase: int, input_shapes, level, stages) -> None:
    source = ctx.source
    stand_ins: set[str] = set(ctx.invalid)
    # build_graph stops at the first wiring error. To report them all, the
    # offending layer is replaced by a shapeless stand-in (an Input with no
    # shape: its tops become "unknown", so later layers are not blamed),
    # or dropped if even the stand-in fails, and the graph is built again.
    for _ in range(len(source.param.layer) + 1):
        try:
            graph = build_graph(source, phase, level, stages, splits=False)
            break
        except GraphError as err:
            index = _layer_at(source, err.where)
            again = index is not None and source.param.layer[index].name in stand_ins
            if not again:          # a stand-in's own error is not the user's
                ctx.found.append(_finding_from(err, source.filename))
            if index is None:
                return
            source = _without(source, index, drop=again)
            stand_ins.add(source.param.layer[index].name)
    else:
        return
    inst = instantiate(graph, input_shapes, collect_errors=True)
    ctx.stand_ins = stand_ins
    for fn in PHASE_CHECKS:
        fn(ctx, inst)


def _layer_at(source, where) -> int | None:
    if not isinstance(where, Location):
        return None
    for i, loc in enumerate(source.layer_locations):
        if loc == where:
            return i
    return None


def _without(source, index: int, drop: bool):
    """A copy of ``source`` with layer ``index`` replaced by a stand-in (or emptied)."""
    param = pb.NetParameter()
    param.CopyFrom(source.param)
    old = param.layer[index]
    stand_in = pb.LayerParameter(name=old.name, type="Input")
    if not drop:
        stand_in.top.extend(old.top)
    else:                      # still there so locations stay parallel, but inert
        stand_in.exclude.add(phase=pb.TRAIN)
        stand_in.exclude.add(phase=pb.TEST)
    param.layer[index].CopyFrom(stand_in)
    return dataclasses.replace(source, param=param)


def _merge_phases(phases: list[int], per_phase: list[list[Finding]]) -> list[Finding]:
    """Findings of all phases once each; tag those seen in only some phases."""
    seen: dict[Finding, list[int]] = {}
    for ph, found in zip(phases, per_phase, strict=True):
        for f in found:
            seen.setdefault(f, [])
            if ph not in seen[f]:
                seen[f].append(ph)
    out = []
    for f, where in seen.items():
        if len(phases) > 1 and len(where) < len(phases):
            names = "/".join(PHASE_NAMES[p] for p in where)
            f = Finding(f.severity, f.location, f"{f.message} [{names} net]", f.line)
        out.append(f)
    return out


def _finding_from(err: NetdefError, filename: str) -> Finding:
    msg = err.message + (f" ({err.hint})" if err.hint else "")
    line = err.where.line if isinstance(err.where, Location) else 0
    return Finding(ERROR, str(err.where) if err.where else filename, msg, line)


def _name_of(net) -> str:
    if isinstance(net, str) and ("{" in net or "\n" in net):
        return "<string>"
    return str(net)


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == ERROR for f in findings)
