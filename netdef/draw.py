"""``netdef draw``: the shape-inferred graph as a Graphviz picture.

A view of ``summary.summarize`` (principle 14): the same filtered, wired and
shape-inferred graph the runtime uses, so the picture never disagrees with
what runs. What it adds is presentation:

* one box per layer, coloured by the layer's family (``STYLES`` keyed by
  ``Layer.kind``), with its key parameters (``LABELS`` keyed by type), its
  parameter count and its MACs;
* in-place layers (ReLU, Dropout, BatchNorm, Scale ...) stacked into the box
  of the layer whose output they modify, so ``conv1 -> relu1`` is one box;
* blobs as edges labelled with their shape; the net's outputs as ovals;
  labels reach each loss from a small dashed oval instead of a long edge
  from the data layer across the whole picture;
* repeated modules in clusters: names sharing a prefix before '/'
  (``inception_3a/...``, ``fire2/...``) and ResNet's ``res2a_branch2b`` /
  ``bn2a_branch2b`` / ``res2a`` naming (a cluster per block inside a
  cluster per stage).
"""
from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from netdef.errors import NetdefError
from netdef.frontend.schema import pb
from netdef.summary import LayerSummary, NetSummary, human_count, summarize

# ------------------------------------------------------------- styles ----
# Fill colour per layer family (Layer.kind). Unknown kinds use "other".
STYLES: dict[str, str] = {
    "data": "#C8E6C9",         # sources: Input, Data, HDF5Data ...
    "conv": "#FFCC80",         # Convolution, Deconvolution, Im2col
    "pool": "#B3E5FC",
    "dense": "#FFE082",        # InnerProduct, Embed
    "activation": "#FFF9C4",   # ReLU, Sigmoid, Dropout ...
    "norm": "#E1BEE7",         # LRN, BatchNorm, Scale, MVN
    "structure": "#CFD8DC",    # Concat, Slice, Reshape, Flatten ...
    "elementwise": "#B2DFDB",  # Eltwise, Reduction
    "softmax": "#F0F4C3",
    "output": "#F0F4C3",       # ArgMax
    "loss": "#F8BBD0",         # losses, Accuracy
    "other": "#EEEEEE",
}
FONT = "Helvetica"
BORDER = "#546E7A"
FORMATS = ("dot", "gv", "svg", "png", "pdf")
INSTALL_HINT = ("Graphviz's 'dot' is not installed: apt-get install graphviz (Debian/Ubuntu), "
                "brew install graphviz (macOS), or write a .dot file")


def style_for(kind: str) -> str:
    return STYLES.get(kind, STYLES["other"])


# -------------------------------------------------------------- labels ----
def _hw(repeated, h: int, w: int, has_hw: bool, default: int) -> tuple[int, int]:
    """Caffe's spatial fields: explicit _h/_w win over the repeated field."""
    if has_hw:
        return h, w
    values = list(repeated) or [default]
    return values[0], values[-1] if len(values) > 1 else values[0]


def _pair(hw: tuple[int, int]) -> str:
    return f"{hw[0]}×{hw[1]}"


def _one(hw: tuple[int, int]) -> str:
    return str(hw[0]) if hw[0] == hw[1] else _pair(hw)


def _conv(layer: pb.LayerParameter) -> list[str]:
    p = layer.convolution_param
    k = _hw(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h"), 0)
    s = _hw(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h"), 1)
    pad = _hw(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h"), 0)
    d = _hw(p.dilation, 0, 0, False, 1)
    parts = [f"{p.num_output} out", _pair(k)]
    parts += [f"s{_one(s)}"] if s != (1, 1) else []
    parts += [f"p{_one(pad)}"] if pad != (0, 0) else []
    parts += [f"d{_one(d)}"] if d != (1, 1) else []
    parts += [f"g{p.group}"] if p.group != 1 else []
    parts += ["no bias"] if not p.bias_term else []
    return [" · ".join(parts)]


def _pool(layer: pb.LayerParameter) -> list[str]:
    p = layer.pooling_param
    method = pb.PoolingParameter.PoolMethod.Name(p.pool)
    if p.global_pooling:
        return [f"{method} global"]
    k = _hw([p.kernel_size] if p.HasField("kernel_size") else [], p.kernel_h, p.kernel_w,
            p.HasField("kernel_h"), 0)
    s = _hw([p.stride], p.stride_h, p.stride_w, p.HasField("stride_h"), 1)
    pad = _hw([p.pad], p.pad_h, p.pad_w, p.HasField("pad_h"), 0)
    parts = [method, _pair(k)]
    parts += [f"s{_one(s)}"] if s != (1, 1) else []
    parts += [f"p{_one(pad)}"] if pad != (0, 0) else []
    return [" · ".join(parts)]


def _lrn(layer: pb.LayerParameter) -> list[str]:
    p = layer.lrn_param
    region = "" if p.norm_region == p.ACROSS_CHANNELS else " · within"
    return [f"size {p.local_size} · α {p.alpha:g} · β {p.beta:g}{region}"]


def _inner_product(layer: pb.LayerParameter) -> list[str]:
    p = layer.inner_product_param
    return [f"{p.num_output} out" + ("" if p.bias_term else " · no bias")]


def _eltwise(layer: pb.LayerParameter) -> list[str]:
    p = layer.eltwise_param
    text = pb.EltwiseParameter.EltwiseOp.Name(p.operation)
    if p.coeff:
        text += " (" + ", ".join(f"{c:g}" for c in p.coeff) + ")"
    return [text]


def _axis(value: int, default: int = 1) -> list[str]:
    return [] if value == default else [f"axis {value}"]


def _batch_norm(layer: pb.LayerParameter) -> list[str]:
    p = layer.batch_norm_param
    parts = []
    if p.HasField("use_global_stats"):
        parts.append("global stats" if p.use_global_stats else "batch stats")
    if p.eps != pb.BatchNormParameter().eps:
        parts.append(f"eps {p.eps:g}")
    return [" · ".join(parts)] if parts else []


def _shape_dims(shape: pb.BlobShape) -> str:
    return "×".join(str(d) for d in shape.dim)


def _data(layer: pb.LayerParameter) -> list[str]:
    for name in ("data_param", "image_data_param", "hdf5_data_param", "window_data_param"):
        if layer.HasField(name):
            p = getattr(layer, name)
            parts = [f"batch {p.batch_size}"] if getattr(p, "batch_size", 0) else []
            if getattr(p, "source", ""):
                parts.append(os.path.basename(p.source.rstrip("/")))
            t = layer.transform_param
            if t.crop_size:
                parts.append(f"crop {t.crop_size}")
            return [" · ".join(parts)] if parts else []
    return []


def _python(layer: pb.LayerParameter) -> list[str]:
    p = layer.python_param
    return [f"{p.module}.{p.layer}"] if p.module else []


# Key parameters per layer type: a function LayerParameter -> lines of text.
LABELS = {
    "Convolution": _conv,
    "Deconvolution": _conv,
    "Pooling": _pool,
    "LRN": _lrn,
    "InnerProduct": _inner_product,
    "Dropout": lambda p: [f"ratio {p.dropout_param.dropout_ratio:g}"],
    "Eltwise": _eltwise,
    "Concat": lambda p: _axis(p.concat_param.axis),
    "Softmax": lambda p: _axis(p.softmax_param.axis),
    "Flatten": lambda p: _axis(p.flatten_param.axis),
    "Slice": lambda p: _axis(p.slice_param.axis) + (
        ["at " + ",".join(map(str, p.slice_param.slice_point))]
        if p.slice_param.slice_point else []),
    "Reshape": lambda p: ["to " + _shape_dims(p.reshape_param.shape)],
    "Scale": lambda p: ["+ bias"] if p.scale_param.bias_term else [],
    "BatchNorm": _batch_norm,
    "Power": lambda p: [f"({p.power_param.shift:g} + {p.power_param.scale:g}x)"
                        f"^{p.power_param.power:g}"],
    "ReLU": lambda p: ([f"slope {p.relu_param.negative_slope:g}"]
                       if p.relu_param.negative_slope else []),
    "Input": lambda p: [", ".join(_shape_dims(s) for s in p.input_param.shape)],
    "Data": _data, "ImageData": _data, "HDF5Data": _data, "WindowData": _data,
    "Python": _python,
}


def _lr_text(layer: LayerSummary) -> str | None:
    specs = list(layer.param.param) if layer.param is not None else []
    n = max(len(specs), len(layer.param_shapes))
    if n == 0:
        return None
    lr = [f"{specs[i].lr_mult:g}" if i < len(specs) else "1" for i in range(n)]
    decay = [f"{specs[i].decay_mult:g}" if i < len(specs) else "1" for i in range(n)]
    return f"lr {'/'.join(lr)} · decay {'/'.join(decay)}"


# --------------------------------------------------------------- boxes ----
@dataclass
class Box:
    """One drawn node: a layer plus the in-place layers stacked into it."""

    id: str
    layers: list[LayerSummary] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.layers[0].name


@dataclass
class Edge:
    src: str
    dst: str
    blob: str
    shape: tuple | None
    label_blob: bool       # show the blob name (it differs from its producer's name)


@dataclass
class Layout:
    boxes: list[Box]
    edges: list[Edge]
    ovals: list[tuple[str, str, bool]]    # (id, blob name, is a label reference)


def _is_label_edge(src: Box, dst: LayerSummary) -> bool:
    # Labels run from the data layer at the top to the losses at the bottom;
    # drawn as such they cross the whole picture. A short reference oval next
    # to each loss reads better.
    return src.layers[0].kind == "data" and dst.kind == "loss"


def merge_boxes(summary: NetSummary) -> Layout:
    """Boxes (in-place chains merged), blob edges, and ovals for outputs and labels.

    An in-place layer joins the box that produced its blob only while no
    other layer has read that blob yet: a layer that read the value before
    the in-place change must visibly read it from the earlier box.
    """
    out = Layout([], [], [])
    current: dict[str, tuple[Box, tuple | None]] = {}   # blob -> producer box, shape
    unread: dict[str, bool] = {}
    for layer in summary.layers:
        b = layer.bottoms[0] if layer.bottoms else None
        if (len(layer.bottoms) == 1 and len(layer.tops) == 1 and layer.in_place
                and b in current and unread.get(b)):
            box, _ = current[b]
            box.layers.append(layer)
            current[b] = (box, layer.top_shapes[0])
            continue
        box = Box(f"n{len(out.boxes)}", [layer])
        out.boxes.append(box)
        for blob in dict.fromkeys(layer.bottoms):
            src, shape = current[blob]
            unread[blob] = False
            if _is_label_edge(src, layer):
                ref = f"ref{len(out.ovals)}"
                out.ovals.append((ref, blob, True))
                out.edges.append(Edge(ref, box.id, blob, shape, False))
            else:
                out.edges.append(Edge(src.id, box.id, blob, shape, blob != src.name))
        for top, shape in zip(layer.tops, layer.top_shapes, strict=True):
            current[top] = (box, shape)
            unread[top] = True
    for i, blob in enumerate(summary.outputs):
        if blob in current:
            src, shape = current[blob]
            out.ovals.append((f"out{i}", blob, False))
            out.edges.append(Edge(src.id, f"out{i}", blob, shape, False))
    return out


# ------------------------------------------------------------ clusters ----
_RESNET = re.compile(r"^(?:res|bn|scale)(\d+)([a-z])(\d*)(?:_|$)")


def group_path(name: str) -> tuple[str, ...]:
    """Nested cluster keys for a layer name, outermost first; () for none.

    >>> group_path("inception_3a/5x5_reduce")
    ('inception_3a',)
    >>> group_path("bn4b12_branch2c")
    ('res4', 'res4b12')
    >>> group_path("res2a")
    ('res2', 'res2a')
    >>> group_path("conv1")
    ()
    """
    if "/" in name:
        parts = name.split("/")[:-1]
        return tuple("/".join(parts[:i + 1]) for i in range(len(parts)))
    m = _RESNET.match(name)
    if m:
        return (f"res{m[1]}", f"res{m[1]}{m[2]}{m[3]}")
    return ()


@dataclass
class _Cluster:
    key: str
    boxes: list[Box] = field(default_factory=list)
    children: dict[str, _Cluster] = field(default_factory=dict)

    def size(self) -> int:
        return len(self.boxes) + sum(c.size() for c in self.children.values())


def _cluster_tree(boxes: list[Box]) -> _Cluster:
    root = _Cluster("")
    for box in boxes:
        node = root
        for key in group_path(box.name):
            node = node.children.setdefault(key, _Cluster(key))
        node.boxes.append(box)
    return root


# ----------------------------------------------------------------- DOT ----
def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _details(layer: LayerSummary, display_lr: bool) -> list[str]:
    """Key parameters, then counts, then (optionally) learning-rate multipliers."""
    lines = [text for text in LABELS.get(layer.type, lambda _: [])(layer.param) if text]
    stats = []
    if layer.params:
        stats.append(f"{human_count(layer.params)} params")
    elif layer.stored:
        stats.append(f"{human_count(layer.stored)} stored")   # e.g. BatchNorm statistics
    if layer.macs:
        stats.append(f"{human_count(layer.macs)} MACs")
    if stats:
        lines.append(" · ".join(stats))
    if display_lr:
        lr = _lr_text(layer)
        if lr:
            lines.append(lr)
    return lines


def _shown_name(name: str, prefix: str) -> str:
    """Inside cluster 'inception_3a', 'inception_3a/1x1' reads as '1x1'."""
    return name[len(prefix) + 1:] if prefix and name.startswith(prefix + "/") else name


def _title(layer: LayerSummary, prefix: str) -> str:
    return (f'<B>{_esc(_shown_name(layer.name, prefix))}</B>  '
            f'<FONT POINT-SIZE="9" COLOR="#37474F">{_esc(layer.type)}</FONT>')


def _cell(text: str, color: str, small: bool = False) -> str:
    if small:
        text = f'<FONT POINT-SIZE="9">{text}</FONT>'
    return f'<TR><TD BGCOLOR="{color}">{text}</TD></TR>'


def _box_label(box: Box, display_lr: bool, prefix: str = "") -> str:
    """The first layer gets a title row and a row per detail; layers stacked
    in place under it get one compact row each, so a conv+BN+Scale+ReLU
    block stays short."""
    head, rows = box.layers[0], []
    color = style_for(head.kind)
    rows.append(_cell(_title(head, prefix), color))
    rows += [_cell(_esc(text), color, small=True) for text in _details(head, display_lr)]
    for layer in box.layers[1:]:
        details = " · ".join(_details(layer, display_lr))
        text = _title(layer, prefix) + (
            f'  <FONT POINT-SIZE="9">{_esc(details)}</FONT>' if details else "")
        rows += ["<HR/>", _cell(text, style_for(layer.kind))]
    return ('<<TABLE BORDER="1" CELLBORDER="0" CELLSPACING="0" CELLPADDING="3" '
            f'COLOR="{BORDER}">' + "".join(rows) + "</TABLE>>")


def _shape_text(shape: tuple | None) -> str:
    if shape is None:
        return "?"
    return "×".join(str(d) for d in shape) if shape else "scalar"


def _edge_line(edge: Edge) -> str:
    shape = _shape_text(edge.shape)
    label = f"{edge.blob}\\n{shape}" if edge.label_blob else shape
    return f'  {edge.src} -> {edge.dst} [label="{_quote(label)}"];'


def _quote(text: str) -> str:
    return text.replace('"', '\\"')


def _emit_cluster(cluster: _Cluster, display_lr: bool, out: list[str], depth: int,
                  prefix: str = "") -> None:
    pad = "  " * depth
    for box in cluster.boxes:
        out.append(f"{pad}{box.id} [label={_box_label(box, display_lr, prefix)}, "
                   f'tooltip="{_quote(" + ".join(x.name for x in box.layers))}"];')
    for child in cluster.children.values():
        if child.size() < 2:          # a single box is not a module
            _emit_cluster(child, display_lr, out, depth, prefix)
            continue
        # Quoted IDs may hold any character, and cluster keys are unique paths.
        out.append(f'{pad}subgraph "cluster_{_quote(child.key)}" {{')
        out.append(f'{pad}  label=<<B>{_esc(child.key)}</B>>; style="rounded,dashed"; '
                   'color="#90A4AE"; fontcolor="#455A64"; fontsize=13;')
        _emit_cluster(child, display_lr, out, depth + 1, child.key)
        out.append(f"{pad}}}")


def summary_to_dot(summary: NetSummary, rankdir: str = "TB", display_lr: bool = False) -> str:
    """DOT text for an existing NetSummary."""
    if rankdir not in ("TB", "LR", "BT", "RL"):
        raise NetdefError(f"unknown rankdir {rankdir!r}: expected TB, LR, BT or RL")
    layout = merge_boxes(summary)
    title = f"{summary.name or '(unnamed)'} — {summary.phase}"
    out = [
        "digraph netdef {",
        f'  graph [rankdir={rankdir}, label="{_quote(title)}", labelloc=t, fontsize=16, '
        f'fontname="{FONT}", nodesep=0.3, ranksep=0.35];',
        f'  node [shape=plain, fontname="{FONT}", fontsize=11];',
        f'  edge [fontname="{FONT}", fontsize=9, color="#607D8B", fontcolor="#37474F", '
        'arrowsize=0.6];',
    ]
    _emit_cluster(_cluster_tree(layout.boxes), display_lr, out, 1)
    for oid, blob, is_ref in layout.ovals:
        style = ('style=dashed, fontsize=9, color="#90A4AE"' if is_ref else
                 f'style=filled, fillcolor="#ECEFF1", color="{BORDER}"')
        out.append(f'  {oid} [label="{_quote(blob)}", shape=oval, {style}];')
    out += [_edge_line(e) for e in layout.edges]
    out.append("}")
    return "\n".join(out) + "\n"


def to_dot(net, rankdir: str = "TB", phase="TEST", display_lr: bool = False,
           input_shapes=None, level: int = 0, stages=()) -> str:
    """DOT text of ``net`` (a path, prototxt text, NetSource or Graph)."""
    summary = summarize(net, phase, input_shapes, level, stages)
    return summary_to_dot(summary, rankdir, display_lr)


# -------------------------------------------------------------- render ----
def output_format(out_path) -> str:
    ext = os.path.splitext(os.fspath(out_path))[1].lower().lstrip(".")
    if ext not in FORMATS:
        raise NetdefError(f"cannot tell the picture format of '{out_path}'",
                          hint="use a .svg, .png, .pdf or .dot file name")
    return ext


def render(dot_text: str, fmt: str) -> bytes:
    """Run Graphviz's ``dot`` to turn DOT text into ``fmt`` bytes."""
    exe = shutil.which("dot")
    if exe is None:
        raise NetdefError(INSTALL_HINT)
    done = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode("utf-8"),
                          capture_output=True, check=False)
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise NetdefError(f"Graphviz's dot failed: {err[-1] if err else done.returncode}")
    return done.stdout


def draw(net, out_path, rankdir: str = "TB", phase="TEST", display_lr: bool = False,
         input_shapes=None, level: int = 0, stages=()) -> str:
    """Write a picture of ``net`` to ``out_path``; the extension picks the format.

    ``.dot``/``.gv`` writes the DOT text and needs no Graphviz; ``.svg``,
    ``.png`` and ``.pdf`` run Graphviz's ``dot``. Returns the format written.
    """
    from netdef.io.atomic import atomic_write

    fmt = output_format(out_path)
    folder = os.path.dirname(os.path.abspath(os.fspath(out_path)))
    if not os.path.isdir(folder):
        raise NetdefError(f"cannot write '{out_path}': the folder '{folder}' does not exist",
                          hint="create it first, or pick another output path")
    text = to_dot(net, rankdir, phase, display_lr, input_shapes, level, stages)
    data = text if fmt in ("dot", "gv") else render(text, fmt)
    try:
        atomic_write(out_path, data)
    except OSError as err:     # name the user's path, not the temporary file beside it
        raise NetdefError(f"cannot write '{out_path}': {err.strerror or err}") from None
    return fmt
