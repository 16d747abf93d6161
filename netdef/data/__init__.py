"""Reading training data: the data layers' machinery, apart from the layers.

* ``transform``: Caffe's DataTransformer (crop, mirror, mean, scale).
* ``records``: Datum messages, images as Caffe stores them, list files.
* ``readers``: LMDB, image-list and HDF5 sources, and the batch stream.
* ``prefetch``: the background thread that prepares the next batches.
* ``imageset``: ``convert_imageset`` and ``compute_image_mean`` (Caffe's tools).

The layers in ``netdef.layers.data`` are thin wrappers over these. Nothing
here is imported by shape-only tools unless a data layer reads its source.
"""
from __future__ import annotations

__all__ = ["DataTransformer", "compute_image_mean", "convert_imageset"]


def __getattr__(name):      # lazy: `import netdef.data` stays cheap
    if name == "DataTransformer":
        from netdef.data.transform import DataTransformer

        return DataTransformer
    if name in ("convert_imageset", "compute_image_mean"):
        from netdef.data import imageset

        return getattr(imageset, name)
    raise AttributeError(f"module 'netdef.data' has no attribute {name!r}")
