"""pycaffe's ``caffe.Layer``: the base class of layers written in Python.

    import caffe                      # netdef.compat.caffe under ``netdef pycaffe``

    class EuclideanLossLayer(caffe.Layer):
        def setup(self, bottom, top): ...
        def reshape(self, bottom, top): top[0].reshape(1)
        def forward(self, bottom, top): ...
        def backward(self, top, propagate_down, bottom): ...

A net names the class with ``type: "Python"`` and ``python_param { module
layer param_str }`` (netdef.layers.python runs it). As in pycaffe the object
is built with the LayerParameter and has ``param_str``, ``phase`` (0 TRAIN,
1 TEST), ``type`` ("Python") and ``blobs``: its parameter blobs, grown with
``self.blobs.add_blob(*shape)`` and then filled by ``setup``. Bottoms and
tops are Blob views with ``data``, ``diff``, ``shape``, ``count``,
``num``/``channels``/``height``/``width`` and ``reshape(*shape)``.

A layer object created directly (a unit test of the user's layer, outside
any net) works too: its ``blobs`` are then its own.
"""
from __future__ import annotations

from netdef.layers.python import BlobVec, PyBlob

__all__ = ["Blob", "BlobVec", "Layer"]

Blob = PyBlob          # pycaffe's name for the view Python layers receive


class Layer:
    """Base class of pycaffe Python layers (``caffe.Layer``)."""

    def __init__(self, param=None):
        self._layer_param = param
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = 1                     # TEST; the net sets the real phase
        self._blob_vec = None

    # pycaffe's C++-backed attributes ------------------------------------------
    @property
    def blobs(self) -> BlobVec:
        if getattr(self, "_blob_vec", None) is None:     # used outside a net
            self._blob_vec = BlobVec()
        return self._blob_vec

    @property
    def type(self) -> str:
        return "Python"

    def _attach_netdef(self, blobs: BlobVec, param) -> None:
        """Called by netdef's Python layer right after construction."""
        self._blob_vec = blobs
        self._layer_param = param

    # the protocol: subclasses override --------------------------------------
    def setup(self, bottom, top) -> None:
        """Read ``self.param_str``, check the bottoms, add parameter blobs."""

    def reshape(self, bottom, top) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define reshape(bottom, top)")

    def forward(self, bottom, top) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define forward(bottom, top)")

    def backward(self, top, propagate_down, bottom) -> None:
        raise NotImplementedError(
            f"{type(self).__name__} must define backward(top, propagate_down, bottom)")
