"""Mean images: Caffe ``.binaryproto`` (one BlobProto) or NumPy ``.npy``.

Caffe's ``compute_image_mean`` writes the mean as a BlobProto with the legacy
4-D fields (1, C, H, W); pycaffe users usually hold it as a (C, H, W) ``.npy``
(e.g. ``ilsvrc_2012_mean.npy``). Both are returned as a (C, H, W) float32
array. The format is recognised by content (the ``.npy`` magic), not by name.
"""
from __future__ import annotations

import os

import numpy as np
from google.protobuf.message import DecodeError

from netdef.errors import InputError, WeightsError
from netdef.io.atomic import atomic_write
from netdef.io.caffemodel import array_to_blob, blob_to_array
from netdef.frontend.schema import pb

_NPY_MAGIC = b"\x93NUMPY"


def _to_chw(arr: np.ndarray, where: str, what: str) -> np.ndarray:
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3 or arr.size == 0:
        raise InputError(f"{what} has shape {tuple(arr.shape)}; a mean must be (C, H, W) "
                         "or (1, C, H, W)", where=where)
    if not np.issubdtype(arr.dtype, np.number):
        raise InputError(f"{what} has dtype {arr.dtype}, not a number type", where=where)
    return np.asarray(arr, dtype=np.float32, order="C")


def _read_npy(path, where: str) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"cannot read the .npy mean: {e}", where=where) from None
    return _to_chw(arr, where, ".npy mean")


def _read_blob(data: bytes, where: str) -> np.ndarray:
    bp = pb.BlobProto()
    try:
        bp.ParseFromString(data)
        arr = blob_to_array(bp)
    except (DecodeError, WeightsError) as e:
        raise InputError(f"not a mean .binaryproto (BlobProto): {e}", where=where) from None
    return _to_chw(arr, where, "the BlobProto mean")


def read_mean(path) -> np.ndarray:
    """The mean image in ``path`` as a (C, H, W) float32 array.

    Accepts a BlobProto ``.binaryproto`` (legacy (1, C, H, W) or a shape
    field) or a ``.npy`` of shape (C, H, W) or (1, C, H, W). Pickled ``.npy``
    files are refused. Anything else raises InputError naming the path.
    """
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InputError(f"cannot read the mean file: {e.strerror or e}", where=where) from None
    if data.startswith(_NPY_MAGIC):
        return _read_npy(path, where)
    return _read_blob(data, where)


def write_binaryproto(path, arr) -> None:
    """Write a mean as Caffe does: a BlobProto with legacy (1, C, H, W) fields.

    A 3-D or 4-D array is written with the legacy fields (what old readers
    expect); other ranks get a ``shape`` field. The file is replaced atomically.
    """
    arr = np.asarray(arr, dtype=np.float32)
    blob = array_to_blob(arr, legacy=arr.ndim in (3, 4))
    atomic_write(path, blob.SerializeToString())
