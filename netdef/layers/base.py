"""The layer contract, the type registry and the helpers every layer shares.

A layer class implements Caffe's four steps under their Python names:

* ``setup(bottoms, tops)``: once. Read and validate ``*_param`` into plain
  attributes, create parameter blobs (shapes and fillers only).
* ``reshape(bottoms, tops)``: shape inference only: set every top's shape
  from the bottoms' shapes. Re-run whenever input shapes change.
* ``forward(bottoms, tops)``: compute tops from bottoms.
* ``backward(tops, propagate_down, bottoms)``: from ``top.diff`` (dL/dtop),
  *overwrite* ``bottoms[i].diff`` for every i with ``propagate_down[i]`` and
  *accumulate* (+=) into ``self.blobs[j].diff`` for every j with
  ``self.param_propagate_down[j]`` (Caffe's rules: the solver clears
  parameter diffs; shared parameters and ``iter_size`` rely on the sum).
  An in-place layer sees one Blob as bottom and top, so its top diff and
  bottom diff are one array. Whatever backward needs from forward (masks,
  argmax, normalisers) is kept on the layer by forward.

Arity is declared (``num_bottoms``, ``num_tops``; an int, or a (min, max)
pair with max None for "any") and checked here, once, for every layer.
Layers register themselves by type string with ``@register("Type")``.
"""
from __future__ import annotations

from netdef.blob import Blob
from netdef.errors import GraphError, Location, ShapeError, did_you_mean
from netdef.frontend.schema import pb

_REGISTRY: dict[str, type[Layer]] = {}


def register(type_name: str, *aliases: str):
    """Class decorator: make ``type: "<type_name>"`` create this class."""

    def decorate(cls):
        cls.type = type_name
        for name in (type_name, *aliases):
            if name in _REGISTRY and _REGISTRY[name] is not cls:
                raise RuntimeError(f"layer type {name!r} registered twice")
            _REGISTRY[name] = cls
        return cls

    return decorate


def layer_types() -> list[str]:
    """Every registered layer type name, sorted."""
    _load_families()
    return sorted(_REGISTRY)


def layer_class(type_name: str, where: Location | None = None,
                layer_name: str = "") -> type[Layer]:
    """The class registered for ``type_name``; a GraphError with the nearest
    known names when there is none."""
    _load_families()
    try:
        return _REGISTRY[type_name]
    except KeyError:
        pass
    who = f"layer '{layer_name}': " if layer_name else ""
    hint = did_you_mean(type_name, _REGISTRY) or f"known types: {', '.join(sorted(_REGISTRY))}"
    raise GraphError(f"{who}unknown layer type {type_name!r}", where=where, hint=hint)


def create_layer(param: pb.LayerParameter, phase: int = pb.TEST,
                 where: Location | None = None) -> Layer:
    cls = layer_class(param.type, where, param.name)
    return cls(param, phase, where)


def _load_families() -> None:
    # Importing the family modules runs their @register decorators.
    import netdef.layers  # noqa: F401


def _arity_text(spec) -> str:
    if isinstance(spec, int):
        return f"exactly {spec}"
    low, high = spec
    if high is None:
        return f"at least {low}"
    if low == high:
        return f"exactly {low}"
    return f"{low} to {high}"


def _arity_ok(spec, n: int) -> bool:
    if spec is None:
        return True
    if isinstance(spec, int):
        return n == spec
    low, high = spec
    return n >= low and (high is None or n <= high)


def filler_param(msg, field: str, **default) -> pb.FillerParameter:
    """A copy of ``msg.<field>`` when it is set, else a FillerParameter with
    ``default`` fields (no defaults: Caffe's unset filler, constant 0).

    A copy, so that filling never aliases (or mutates) the layer's param.
    """
    filler = pb.FillerParameter()
    if msg.HasField(field):
        filler.CopyFrom(getattr(msg, field))
    else:
        for key, value in default.items():
            setattr(filler, key, value)
    return filler


def shape_text(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


class Layer:
    """Base of every layer. Subclasses override the four steps they need."""

    type: str = ""
    num_bottoms: int | tuple[int, int | None] | None = None
    num_tops: int | tuple[int, int | None] | None = None
    # Family used by summary/draw for grouping and colour.
    kind: str = "other"
    # Loss layers weight their first top by 1 unless loss_weight says otherwise.
    is_loss: bool = False
    # True when every top is a view of bottom 0's data (Split, Flatten,
    # Reshape): the memory planner gives such tops no storage of their own
    # and binds them to the bottom's buffer; forward then has nothing to do.
    shares_data: bool = False

    def __init__(self, param: pb.LayerParameter, phase: int = pb.TEST,
                 where: Location | None = None):
        self.param = param
        self.name = param.name
        self.phase = phase
        self.where = where
        self.blobs: list[Blob] = []          # parameter blobs, in Caffe's order
        self.fillers: list = []              # FillerParameter (or None) per blob
        self.learnable: list[bool] = []      # False for stored statistics
        # Set by the net: False where lr_mult is 0 or nothing learns.
        self.param_propagate_down: list[bool] = []
        self._bottom_names: list[str] = []
        self._bottom_shapes: list[tuple] = []

    # ---- the contract ---------------------------------------------------
    def setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        """Read parameters and create parameter blobs. Default: nothing."""

    def reshape(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        raise NotImplementedError(f"{self.type}.reshape")

    def forward(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        raise NotImplementedError(f"layer type {self.type} has no forward yet")

    def backward(self, tops: list[Blob], propagate_down: list[bool],
                 bottoms: list[Blob]) -> None:
        raise NotImplementedError(f"layer type {self.type} has no backward yet")

    def macs(self, bottoms: list[Blob], tops: list[Blob]) -> int:
        """Multiply-accumulates of one forward pass (conv/dense layers)."""
        return 0

    # ---- the fixed sequence, run by the compiler --------------------------
    def check_arity(self, n_bottoms: int, n_tops: int) -> None:
        for what, spec, n in (("bottom", self.num_bottoms, n_bottoms),
                              ("top", self.num_tops, n_tops)):
            if not _arity_ok(spec, n):
                raise GraphError(
                    f"layer '{self.name}' ({self.type}) takes {_arity_text(spec)} "
                    f"{what} blob{'s' if spec != 1 else ''}, got {n}", where=self.where)

    def layer_setup(self, bottoms: list[Blob], tops: list[Blob]) -> None:
        self.check_arity(len(bottoms), len(tops))
        self.remember_bottoms(bottoms)
        self.setup(bottoms, tops)
        self.reshape(bottoms, tops)

    def remember_bottoms(self, bottoms: list[Blob]) -> None:
        self._bottom_names = [b.name for b in bottoms]
        self._bottom_shapes = [b.shape for b in bottoms]

    # ---- helpers for subclasses -------------------------------------------
    def add_param(self, shape, filler=None, learnable: bool = True) -> Blob:
        """Declare a parameter blob (allocated and filled later, on demand)."""
        blob = Blob(shape, name=f"{self.name}[{len(self.blobs)}]")
        self.blobs.append(blob)
        self.fillers.append(filler)
        self.learnable.append(learnable)
        self.param_propagate_down.append(learnable)
        return blob

    def bottoms_text(self) -> str:
        parts = [f"'{n}' {shape_text(s)}" for n, s in zip(self._bottom_names, self._bottom_shapes)]
        return ", ".join(parts) if parts else "none"

    def require(self, condition: bool, message: str, hint: str | None = None) -> None:
        """Raise a ShapeError naming this layer and its bottoms unless ``condition``."""
        if not condition:
            raise ShapeError(
                f"layer '{self.name}' ({self.type}): {message}; bottoms: {self.bottoms_text()}",
                where=self.where, hint=hint)

    def config_error(self, message: str, hint: str | None = None) -> GraphError:
        """An error in this layer's parameters (raise the returned exception)."""
        return GraphError(f"layer '{self.name}' ({self.type}): {message}",
                          where=self.where, hint=hint)

    def canonical_axis(self, axis: int, ndim: int, what: str = "axis") -> int:
        if -ndim <= axis < ndim:
            return axis % ndim
        raise ShapeError(
            f"layer '{self.name}' ({self.type}): {what} {axis} is out of range for a "
            f"{ndim}-axis bottom; bottoms: {self.bottoms_text()}", where=self.where)

    @property
    def num_params(self) -> int:
        return sum(b.count for b, ok in zip(self.blobs, self.learnable) if ok)

    @property
    def num_stored(self) -> int:
        return sum(b.count for b in self.blobs)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} '{self.name}' ({self.type})>"


class UnknownShape(Exception):
    """Raised by reshape when a top's shape cannot be known without data
    (e.g. a database that is not present). Downstream shapes become unknown
    and ``check`` reports the reason; it is not an error by itself."""
