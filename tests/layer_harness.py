"""Build one layer from a prototxt snippet and run it on plain arrays.

    layer = make_layer('layer { name: "c" type: "Convolution" bottom: "x" top: "y" '
                       'convolution_param { num_output: 4 kernel_size: 3 } }')
    infer_shapes(layer, [(2, 3, 8, 8)])          # -> [(2, 4, 6, 6)]
    fill_params(layer, seed=0)                    # random weights
    (y,) = run_layer(layer, [x])                  # forward on float32 copies of x

The first call of ``infer_shapes``/``run_layer`` on a layer runs the
compiler's sequence (``layer_setup``: arity check, setup, reshape); later
calls only reshape, as an executor does when input shapes change. Bottom
blobs are named after the layer's ``bottom`` fields, so error messages read
as they would in a net. ``in_place=True`` makes top[0] the bottom[0] blob.
"""
from __future__ import annotations

import weakref

import numpy as np

from netdef.blob import Blob
from netdef.layers.base import Layer, create_layer
from netdef.frontend.schema import pb, phase_value

__all__ = ["check_gradients", "fill_params", "infer_shapes", "make_layer", "run_layer", "wired"]

_WIRING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _parse(text: str) -> pb.LayerParameter:
    text = text.strip()
    try:
        from netdef.frontend.parse import parse_message
    except ImportError:  # pragma: no cover - before netdef.frontend.parse existed
        from google.protobuf import text_format

        def parse_message(t, cls):
            return text_format.Parse(t, cls()), None
    if text.startswith("layer"):
        net, _ = parse_message(text, pb.NetParameter)
        if len(net.layer) != 1:
            raise ValueError(f"expected one layer {{ ... }} block, got {len(net.layer)}")
        return net.layer[0]
    param, _ = parse_message(text, pb.LayerParameter)
    return param


def make_layer(snippet_text: str, phase="TEST") -> Layer:
    """A layer object from ``layer { ... }`` text (or the bare fields of one)."""
    return create_layer(_parse(snippet_text), phase_value(phase))


def _blobs(layer: Layer, bottom_shapes, top_count, in_place):
    """The layer's (bottoms, tops), set up on first use and reshaped afterwards."""
    shapes = [tuple(int(d) for d in s) for s in bottom_shapes]
    state = _WIRING.get(layer)
    if state is not None and len(state[0]) == len(shapes):
        bottoms, tops = state
        for blob, shape in zip(bottoms, shapes, strict=True):
            blob.reshape(shape)
        layer.remember_bottoms(bottoms)
        layer.reshape(bottoms, tops)
        return bottoms, tops
    names = list(layer.param.bottom) or [f"bottom{i}" for i in range(len(shapes))]
    names += [f"bottom{i}" for i in range(len(names), len(shapes))]
    bottoms = [Blob(s, name=n) for s, n in zip(shapes, names, strict=False)]
    if top_count is None:
        top_count = len(layer.param.top) or _min_tops(layer)
    top_names = list(layer.param.top) + [f"top{i}" for i in range(len(layer.param.top), top_count)]
    tops = [Blob(name=n) for n in top_names[:top_count]]
    if in_place:
        tops[0] = bottoms[0]
    layer.layer_setup(bottoms, tops)
    _WIRING[layer] = (bottoms, tops)
    return bottoms, tops


def _min_tops(layer: Layer) -> int:
    spec = layer.num_tops
    if spec is None:
        return 1
    return spec if isinstance(spec, int) else max(spec[0], 1)


def infer_shapes(layer: Layer, bottom_shapes, top_count: int | None = None,
                 in_place: bool = False) -> list[tuple]:
    """Top shapes for these bottom shapes (setup on the first call)."""
    _, tops = _blobs(layer, bottom_shapes, top_count, in_place)
    return [t.shape for t in tops]


def run_layer(layer: Layer, bottom_arrays, top_count: int | None = None,
              in_place: bool = False) -> list[np.ndarray]:
    """Forward float32 copies of ``bottom_arrays``; return copies of the tops."""
    arrays = [np.array(a, dtype=np.float32, order="C", copy=True) for a in bottom_arrays]
    bottoms, tops = _blobs(layer, [a.shape for a in arrays], top_count, in_place)
    for blob, arr in zip(bottoms, arrays, strict=True):
        blob.data = arr
    layer.forward(bottoms, tops)
    return [t.data.copy() for t in tops]


def wired(layer: Layer) -> tuple[list[Blob], list[Blob]]:
    """The (bottoms, tops) blobs the harness made for ``layer`` (after a run)."""
    return _WIRING[layer]


def fill_params(layer: Layer, seed: int = 0, scale: float = 1.0) -> list[np.ndarray]:
    """Give every parameter blob standard-normal values times ``scale``
    (after setup: call ``infer_shapes`` first). Returns the arrays set."""
    rng = np.random.default_rng(seed)
    out = []
    for blob in layer.blobs:
        blob.data = (rng.standard_normal(blob.shape) * scale).astype(np.float32)
        out.append(blob.data)
    return out


def check_gradients(layer: Layer, bottom_arrays, check_bottoms=None, *, top_count=None,
                    checker=None, **checker_args) -> int:
    """Finite-difference check of ``layer.backward`` on ``bottom_arrays``
    (netdef.testing.GradientChecker; ``checker_args`` go to its constructor,
    e.g. ``stepsize``, ``threshold``, ``kink_range``; ``top_index``,
    ``top_element`` and ``check_params`` go to ``check_layer``). Never in
    place: the checker re-runs forward on unchanged bottoms. Returns the
    number of elements checked (always > 0 for a meaningful test)."""
    from netdef.testing import GradientChecker

    layer_args = {k: checker_args.pop(k) for k in ("top_index", "top_element", "check_params")
                  if k in checker_args}
    checker = checker or GradientChecker(**checker_args)
    arrays = [np.array(a, dtype=np.float32, order="C", copy=True) for a in bottom_arrays]
    bottoms, tops = _blobs(layer, [a.shape for a in arrays], top_count, False)
    for blob, arr in zip(bottoms, arrays, strict=True):
        blob.data = arr
    checked = checker.check_layer(layer, bottoms, tops, check_bottoms, **layer_args)
    if checked == 0:
        raise AssertionError(f"{layer}: the gradient check compared no element")
    return checked
