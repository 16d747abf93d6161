"""Weight and data files: caffemodel, mean binaryproto, legacy .npy dicts, atomic writes.

The executor calls these; none of them needs a compiled net:

* ``read_caffemodel`` / ``write_caffemodel`` / ``match_weights`` -- Caffe weights;
* ``read_mean`` / ``write_binaryproto`` -- mean images;
* ``load_pickled_weight_dict`` -- pickled ``.npy`` dicts, never running their code;
* ``atomic_write`` / ``atomic_open`` -- every file netdef writes goes through these.
"""
from netdef.io.atomic import atomic_open, atomic_write
from netdef.io.binaryproto import read_mean, write_binaryproto
from netdef.io.caffemodel import (
    LayerBlobs,
    LoadReport,
    array_to_blob,
    blob_to_array,
    match_weights,
    read_caffemodel,
    write_caffemodel,
)
from netdef.io.npy_legacy import load_npy, load_pickled_weight_dict

__all__ = [
    "LayerBlobs", "LoadReport", "array_to_blob", "atomic_open", "atomic_write",
    "blob_to_array", "load_npy", "load_pickled_weight_dict", "match_weights",
    "read_caffemodel", "read_mean", "write_binaryproto", "write_caffemodel",
]
