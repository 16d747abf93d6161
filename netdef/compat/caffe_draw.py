"""``caffe.draw`` on netdef's own drawing (netdef.draw).

pycaffe's functions, same arguments::

    net = caffe_pb2.NetParameter()
    text_format.Merge(open("train_val.prototxt").read(), net)
    caffe.draw.draw_net_to_file(net, "net.png", "LR", phase=caffe.TRAIN)

The picture is netdef's (``netdef draw``): the phase-filtered graph with
shapes on the edges, in-place layers merged into their producer, modules
clustered. ``get_pydot_graph`` returns a :class:`DotGraph`, which has the
pydot methods scripts call (``create``, ``write``, ``create_png``,
``write_svg``, ``to_string`` ...) without needing pydot. ``phase=None``
(pycaffe: draw every layer of both phases) draws the TEST net: one net
cannot hold both phases' data layers. Rendering other than DOT text needs
Graphviz's ``dot``.
"""
from __future__ import annotations

import os

from netdef.frontend.schema import pb

_DOT_TEXT = ("dot", "gv", "raw", "canon")


def _source(caffe_net):
    from netdef.frontend.source import read_net

    if isinstance(caffe_net, pb.NetParameter):
        return read_net(caffe_net)
    return caffe_net                 # a path, prototxt text or NetSource: netdef reads them


class DotGraph:
    """A drawn net as DOT text, with pydot.Dot's rendering methods."""

    def __init__(self, text: str):
        self.text = text

    def to_string(self) -> str:
        return self.text

    __str__ = to_string

    def create(self, prog=None, format: str = "ps", encoding=None) -> bytes:  # noqa: A002
        """The picture as bytes in Graphviz ``format`` (DOT text for dot/raw)."""
        from netdef.draw import render

        if format in _DOT_TEXT:
            return self.text.encode("utf-8")
        return render(self.text, format)

    def write(self, path, prog=None, format: str = "raw", encoding=None) -> bool:  # noqa: A002
        from netdef.io.atomic import atomic_write

        atomic_write(os.fspath(path), self.create(prog, format))
        return True

    def __getattr__(self, name: str):
        # pydot's create_png(), write_svg(path) ... family
        for verb in ("create_", "write_"):
            if name.startswith(verb) and len(name) > len(verb):
                fmt = name[len(verb):]
                method = self.create if verb == "create_" else self.write
                return lambda *args, **kw: method(*args, format=fmt, **kw)
        raise AttributeError(name)


def get_pydot_graph(caffe_net, rankdir: str = "LR", label_edges: bool = True, phase=None,
                    display_lrm: bool = False) -> DotGraph:
    """The drawing of ``caffe_net`` (a NetParameter, or a path/prototxt text)."""
    from netdef.draw import to_dot

    return DotGraph(to_dot(_source(caffe_net), rankdir, pb.TEST if phase is None else phase,
                           display_lrm))


def draw_net(caffe_net, rankdir: str = "LR", ext: str = "png", phase=None,
             display_lrm: bool = False) -> bytes:
    """The picture as bytes of format ``ext``."""
    return get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm).create(
        format=ext)


def draw_net_to_file(caffe_net, filename, rankdir: str = "LR", phase=None,
                     display_lrm: bool = False) -> None:
    """Write the picture; the file's extension is the format."""
    from netdef.io.atomic import atomic_write

    filename = os.fspath(filename)
    ext = filename[filename.rfind(".") + 1:]
    atomic_write(filename, draw_net(caffe_net, rankdir, ext, phase, display_lrm))


def choose_color_by_layertype(layertype: str) -> str:
    """The fill colour netdef uses for a layer type (by its family)."""
    from netdef.draw import style_for
    from netdef.errors import NetdefError
    from netdef.layers.base import layer_class

    try:
        kind = layer_class(layertype).kind
    except NetdefError:                     # unknown type: the neutral colour
        kind = "other"
    return style_for(kind)


def get_pooling_types_dict() -> dict[int, str]:
    """{PoolingParameter enum value: name}."""
    enum = pb.PoolingParameter.DESCRIPTOR.enum_types_by_name["PoolMethod"]
    return {v.number: v.name for v in enum.values}
