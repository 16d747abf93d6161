"""``netdef summary``: a Keras-like table of the shape-inferred graph.

A view, not a program of its own: the net is read by the frontend, filtered
and wired by ``graph.build_graph`` and shape-inferred by ``instantiate``,
exactly as the runtime does, so the table says what actually runs. Split
layers are left out (``splits=False``): they are an implementation detail of
backward, not part of the user's net.

``draw`` and ``check`` start from the same ``analyze`` helper.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from netdef.compile.instantiate import Instance, instantiate
from netdef.frontend.graph import Graph, build_graph

BYTES_PER_VALUE = 4   # float32 everywhere


# ------------------------------------------------------------- loading ----
def load_source(net):
    """A path, prototxt text or NetSource -> NetSource (a Graph is returned as is)."""
    from netdef.frontend.source import NetSource, read_net

    if isinstance(net, (Graph, NetSource)):
        return net
    return read_net(net)


def analyze(net, phase="TEST", input_shapes=None, level: int = 0, stages=(),
            collect_errors: bool = False) -> Instance:
    """Read, build (without splits) and shape-infer ``net`` for one net state."""
    source = load_source(net)
    graph = source if isinstance(source, Graph) else build_graph(
        source, phase, level, stages, splits=False)
    return instantiate(graph, input_shapes, collect_errors=collect_errors)


# ------------------------------------------------------------- records ----
@dataclass
class LayerSummary:
    name: str
    type: str
    kind: str
    bottoms: list[str]
    tops: list[str]
    top_shapes: list[tuple | None]       # None where the shape is unknown
    params: int                          # learnable values (shared blobs counted once)
    stored: int                          # every parameter value, incl. BN statistics
    param_shapes: list[tuple]
    macs: int | None                     # None when a bottom shape is unknown
    param: object = field(default=None, repr=False)   # the LayerParameter (draw labels)
    where: object = None                 # source Location, if known
    shared: list[int] = field(default_factory=list)   # blob indices owned by another layer

    @property
    def in_place(self) -> bool:
        return any(i < len(self.bottoms) and self.bottoms[i] == t
                   for i, t in enumerate(self.tops))

    def to_json(self) -> dict:
        return {
            "name": self.name, "type": self.type, "kind": self.kind,
            "bottoms": list(self.bottoms), "tops": list(self.tops),
            "top_shapes": [list(s) if s is not None else None for s in self.top_shapes],
            "params": self.params, "stored": self.stored,
            "param_shapes": [list(s) for s in self.param_shapes],
            "macs": self.macs,
        }


@dataclass
class NetSummary:
    name: str
    phase: str
    layers: list[LayerSummary]
    inputs: list[str]
    outputs: list[str]
    blob_shapes: dict[str, tuple | None]
    total_params: int
    total_stored: int
    total_macs: int
    activation_bytes: int
    notes: list[str] = field(default_factory=list)

    @property
    def param_bytes(self) -> int:
        return self.total_stored * BYTES_PER_VALUE

    def layer(self, name: str) -> LayerSummary:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def to_json(self) -> dict:
        return {
            "name": self.name, "phase": self.phase,
            "inputs": list(self.inputs), "outputs": list(self.outputs),
            "layers": [layer.to_json() for layer in self.layers],
            "blob_shapes": {k: list(v) if v is not None else None
                            for k, v in self.blob_shapes.items()},
            "total_params": self.total_params, "total_stored": self.total_stored,
            "total_macs": self.total_macs, "activation_bytes": self.activation_bytes,
            "param_bytes": self.param_bytes, "notes": list(self.notes),
        }


# ----------------------------------------------------------- summarize ----
def summarize(net, phase="TEST", input_shapes=None, level: int = 0, stages=()) -> NetSummary:
    """Shapes, parameter counts and MACs of every layer of ``net``.

    ``net`` is a path, prototxt text, a NetSource or an already built Graph
    (then ``phase``, ``level`` and ``stages`` are those of the graph).
    """
    return summarize_instance(analyze(net, phase, input_shapes, level, stages))


def summarize_instance(inst: Instance) -> NetSummary:
    graph = inst.graph
    layers = [_layer_summary(inst, step) for step in inst.steps]
    # Distinct parameter blobs: a blob shared by name is counted once.
    seen: dict[int, tuple[int, bool]] = {}
    for step in inst.steps:
        for blob, learnable in zip(step.layer.blobs, step.layer.learnable, strict=True):
            seen.setdefault(id(blob), (blob.count, learnable))
    total_params = sum(n for n, learnable in seen.values() if learnable)
    total_stored = sum(n for n, _ in seen.values())
    shapes = {name: (None if name in inst.unknown else blob.shape)
              for name, blob in inst.blobs.items()}
    activations = sum(b.count for name, b in inst.blobs.items() if name not in inst.unknown)
    return NetSummary(
        name=graph.name, phase=graph.phase_name, layers=layers,
        inputs=list(graph.inputs), outputs=list(graph.outputs), blob_shapes=shapes,
        total_params=total_params, total_stored=total_stored,
        total_macs=sum(layer.macs or 0 for layer in layers),
        activation_bytes=activations * BYTES_PER_VALUE, notes=_notes(inst))


def _layer_summary(inst: Instance, step) -> LayerSummary:
    layer, node = step.layer, step.node
    top_shapes = [None if t in inst.unknown else blob.shape
                  for t, blob in zip(node.tops, step.tops, strict=True)]
    known = all(b not in inst.unknown for b in node.bottoms) and None not in top_shapes
    shared = [i for i in range(len(layer.blobs)) if (node.name, i) in inst.shared]
    own = [(b, ok) for i, (b, ok) in enumerate(zip(layer.blobs, layer.learnable, strict=True))
           if i not in shared]
    return LayerSummary(
        name=node.name, type=node.type, kind=layer.kind,
        bottoms=list(node.bottoms), tops=list(node.tops), top_shapes=top_shapes,
        params=sum(b.count for b, ok in own if ok), stored=sum(b.count for b, _ in own),
        param_shapes=[b.shape for b in layer.blobs],
        macs=int(layer.macs(step.bottoms, step.tops)) if known else None,
        param=node.param, where=node.where, shared=shared)


def _notes(inst: Instance) -> list[str]:
    notes: list[str] = []
    source = inst.graph.source
    notes += [f"upgrade: {line}" for line in getattr(source, "upgrade_log", None) or []]
    notes += list(inst.graph.warnings)
    for step in inst.steps:
        note = getattr(step.layer, "note", None)
        if note:
            notes.append(f"layer '{step.name}': {note}")
    for (layer, i), (owner, j) in inst.shared.items():
        notes.append(f"layer '{layer}' parameter {i} is shared with layer '{owner}' "
                     f"parameter {j} (counted once)")
    for reason in dict.fromkeys(inst.unknown.values()):
        blobs = [b for b, r in inst.unknown.items() if r == reason]
        notes.append(f"unknown shape of {_names(blobs)}: {reason}")
    return notes


def _names(blobs: list[str], limit: int = 4) -> str:
    shown = ", ".join(f"'{b}'" for b in blobs[:limit])
    more = len(blobs) - limit
    return shown + (f" and {more} more" if more > 0 else "")


# ------------------------------------------------------- human numbers ----
def _scaled(n: float, base: int, units: tuple[str, ...]) -> str:
    """Divide by ``base`` until below it (or out of units); one decimal."""
    i = 0
    n /= base
    while abs(n) >= base and i < len(units) - 1:
        n /= base
        i += 1
    return f"{n:.1f} {units[i]}"


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB' (binary units, as memory is counted)."""
    return f"{n:.0f} B" if abs(n) < 1024 else _scaled(n, 1024, ("KiB", "MiB", "GiB", "TiB"))


def human_count(n: float) -> str:
    """724_406_816 -> '724.4 M' (decimal units, as operations are counted)."""
    return f"{n:.0f}" if abs(n) < 1000 else _scaled(n, 1000, ("K", "M", "G", "T"))


def shape_str(shape: tuple | None) -> str:
    return "?" if shape is None else "(" + ", ".join(str(d) for d in shape) + ")"


# -------------------------------------------------------------- table ----
_HEADERS = ("Layer (type)", "Bottoms -> Tops", "Top shape", "Params", "MACs")
_MIN_TEXT = 12   # narrowest a truncated text column may become


def _rows(summary: NetSummary) -> list[tuple[str, ...]]:
    """One row per top; a layer's 2nd.. tops get continuation rows."""
    rows = []
    for layer in summary.layers:
        if layer.in_place and layer.bottoms == layer.tops:
            wiring = f"{', '.join(layer.tops)} (in place)"
        else:
            wiring = f"{', '.join(layer.bottoms) or '-'} -> {', '.join(layer.tops) or '-'}"
        macs = "?" if layer.macs is None else (human_count(layer.macs) if layer.macs else "0")
        shapes = [shape_str(s) for s in layer.top_shapes] or [""]
        rows.append((f"{layer.name} ({layer.type})", wiring, shapes[0],
                     f"{layer.params:,}", macs))
        rows += [("", "", s, "", "") for s in shapes[1:]]
    return rows


def _fit(widths: list[int], width: int | None) -> list[int]:
    """Shrink the two text columns (widest first) until the table fits ``width``."""
    if width is None:
        return widths
    widths = list(widths)
    excess = sum(widths) + 2 * (len(widths) - 1) - width
    while excess > 0:
        i = max((0, 1), key=lambda k: widths[k])
        if widths[i] <= _MIN_TEXT:
            break
        widths[i] -= 1
        excess -= 1
    return widths


def _cell(text: str, w: int, right: bool) -> str:
    if len(text) > w:
        text = text[:max(w - 1, 0)] + "…"
    return text.rjust(w) if right else text.ljust(w)


def format_table(summary: NetSummary, width: int | None = None) -> str:
    """The summary as text: one row per layer, then totals.

    ``width`` limits the line length (long layer names and wiring are cut
    with '…'); None keeps every cell whole.
    """
    rows = _rows(summary)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(_HEADERS)]
    widths = _fit(widths, width)
    right = (False, False, False, True, True)

    def line(cells):
        return "  ".join(_cell(c, w, r) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    total_width = sum(widths) + 2 * (len(widths) - 1)
    title = f'Net "{summary.name or "(unnamed)"}"  phase {summary.phase}'
    out = [title, "=" * total_width, line(_HEADERS), "=" * total_width]
    out += [line(r) for r in rows]
    out.append("=" * total_width)
    out += _totals(summary)
    if summary.notes:
        out.append("Notes:")
        out += [f"  - {n}" for n in summary.notes]
    return "\n".join(out)


def _totals(s: NetSummary) -> list[str]:
    lines = [f"Total params: {s.total_params:,} "
             f"({human_bytes(s.total_params * BYTES_PER_VALUE)})"]
    if s.total_stored != s.total_params:
        lines.append(f"Stored values: {s.total_stored:,} ({human_bytes(s.param_bytes)}; "
                     "incl. non-learnable statistics)")
    lines.append(f"MACs: {human_count(s.total_macs)} per forward")
    lines.append(f"Activations: {human_bytes(s.activation_bytes)} per forward "
                 "(every blob, in-place tops once)")
    lines.append(f"Inputs: {', '.join(s.inputs) or '-'}    Outputs: {', '.join(s.outputs) or '-'}")
    return lines


def print_summary(summary: NetSummary, print_fn=print, width: int | None = None) -> None:
    """Print ``format_table(summary)``; ``width`` defaults to the terminal's."""
    if width is None:
        width = shutil.get_terminal_size((120, 24)).columns
    print_fn(format_table(summary, width))
