"""The Python layer: ``type: "Python"``, a layer written by the user in Python
under pycaffe's protocol.

    layer { name: "loss" type: "Python" bottom: "pred" bottom: "label" top: "loss"
            python_param { module: "pyloss" layer: "EuclideanLossLayer" param_str: "..." }
            loss_weight: 1 }

``python_param.module`` is imported when the layer is set up (never while
parsing, so ``netdef summary``/``draw``/``check`` import it only to learn
the shapes, which come from the user's ``reshape``). It is looked up on
``sys.path`` first, as Caffe does, then in the current directory and beside
the prototxt (``search_path``, set by the compiler). ``python_param.layer``
names the class; pycaffe's ``caffe.Layer`` is
``netdef.compat.caffe_layer.Layer``, but any class with the four methods
works. The object gets ``param_str`` and ``phase`` (0 TRAIN, 1 TEST) before
``setup`` and ``blobs``, a list of parameter blobs it can grow with
``self.blobs.add_blob(*shape)`` (pycaffe's BlobVec). Those blobs are the
layer's parameters: learnable (``param { lr_mult }`` applies), saved in and
loaded from caffemodels, and initialised by the user's ``setup`` (no filler
overwrites them). ``share_in_parallel`` is accepted and means nothing on
one CPU process.

Caffe's order is kept: ``setup(bottom, top)`` once, then ``reshape(bottom,
top)``, then before *every* forward ``reshape`` again and ``forward(bottom,
top)``; ``backward(top, propagate_down, bottom)`` follows netdef's (Caffe's)
need-backward rules. Bottoms and tops are pycaffe Blob views (``PyBlob``).
netdef fixes shapes when it plans a net, so a ``reshape`` that changes a
top's shape during forward is an error that says so. A Python loss layer is
one with ``loss_weight`` on its top: its top diff holds the weight during
backward, as for every Caffe layer.

A module that does ``import caffe`` gets netdef.compat.caffe when no real
pycaffe is installed (``caffe.Layer`` is netdef.compat.caffe_layer.Layer),
so pycaffe layer modules run under ``netdef train`` too.

A module that cannot be found, or that fails to import, and a missing class
are GraphErrors naming the layer, the module and the directories searched;
an exception raised by the user's code is a ShapeError naming the layer,
the method and the bottoms.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys

import numpy as np

from netdef.data.paths import search_dirs
from netdef.errors import GraphError, NetdefError, ShapeError, did_you_mean
from netdef.layers.base import Layer, UnknownShape, register, shape_text

__all__ = ["BlobVec", "PyBlob", "Python"]


class PyBlob:
    """The pycaffe Blob surface over a netdef Blob: ``data``, ``diff``,
    ``shape``, ``count``, ``num``/``channels``/``height``/``width`` and
    ``reshape(*dims)`` (pycaffe takes the dims as separate arguments; a
    tuple is accepted too). Assigning ``data``/``diff`` copies into the
    blob's memory, which the net's plan may share with other blobs."""

    __slots__ = ("blob",)

    def __init__(self, blob):
        self.blob = blob

    @property
    def data(self) -> np.ndarray:
        return self.blob.data

    @data.setter
    def data(self, value) -> None:
        self.blob.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        return self.blob.diff

    @diff.setter
    def diff(self, value) -> None:
        self.blob.diff[...] = value

    shape = property(lambda self: self.blob.shape)
    count = property(lambda self: self.blob.count)
    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def _legacy(self, axis: int) -> int:
        shape = self.blob.shape
        return shape[axis] if axis < len(shape) else 1

    def reshape(self, *dims) -> None:
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        self.blob.reshape(dims)

    def __repr__(self) -> str:
        return f"<PyBlob {self.blob.name!r} {shape_text(self.blob.shape)}>"


class _Keep:
    """The filler of a Python layer's parameter blob: the values the user's
    setup wrote (netdef.fillers calls it like a filler)."""

    __slots__ = ("blob",)

    def __init__(self, blob):
        self.blob = blob

    def __call__(self, shape, rng) -> np.ndarray:
        return np.array(self.blob.data, dtype=np.float32).reshape(shape)


class _Standalone:
    """Owner of a BlobVec for a caffe.Layer used outside a net (unit tests
    of a user's layer): a plain list, no fillers."""

    def __init__(self):
        self.blobs = []
        self.name = "python_layer"

    def add_param(self, shape, filler=None, learnable=True):
        from netdef.blob import Blob

        blob = Blob(shape, name=f"{self.name}[{len(self.blobs)}]")
        self.blobs.append(blob)
        return blob


class BlobVec:
    """pycaffe's ``layer.blobs``: a sequence of PyBlob over the layer's
    parameter blobs, with ``add_blob(*shape)`` to declare a new one (zeros;
    the user fills it in setup)."""

    __slots__ = ("_owner",)

    def __init__(self, owner=None):
        self._owner = owner if owner is not None else _Standalone()

    def add_blob(self, *shape) -> PyBlob:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        try:
            dims = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise TypeError(f"add_blob takes integer dimensions, got {shape!r}") from None
        if any(d < 0 for d in dims):
            raise ValueError(f"add_blob: negative dimension in {dims}")
        blob = self._owner.add_param(dims, learnable=True)
        if hasattr(self._owner, "fillers"):
            self._owner.fillers[-1] = _Keep(blob)
        blob.data[...] = 0.0
        return PyBlob(blob)

    def __len__(self) -> int:
        return len(self._owner.blobs)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [PyBlob(b) for b in self._owner.blobs[index]]
        return PyBlob(self._owner.blobs[index])

    def __iter__(self):
        return (PyBlob(b) for b in self._owner.blobs)

    def __repr__(self) -> str:
        return f"<BlobVec of {len(self)} blobs>"


@register("Python")
class Python(Layer):
    """A layer written in Python: ``python_param { module layer param_str }``
    (see the module docstring for the protocol and the lookup rules)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.search_path = None
        self.impl = None
        self.module_file: str | None = None
        # Drawn and summarised by what it does: a source, a loss, or other.
        if not self.param.bottom:
            self.kind = "data"
        elif any(w != 0 for w in self.param.loss_weight):
            self.kind = "loss"

    # ---- the contract ---------------------------------------------------
    def setup(self, bottoms, tops):
        p = self.param.python_param
        if not p.module or not p.layer:
            raise self.config_error("python_param needs both 'module' and 'layer'",
                                    hint="e.g. python_param { module: \"pyloss\" "
                                         "layer: \"EuclideanLossLayer\" }")
        module = self._import(p.module)
        cls = getattr(module, p.layer, None)
        if not isinstance(cls, type):
            names = [n for n, v in vars(module).items()
                     if isinstance(v, type) and not n.startswith("_")]
            what = "has no class" if cls is None else "has no class (only an object)"
            raise self.config_error(
                f"module '{p.module}' ({self.module_file}) {what} '{p.layer}'",
                hint=did_you_mean(p.layer, names)
                or (f"classes there: {', '.join(sorted(names))}" if names else None))
        try:
            self.impl = cls(self.param) if _takes_argument(cls) else cls()
        except Exception as err:   # user code may fail any way
            raise self._user_error("__init__", err) from err
        self._attach()
        self._call("setup", bottoms, tops)

    def reshape(self, bottoms, tops):
        self._call("reshape", bottoms, tops)

    def forward(self, bottoms, tops):
        # Caffe reshapes every layer before each forward; a Python layer may
        # rely on it (reading the next item in reshape). Shapes are planned.
        before = [t.shape for t in tops]
        self._call("reshape", bottoms, tops)
        changed = [(t.name, old, t.shape) for t, old in zip(tops, before) if t.shape != old]
        if changed:
            name, old, new = changed[0]
            raise ShapeError(
                f"layer '{self.name}' (Python): reshape changed top '{name}' from "
                f"{shape_text(old)} to {shape_text(new)} during forward; netdef fixes "
                "shapes when it plans the net", where=self.where,
                hint="give the tops their final shape in setup/reshape, or feed "
                     "batches of one shape")
        self._call("forward", bottoms, tops)

    def backward(self, tops, propagate_down, bottoms):
        if not hasattr(self.impl, "backward"):
            if not any(propagate_down) and not any(self.param_propagate_down):
                return
            p = self.param.python_param
            raise self.config_error(f"class {p.module}.{p.layer} has no backward method, "
                                    "but a gradient is needed through it")
        self._call("backward", tops, bottoms, extra=[bool(d) for d in propagate_down])

    # ---- lookup -------------------------------------------------------------
    def searched(self) -> list[str]:
        """Where the module is looked for, in order: sys.path, then the
        current directory and the prototxt's directory."""
        extra = [os.getcwd(), *map(str, search_dirs(self.search_path))]
        return list(dict.fromkeys([*(p or os.getcwd() for p in sys.path), *extra]))

    def _import(self, name: str):
        p = self.param.python_param
        saved = list(sys.path)
        extra = [os.getcwd(), *map(str, search_dirs(self.search_path))]
        sys.path.extend(d for d in extra if d not in sys.path)
        try:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as err:
                # A pycaffe layer module does ``import caffe``. With no real
                # pycaffe installed, answer it with netdef's (what ``netdef
                # pycaffe`` does) and try once more; a real one is never shadowed.
                if not _is_caffe(err.name) or not _alias_caffe():
                    raise
                module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and (name == err.name or name.startswith(err.name + ".")):
                raise self.config_error(
                    f"cannot find Python module '{name}' (for class '{p.layer}'); "
                    f"searched: {', '.join(self.searched())}",
                    hint=f"put {name.split('.')[0]}.py beside the prototxt or on "
                         "PYTHONPATH") from None
            raise self._import_error(name, err) from err
        except Exception as err:   # the module's own code may fail any way
            raise self._import_error(name, err) from err
        finally:
            sys.path[:] = saved
        self.module_file = getattr(module, "__file__", None) or name
        return module

    def _import_error(self, name: str, err: BaseException) -> GraphError:
        p = self.param.python_param
        origin = ""
        if isinstance(err, SyntaxError) and err.filename:
            origin = f" ({err.filename}:{err.lineno})"
        else:
            try:                     # sys.path is still extended here
                spec = importlib.util.find_spec(name)
            except Exception:        # a parent package that fails too
                spec = None
            if spec is not None and spec.origin:
                origin = f" ({spec.origin})"
        return self.config_error(f"Python module '{name}'{origin} for class '{p.layer}' "
                                 f"failed to import: {type(err).__name__}: {err}")

    def _attach(self) -> None:
        """Give the user's object pycaffe's attributes."""
        p = self.param.python_param
        impl = self.impl
        vec = BlobVec(self)
        try:
            impl.param_str = p.param_str
            impl.phase = self.phase
            if hasattr(type(impl), "_attach_netdef"):
                impl._attach_netdef(vec, self.param)
            else:
                impl.blobs = vec
        except AttributeError as err:
            raise self._user_error("setup", err) from err

    # ---- calling user code ----------------------------------------------------
    def _call(self, method: str, *blob_lists, extra=None):
        args = [[PyBlob(b) for b in blobs] for blobs in blob_lists]
        if extra is not None:
            args.insert(1, extra)
        fn = getattr(self.impl, method, None)
        if fn is None:
            p = self.param.python_param
            raise self.config_error(f"class {p.module}.{p.layer} has no {method} method",
                                    hint="a Python layer defines setup, reshape, forward "
                                         "and backward")
        from netdef.kernels._jit import caller_place

        try:
            with caller_place():    # threads the user's code starts get every CPU
                fn(*args)
        except (NetdefError, UnknownShape):
            raise
        except Exception as err:   # name the layer in user-code failures
            raise self._user_error(method, err) from err

    def _user_error(self, method: str, err: BaseException) -> ShapeError:
        p = self.param.python_param
        where = ""
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if tb is not None:
            where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        return ShapeError(f"layer '{self.name}' (Python): {p.module}.{p.layer}.{method} "
                          f"raised {type(err).__name__}: {err}{where}; bottoms: "
                          f"{self.bottoms_text()}", where=self.where)


def _is_caffe(module_name: str | None) -> bool:
    return bool(module_name) and (module_name == "caffe" or module_name.startswith("caffe."))


def _alias_caffe() -> bool:
    """Make ``import caffe`` give netdef.compat.caffe in this process (True
    if it was not so already)."""
    try:
        from netdef.compat import runner
    except ImportError:
        return False
    if any(isinstance(f, runner.CaffeAliasFinder) for f in sys.meta_path):
        return False
    if importlib.util.find_spec("caffe") is not None:      # a real pycaffe: leave it
        return False
    runner.install()
    return True


def _takes_argument(cls) -> bool:
    """True when ``cls(param)`` is the right call (pycaffe's Layer takes the
    LayerParameter); False for a plain class whose constructor takes nothing."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):      # builtin or extension base (real pycaffe)
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)
