"""Legacy pickled ``.npy`` weight dicts, read with a restricted unpickler.

Some ports of Caffe models ship weights as ``np.save(path, {'conv1': [W, b],
...})`` -- e.g. the TensorFlow AlexNet port's ``bvlc_alexnet.npy``. Such a
file is a 0-d object array whose pickled item is the dict, and loading it
with ``np.load(allow_pickle=True)`` runs arbitrary code from the file. Here
the ``.npy`` header is parsed with NumPy's format helpers and the pickle is
run by an unpickler whose ``find_class`` only knows the few globals that
NumPy arrays, dtypes and scalars reference (under both the NumPy 1.x
``numpy.core`` and 2.x ``numpy._core`` module names); every other global --
``os.system``, ``builtins.eval``, any class -- is refused before it can be
called.

Globals that NumPy pickles reference (checked with NumPy 1.x and 2.x):
  protocols 0-4: ``numpy.core[._core].multiarray._reconstruct``, ``numpy.ndarray``,
                 ``numpy.dtype``, ``numpy.core[._core].multiarray.scalar``;
  protocol 5:    ``numpy.core[._core].numeric._frombuffer`` instead of _reconstruct;
  protocol 2 from Python 3: ``_codecs.encode`` to rebuild ``bytes`` (only the
                 latin-1 form is allowed).
Dicts, lists and tuples are pickle opcodes, not globals; ``collections.OrderedDict``
is allowed too, as some exporters saved one.
"""
from __future__ import annotations

import collections
import os
import pickle

import numpy as np
from numpy.lib import format as npy_format

from netdef.errors import WeightsError

# The callables themselves are taken from NumPy's own pickling, so the right
# objects are found whatever the installed NumPy calls their modules.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_SCALAR = np.float32(0).__reduce__()[0]
_FROMBUFFER = np.empty(1).__reduce_ex__(5)[0]


def _latin1_encode(text, encoding="latin1"):
    """Stand-in for ``_codecs.encode`` limited to what pickled bytes need."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("only latin-1 bytes reconstruction is allowed")
    return text.encode("latin1")


_ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _SCALAR
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _FROMBUFFER


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals in ``_ALLOWED``."""

    def __init__(self, file, where: str):
        # latin1 is what NumPy documents for Python 2 pickles: a py2 `str`
        # holding array bytes must come back byte-for-byte.
        super().__init__(file, encoding="latin1")
        self.where = where

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise WeightsError(f"refusing to unpickle '{module}.{name}' from {self.where}: "
                               "only arrays, dicts and lists are allowed") from None

    def persistent_load(self, pid):
        raise WeightsError(f"refusing persistent ids in {self.where}: "
                           "only arrays, dicts and lists are allowed")


_HEADER_READERS = {
    (1, 0): npy_format.read_array_header_1_0,
    (2, 0): npy_format.read_array_header_2_0,
}


def load_npy(path):
    """Load any ``.npy`` safely: plain arrays with ``np.load(allow_pickle=False)``,
    object arrays with the restricted unpickler (returning what it unpickled)."""
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            version = npy_format.read_magic(f)
            reader = _HEADER_READERS.get(version)
            if reader is None:
                raise WeightsError(f"unsupported .npy format version {version}", where=where)
            _, _, dtype = reader(f)
            if not dtype.hasobject:
                f.close()
                return np.load(path, allow_pickle=False)
            return _RestrictedUnpickler(f, where).load()
    except OSError as e:
        raise WeightsError(f"cannot read: {e.strerror or e}", where=where) from None
    except WeightsError:
        raise
    except (ValueError, EOFError, pickle.UnpicklingError, TypeError, AttributeError,
            IndexError, KeyError) as e:
        raise WeightsError(f"not a readable .npy file: {e}", where=where) from None


def _as_blob_list(name, value, where) -> list[np.ndarray]:
    # The caffe-tensorflow exporter stores {'weights': W, 'biases': b}.
    if isinstance(value, dict):
        order = [k for k in ("weights", "biases") if k in value]
        if not order or len(order) != len(value):
            raise WeightsError(f"layer '{name}': expected keys 'weights'/'biases', "
                               f"got {sorted(map(str, value))}", where=where)
        value = [value[k] for k in order]
    elif isinstance(value, np.ndarray) and value.dtype != object:
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise WeightsError(f"layer '{name}': expected a list of arrays, got "
                           f"{type(value).__name__}", where=where)
    blobs = []
    for i, arr in enumerate(value):
        if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.number):
            raise WeightsError(f"layer '{name}' item {i}: expected a numeric array, got "
                               f"{getattr(arr, 'dtype', type(arr).__name__)}", where=where)
        blobs.append(np.asarray(arr, dtype=np.float32, order="C"))
    return blobs


def load_pickled_weight_dict(path) -> dict[str, list[np.ndarray]]:
    """Read a pickled ``{layer name: [arrays]}`` ``.npy`` without running its code.

    Returns float32 arrays in file order per layer. A non-pickled ``.npy``
    (one plain array) or a pickle of anything but arrays/dicts/lists raises
    WeightsError.
    """
    where = os.fspath(path)
    obj = load_npy(path)
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if isinstance(obj, np.ndarray):
        raise WeightsError(f"holds a plain {obj.dtype} array of shape {obj.shape}, "
                           "not a dict of layer weights", where=where)
    if not isinstance(obj, dict):
        raise WeightsError(f"holds a pickled {type(obj).__name__}, not a dict of layer weights",
                           where=where)
    out = {}
    for name, value in obj.items():
        if not isinstance(name, str):
            raise WeightsError(f"layer names must be strings, got {name!r}", where=where)
        out[name] = _as_blob_list(name, value, where)
    return out
