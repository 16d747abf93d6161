"""pycaffe's surface over netdef: ``caffe.Net``, the solvers, NetSpec, io, draw ...

Two ways to run pycaffe code on netdef:

* unchanged: ``netdef pycaffe script.py ARGS`` (or ``python -m
  netdef.compat.caffe script.py ARGS``) makes ``import caffe``,
  ``caffe.io``, ``caffe.proto.caffe_pb2``, ``caffe.draw``,
  ``caffe.coord_map`` ... resolve to netdef for that process only
  (netdef.compat.runner); netdef never installs a ``caffe`` package;
* one changed line: ``from netdef.compat import caffe``.

What is here, under pycaffe's names: ``TRAIN``/``TEST``, ``Net`` (every
blob readable; ``forward``/``backward`` with ``start``/``end``,
``forward_all``, ``forward_backward_all``, ``set_input_arrays``,
``share_with``, ``save_hdf5``/``load_hdf5`` ...), the solvers
(``SGDSolver`` ... ``AdamSolver``, ``get_solver``; netdef.train
underneath), ``NetSpec``/``layers``/``params``/``to_proto``, ``io``,
``Classifier``, ``Detector``, ``proto.caffe_pb2`` (netdef's schema, wire- and
text-compatible with Caffe's), ``layer_type_list``, ``set_random_seed``,
``Timer``, ``set_mode_cpu``/``set_mode_gpu`` (the latter warns: netdef runs
on the CPU). Where pycaffe raises a built-in exception, the error is a
netdef error that is also that exception (netdef.compat.errors).
"""
from __future__ import annotations

import os
import sys
import time
import types
import warnings
from collections import OrderedDict
from itertools import zip_longest

import numpy as np

from netdef.compat import caffe_io as io  # noqa: F401  (caffe.io)
from netdef.compat.caffe_solver import (AdaDeltaSolver, AdaGradSolver, AdamSolver,  # noqa: F401
                                        NesterovSolver, RMSPropSolver, SGDSolver, get_solver)
from netdef.compat.errors import CompatRuntimeError, CompatValueError
from netdef.compat.net_spec import NetSpec, layers, params, to_proto  # noqa: F401
from netdef.errors import InputError, WeightsError, did_you_mean
from netdef.frontend.schema import pb

__version__ = "1.0.0"          # the pycaffe API netdef follows (Caffe 1.0)

# ``import caffe.io`` needs ``caffe`` to be a package: the runner's finder
# serves the submodules (netdef.compat.runner), this only marks the module.
__path__: list[str] = []

TRAIN = pb.TRAIN
TEST = pb.TEST

proto = types.ModuleType("caffe.proto", "Caffe's schema: ``caffe.proto.caffe_pb2`` (netdef's).")
proto.caffe_pb2 = pb
proto.__path__ = []

# Submodules pycaffe users import by name, loaded on first use.
_LAZY = {
    "Classifier": ("netdef.compat.caffe_classifier", "Classifier"),
    "Detector": ("netdef.compat.caffe_detector", "Detector"),
    "Layer": ("netdef.compat.caffe_layer", "Layer"),
    "draw": ("netdef.compat.caffe_draw", None),
    "coord_map": ("netdef.compat.coord_map", None),
    "net_spec": ("netdef.compat.net_spec", None),
    "classifier": ("netdef.compat.caffe_classifier", None),
    "detector": ("netdef.compat.caffe_detector", None),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'caffe' (netdef.compat.caffe) has no attribute {name!r}")
    import importlib

    module_name, attr = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attr is None else getattr(module, attr)


# ------------------------------------------------------------ process ----
_RANDOM_SEED: list[int] = []


def set_mode_cpu() -> None:
    """netdef always runs on the CPU."""


def set_mode_gpu() -> None:
    warnings.warn("netdef runs on the CPU only: caffe.set_mode_gpu() is ignored", stacklevel=2)


def set_device(device_id: int) -> None:
    """Accepted and ignored (there is one device: the CPU)."""


def set_random_seed(seed: int) -> None:
    """Seed the fillers of nets and solvers created from now on (Caffe's
    global seed; a solver's own ``random_seed`` still wins)."""
    _RANDOM_SEED[:] = [int(seed)]


def random_seed() -> int | None:
    """The seed given to :func:`set_random_seed`, if any."""
    return _RANDOM_SEED[0] if _RANDOM_SEED else None


def init_log(*args, **kwargs) -> None:
    """Accepted (netdef logs to stderr)."""


def log(message) -> None:
    print(message, file=sys.stderr)


def solver_count() -> int:
    return 1


def solver_rank() -> int:
    return 0


def set_solver_count(count: int) -> None:
    """Accepted; netdef trains in one process."""


def set_solver_rank(rank: int) -> None:
    """Accepted; netdef trains in one process."""


def set_multiprocess(multiprocess: bool) -> None:
    """Accepted; netdef trains in one process."""


def has_nccl() -> bool:
    return False


def layer_type_list() -> list[str]:
    from netdef.layers.base import layer_types

    return layer_types()


class Timer:
    """pycaffe's ``caffe.Timer``: ``start()``, ``stop()``, ``ms``."""

    def __init__(self):
        self._started: float | None = None
        self._elapsed = 0.0
        self._ran = False

    def start(self) -> None:
        if self._started is None:
            self._started = time.perf_counter()
            self._ran = True

    def stop(self) -> None:
        if self._started is not None:
            self._elapsed = time.perf_counter() - self._started
            self._started = None

    @property
    def ms(self) -> float:
        """Milliseconds from the last start to the last stop (stops a running timer)."""
        if not self._ran:
            return 0.0
        self.stop()
        return self._elapsed * 1000.0


# --------------------------------------------------------------- blobs ----
class Blob:
    """pycaffe's Blob view: ``data``, ``diff``, ``shape``, ``reshape(*shape)``."""

    __slots__ = ("_blob",)

    def __init__(self, blob):
        self._blob = blob

    @property
    def data(self) -> np.ndarray:
        return self._blob.data

    @data.setter
    def data(self, value) -> None:
        self._blob.data = value

    @property
    def diff(self) -> np.ndarray:
        return self._blob.diff

    @property
    def shape(self) -> tuple[int, ...]:
        return self._blob.shape

    @property
    def count(self) -> int:
        return self._blob.count

    def reshape(self, *shape) -> None:
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        self._blob.reshape(tuple(int(d) for d in shape))

    def _axis(self, i: int) -> int:
        shape = self._blob.shape
        return shape[i] if i < len(shape) else 1

    num = property(lambda self: self._axis(0))
    channels = property(lambda self: self._axis(1))
    height = property(lambda self: self._axis(2))
    width = property(lambda self: self._axis(3))

    def __repr__(self) -> str:
        return f"<caffe Blob {self.shape}>"


def _net_args(args, weights, phase):
    """Sort out pycaffe's Net(file, phase), Net(file, weights, phase) and
    Net(file, phase, weights=...) forms."""
    args = list(args)
    if len(args) == 2:
        weights, phase = args
    elif len(args) == 1:
        if isinstance(args[0], (str, os.PathLike)):
            weights = args[0]
        else:
            phase = args[0]
    elif len(args) > 2:
        from netdef.compat.errors import CompatTypeError

        raise CompatTypeError("caffe.Net(network_file, [weights_file,] phase): too many arguments")
    return weights, TEST if phase is None else phase


def _is_hdf5(path) -> bool:
    return os.fspath(path).endswith(".h5")


# ----------------------------------------------------------------- net ----
class Net:
    """pycaffe's ``caffe.Net`` over :class:`netdef.net.Net` (every blob readable).

    ``Net(file, phase, level=0, stages=None, weights=None)`` or the older
    ``Net(file, weights, phase)``. Weights ending in ``.h5`` are read as
    Caffe's HDF5 snapshots, others as .caffemodel (Caffe's rule).
    """

    def __init__(self, network_file, *args, weights=None, phase=None, level: int = 0,
                 stages=None):
        from netdef.net import Net as _Net

        weights, phase = _net_args(args, weights, phase)
        h5 = weights is not None and _is_hdf5(weights)
        self._net = _Net(os.fspath(network_file),
                         weights=None if h5 or weights is None else os.fspath(weights),
                         phase=phase, level=level, stages=tuple(stages or ()),
                         seed=random_seed() or 0)
        if h5:
            self.load_hdf5(weights)

    @classmethod
    def _wrap(cls, net) -> Net:
        """A compat Net over an existing netdef Net (a solver's nets)."""
        obj = cls.__new__(cls)
        obj._net = net
        return obj

    # ---- attributes ----------------------------------------------------------
    @property
    def blobs(self) -> OrderedDict:
        return OrderedDict((n, Blob(b)) for n, b in self._net.blobs.items())

    @property
    def params(self) -> OrderedDict:
        return OrderedDict((n, [Blob(b) for b in bs]) for n, bs in self._net.params.items())

    @property
    def blob_loss_weights(self) -> OrderedDict:
        return OrderedDict(self._net.blob_loss_weights)

    @property
    def inputs(self) -> list[str]:
        return list(self._net.inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self._net.outputs)

    @property
    def layers(self) -> list:
        return list(self._net.layers)

    @property
    def _layer_names(self) -> list[str]:
        return list(self._net.layer_names)

    @property
    def _blob_names(self) -> list[str]:
        return list(self._net.blobs)

    @property
    def _inputs(self) -> list[int]:
        names = self._blob_names
        return [names.index(n) for n in self.inputs]

    @property
    def _outputs(self) -> list[int]:
        names = self._blob_names
        return [names.index(n) for n in self.outputs]

    @property
    def layer_dict(self) -> OrderedDict:
        return OrderedDict(zip(self._net.layer_names, self._net.layers, strict=True))

    @property
    def top_names(self) -> OrderedDict:
        return OrderedDict((n.name, list(n.tops)) for n in self._net.graph.nodes)

    @property
    def bottom_names(self) -> OrderedDict:
        return OrderedDict((n.name, list(n.bottoms)) for n in self._net.graph.nodes)

    def _check_layer(self, name) -> None:
        if name is not None and name not in self._net.layer_names:
            raise CompatValueError(f"net '{self._net.name}' has no layer {name!r}",
                                   hint=did_you_mean(str(name), self._net.layer_names))

    # ---- running -------------------------------------------------------------
    def forward(self, blobs=None, start=None, end=None, **kwargs) -> dict:
        """Fill inputs from ``kwargs`` (all of them, pycaffe requires), run
        layers ``start`` .. ``end`` (inclusive), and return the outputs (or
        the tops of ``end``) plus ``blobs``, as views."""
        self._check_layer(start)
        self._check_layer(end)
        if kwargs and set(kwargs) != set(self.inputs):
            raise CompatValueError(f"Input blob arguments do not match net inputs: forward() "
                                   f"was given {sorted(kwargs)}; pass every net input: "
                                   f"{self.inputs}")
        return self._net.forward(blobs=list(blobs or ()), start=start, end=end, **kwargs)

    def backward(self, diffs=None, start=None, end=None, **kwargs) -> dict:
        """Set the output diffs from ``kwargs`` (all outputs, pycaffe requires;
        loss outputs are otherwise seeded with their loss weights), run
        layers ``start`` .. ``end`` backward, and return the diffs of the
        inputs (or of ``end``'s bottoms) plus ``diffs``."""
        self._check_layer(start)
        self._check_layer(end)
        diffs = list(diffs or ())
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise CompatValueError(f"Top diff arguments do not match net outputs: backward() "
                                       f"was given {sorted(kwargs)}; the outputs are "
                                       f"{self.outputs}")
            for top, diff in kwargs.items():
                want = self._net.blobs[top].shape
                if np.shape(diff)[:1] != want[:1]:
                    raise CompatValueError(f"Diff is not batch sized: '{top}' has shape {want}, "
                                           f"the diff {np.shape(diff)}")
        self._net.backward(diffs=diffs, start=start, end=end, **kwargs)
        names = (self.bottom_names[end] if end is not None else self.inputs) + diffs
        return {n: self._net.blobs[n].diff for n in dict.fromkeys(names)}

    def _batch(self, arrays: dict):
        """pycaffe's batching: full batches of the first blob's batch size,
        then the rest padded with zeros."""
        if not arrays:
            return
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        total = len(next(iter(arrays.values())))
        size = next(iter(self._net.blobs.values())).shape[0]
        for start in range(0, total - total % size, size):
            yield {k: v[start:start + size] for k, v in arrays.items()}
        rest = total % size
        if rest:
            yield {k: np.concatenate([v[total - rest:],
                                      np.zeros((size - rest,) + v.shape[1:], v.dtype)])
                   for k, v in arrays.items()}

    @staticmethod
    def _pack(collected: dict, total: int | None) -> dict:
        out = {n: np.asarray(v) for n, v in collected.items()}
        return {n: (v[:total] if total is not None else v) for n, v in out.items()}

    def forward_all(self, blobs=None, **kwargs) -> dict:
        """Forward any number of items in batches of the net's batch size
        (the last one zero-padded); {blob: all items}."""
        names = list(dict.fromkeys(self.outputs + list(blobs or ())))
        if not kwargs:
            out = self.forward(blobs=blobs)
            return {n: np.array(out[n]) for n in names}
        collected = {n: [] for n in names}
        for batch in self._batch(kwargs):
            out = self.forward(blobs=blobs, **batch)
            for n in names:
                collected[n].extend(np.array(out[n]))
        return self._pack(collected, len(next(iter(kwargs.values()))))

    def forward_backward_all(self, blobs=None, diffs=None, **kwargs) -> tuple[dict, dict]:
        """Forward and backward in batches; ({blob: data}, {blob: diff}).
        ``kwargs`` holds input arrays (forward) and output diffs (backward)."""
        outs = {n: [] for n in dict.fromkeys(self.outputs + list(blobs or ()))}
        grads = {n: [] for n in dict.fromkeys(self.inputs + list(diffs or ()))}
        forward_in = {k: v for k, v in kwargs.items() if k in self.inputs}
        backward_in = {k: v for k, v in kwargs.items() if k in self.outputs}
        for fb, bb in zip_longest(self._batch(forward_in), self._batch(backward_in),
                                  fillvalue={}):
            got = self.forward(blobs=blobs, **fb)
            for n in outs:
                outs[n].extend(np.array(got[n]))
            got = self.backward(diffs=diffs, **bb)
            for n in grads:
                grads[n].extend(np.array(got[n]))
        total = len(next(iter(kwargs.values()))) if kwargs else None
        return self._pack(outs, total), self._pack(grads, total)

    def set_input_arrays(self, data, labels) -> None:
        """Hand arrays to the net's MemoryData layer (pycaffe's; labels (N,)
        or (N, 1, 1, 1); N a multiple of its batch_size)."""
        layer = next((lay for lay in self._net.layers if lay.type == "MemoryData"), None)
        if layer is None:
            raise CompatRuntimeError(f"set_input_arrays may only be called if the net has a "
                                     f"MemoryData layer; net '{self._net.name}' has none")
        try:
            layer.set_input_arrays(data, labels)
        except InputError as err:
            raise CompatRuntimeError(str(err)) from None
        if hasattr(layer, "fed"):
            layer.fed = False              # serve these arrays, not data fed earlier

    def clear_param_diffs(self) -> None:
        self._net.clear_param_diffs()

    def share_with(self, other) -> None:
        """Use ``other``'s parameter blobs, by layer name (ShareTrainedLayersWith)."""
        self._net.share_with(other._net if isinstance(other, Net) else other)

    def reshape(self) -> None:
        self._net.reshape()

    # ---- weights -------------------------------------------------------------
    def copy_from(self, path) -> None:
        """Load weights by layer name: Caffe's HDF5 format for ``.h5``, else .caffemodel."""
        if _is_hdf5(path):
            self.load_hdf5(path)
        else:
            self._net.copy_from(os.fspath(path))

    def save(self, path) -> None:
        self._net.save(os.fspath(path))

    def save_hdf5(self, path) -> None:
        """Caffe's HDF5 weights: ``/data/<layer>/<i>``, every layer a group,
        a shared parameter stored once, by its owner."""
        import h5py

        seen: set[int] = set()
        with h5py.File(os.fspath(path), "w") as f:
            data = f.create_group("data")
            for name, layer in zip(self._net.layer_names, self._net.layers, strict=True):
                group = data.create_group(name)
                for i, blob in enumerate(layer.blobs):
                    if id(blob) not in seen:
                        seen.add(id(blob))
                        group.create_dataset(str(i), data=np.asarray(blob.data, np.float32))

    def load_hdf5(self, path) -> None:
        """Copy weights by layer name from Caffe's HDF5 format (layers the net
        lacks are skipped, as Caffe does)."""
        import h5py

        where = os.fspath(path)
        owned: set[int] = set()
        owners = {}
        for name, layer in zip(self._net.layer_names, self._net.layers, strict=True):
            owners[name] = [id(b) not in owned for b in layer.blobs]
            owned.update(id(b) for b in layer.blobs)
        try:
            f = h5py.File(where, "r")
        except OSError as err:
            raise WeightsError(f"cannot read HDF5 weights: {err}", where=where) from None
        with f:
            if "data" not in f:
                raise WeightsError("no 'data' group: not Caffe HDF5 weights", where=where)
            layers_by_name = dict(zip(self._net.layer_names, self._net.layers, strict=True))
            for name, group in f["data"].items():
                layer = layers_by_name.get(name)
                if layer is None:
                    continue
                if len(group) > len(layer.blobs):
                    raise WeightsError(f"layer '{name}' has {len(group)} blobs in the file but "
                                       f"{len(layer.blobs)} in the net", where=where)
                for i, blob in enumerate(layer.blobs):
                    if str(i) not in group:
                        if owners[name][i]:
                            raise WeightsError(f"layer '{name}' has no blob {i} in the file",
                                               where=where)
                        continue           # shared: its owner brings it
                    arr = np.asarray(group[str(i)], dtype=np.float32)
                    if arr.shape != tuple(blob.shape):
                        raise WeightsError(f"layer '{name}' blob {i}: shape {arr.shape} in the "
                                           f"file, {tuple(blob.shape)} in the net", where=where)
                    blob.data[...] = arr
        self._net.params_changed()

    def __repr__(self) -> str:
        return f"<caffe.Net over {self._net!r}>"


if __name__ == "__main__":                      # python -m netdef.compat.caffe SCRIPT ...
    from netdef.compat.runner import main

    sys.exit(main(sys.argv[1:], prog="python -m netdef.compat.caffe"))
