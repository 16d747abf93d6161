"""Migration layers: run pycaffe and OpenCV-dnn code on netdef by changing an import.

* ``from netdef.compat import caffe`` instead of ``import caffe``: pycaffe's
  common surface (``caffe.Net``, ``caffe.TEST``, ``caffe.io.Transformer``,
  ``caffe.io.load_image``, ``caffe.proto.caffe_pb2``, ``caffe.Classifier``).
* ``from netdef.compat import cv2dnn`` instead of ``cv2.dnn``:
  ``readNetFromCaffe``, ``blobFromImage(s)`` and the Net methods a Caffe
  classification script calls.

Nothing is imported here, so ``import netdef.compat`` stays cheap; import the
submodule you need.
"""
