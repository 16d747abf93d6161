"""``caffe.io`` for netdef: image loading, resizing, the Transformer, blob protos.

Behaviour follows pycaffe's ``caffe/io.py``: ``Transformer.preprocess``
resizes an H x W x C image to the input size when it differs, then applies
transpose, channel swap, raw scale, mean and input scale in that order, and
``deprocess`` undoes them. ``resize_image`` takes every ``interp_order``
pycaffe accepts (0..5; see netdef.compat.interp). Two deliberate
differences, each turning a pycaffe failure into what users expect:

* ``Transformer.set_mean`` given a mean image of another size (the 256 x 256
  ImageNet mean for a 227 x 227 input) resizes it to the input size, as
  pycaffe's first ``Net.set_mean`` did, instead of raising ValueError;
* ``resize_image`` also takes 2-D (H x W) images.

Errors that pycaffe raises as ValueError are :class:`CompatValueError`,
which is both a ValueError (so existing ``except ValueError`` still works)
and a netdef InputError (so the CLI prints one line).
"""
from __future__ import annotations

import numpy as np

from netdef.compat.errors import CompatValueError
from netdef.images import center_crop_offsets
from netdef.images import load_image as _load_image
from netdef.images import resize_image as _resize
from netdef.frontend.schema import pb


def load_image(filename, color: bool = True) -> np.ndarray:
    """H x W x 3 (or x 1 with ``color=False``) float32 RGB in [0, 1]."""
    return _load_image(filename, color)


def resize_image(im, new_dims, interp_order: int = 1) -> np.ndarray:
    """Resize an H x W x K image to ``new_dims`` (h, w), float32, as pycaffe.

    ``interp_order`` 0 (nearest) .. 5 (quintic spline). Images of 1 or 3
    channels take pycaffe's scikit-image path: scaled to [0, 1] by their
    min and max, resized on pixel centers, clipped to [0, 1] and scaled
    back (a constant image stays constant). Any other channel count takes
    its ``scipy.ndimage.zoom`` path (corner samples aligned, no clipping).
    """
    from netdef.compat import interp

    if isinstance(interp_order, bool) or not isinstance(interp_order, (int, np.integer)) \
            or not 0 <= interp_order <= interp.MAX_ORDER:
        raise CompatValueError(f"resize_image: interp_order must be an integer 0..5, got "
                               f"{interp_order!r}")
    im = np.asarray(im)
    h, w = (int(d) for d in new_dims)
    if h < 1 or w < 1:
        raise CompatValueError(f"resize_image: cannot resize to {h}x{w}")
    if im.ndim not in (2, 3) or 0 in im.shape:
        raise CompatValueError(f"resize_image: expected an H x W x K image, got shape {im.shape}")
    if im.ndim == 2 or im.shape[-1] in (1, 3):
        lo, hi = float(im.min()), float(im.max())
        if not hi > lo:                        # a constant image (pycaffe: avoid 0/0)
            return np.full((h, w) + im.shape[2:], lo, dtype=np.float32)
        if interp_order == 1:
            return _resize(im, (h, w))         # the same interpolant as netdef.images
        unit = (np.asarray(im, np.float64) - lo) / (hi - lo)
        out = np.clip(interp.resize(unit, (h, w), int(interp_order), "half"), 0.0, 1.0)
        return (out * (hi - lo) + lo).astype(np.float32)
    return interp.resize(im, (h, w), int(interp_order), "corners").astype(np.float32)


def oversample(images, crop_dims) -> np.ndarray:
    """The 10 crops pycaffe averages over: 4 corners and the center, then the
    same 5 mirrored left-right, per image (images must share one size)."""
    images = [np.asarray(im, dtype=np.float32) for im in images]
    height, width = images[0].shape[:2]
    ch, cw = (int(d) for d in crop_dims)
    cy, cx = center_crop_offsets((height, width), (ch, cw))
    corners = [(0, 0), (0, width - cw), (height - ch, 0), (height - ch, width - cw), (cy, cx)]
    crops = []
    for im in images:
        five = [im[y:y + ch, x:x + cw] for y, x in corners]
        crops += five + [c[:, ::-1] for c in five]
    return np.stack(crops).astype(np.float32)


class Transformer:
    """pycaffe's per-input preprocessing settings: ``Transformer({'data': shape})``."""

    def __init__(self, inputs: dict):
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose, self.channel_swap = {}, {}
        self.raw_scale, self.mean, self.input_scale = {}, {}, {}

    def _check(self, in_) -> None:
        if in_ not in self.inputs:
            raise CompatValueError(f"{in_!r} is not one of the net inputs: {list(self.inputs)}")

    def set_transpose(self, in_, order) -> None:
        self._check(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise CompatValueError("transpose order needs as many axes as one input item "
                                   f"({len(self.inputs[in_]) - 1}), got {tuple(order)}")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_, order) -> None:
        self._check(in_)
        if len(order) != self.inputs[in_][1]:
            raise CompatValueError(f"channel swap {tuple(order)} needs one entry per input "
                                   f"channel ({self.inputs[in_][1]})")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_, scale) -> None:
        self._check(in_)
        self.raw_scale[in_] = scale

    def set_input_scale(self, in_, scale) -> None:
        self._check(in_)
        self.input_scale[in_] = scale

    def set_mean(self, in_, mean) -> None:
        """Per-channel values (C,), or a mean image (C, H, W) or (H, W).

        A mean image of another height and width is resized to the input's
        (bilinear, over its value range), as pycaffe's ``Net.set_mean`` did;
        its channel count must match.
        """
        self._check(in_)
        mean = np.asarray(mean)
        expected = self.inputs[in_][1:]
        if mean.ndim == 1:
            if mean.shape[0] != expected[0]:
                raise CompatValueError(f"Mean channels incompatible with input: the mean has "
                                       f"{mean.shape[0]}, the input {expected[0]}")
            mean = mean[:, None, None]
        else:
            if mean.ndim == 2:
                mean = mean[None]
            if mean.ndim != 3:
                raise CompatValueError(f"Mean shape invalid: {mean.shape}",
                                       hint="give (C,), (H, W) or (C, H, W)")
            if mean.shape[0] != expected[0]:
                raise CompatValueError(f"Mean shape incompatible with input shape: the mean "
                                       f"{mean.shape} has {mean.shape[0]} channels, the input "
                                       f"{expected} has {expected[0]}",
                                       hint="use mean.mean(1).mean(1) for per-channel values")
            if mean.shape[1:] != expected[1:]:
                mean = resize_image(mean.transpose(1, 2, 0), expected[1:]).transpose(2, 0, 1)
        self.mean[in_] = mean

    def preprocess(self, in_, data) -> np.ndarray:
        """H x W x K image -> the input's layout, as pycaffe does."""
        self._check(in_)
        x = np.asarray(data, dtype=np.float32)
        in_dims = self.inputs[in_][2:]
        if x.shape[:2] != in_dims:
            x = resize_image(x, in_dims)
        if in_ in self.transpose:
            x = x.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            x = x[list(self.channel_swap[in_])]
        x = np.array(x, dtype=np.float32)  # own, contiguous memory for the in-place steps
        if self.raw_scale.get(in_) is not None:
            x *= self.raw_scale[in_]
        if self.mean.get(in_) is not None:
            x -= self.mean[in_]
        if self.input_scale.get(in_) is not None:
            x *= self.input_scale[in_]
        return x

    def deprocess(self, in_, data) -> np.ndarray:
        """Undo :meth:`preprocess` (except the resize) for viewing."""
        self._check(in_)
        x = np.array(data, dtype=np.float32).squeeze()
        if self.input_scale.get(in_) is not None:
            x /= self.input_scale[in_]
        if self.mean.get(in_) is not None:
            x += self.mean[in_]
        if self.raw_scale.get(in_) is not None:
            x /= self.raw_scale[in_]
        if in_ in self.channel_swap:
            x = x[np.argsort(self.channel_swap[in_])]
        if in_ in self.transpose:
            x = x.transpose(np.argsort(self.transpose[in_]))
        return x


# ------------------------------------------------------------ protos ----

def blobproto_to_array(blob, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or diff) as a float64 array of the blob's shape
    (the legacy num/channels/height/width when any is set, else ``shape``),
    as pycaffe. A blob with no shape holding other than one value is a
    ValueError."""
    from netdef.io.caffemodel import blob_shape

    shape, _ = blob_shape(blob)
    values = np.array(blob.diff if return_diff else blob.data, dtype=np.float64)
    if values.size != int(np.prod(shape, dtype=np.int64)):
        what = "diff" if return_diff else "data"
        raise CompatValueError(f"cannot reshape the blob's {values.size} {what} values into "
                               f"its shape {shape}",
                               hint="the blob has no shape" if not shape else None)
    return values.reshape(shape)


def array_to_blobproto(arr, diff=None):
    """An N-d array (and optional diff of the same shape) as a BlobProto."""
    from netdef.io.caffemodel import array_to_blob

    arr = np.asarray(arr)
    blob = array_to_blob(arr)
    if diff is not None:
        blob.diff.extend(np.asarray(diff, dtype=np.float32).reshape(arr.shape).ravel().tolist())
    return blob


def arraylist_to_blobprotovector_str(arraylist) -> bytes:
    vec = pb.BlobProtoVector()
    vec.blobs.extend(array_to_blobproto(a) for a in arraylist)
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(text: bytes) -> list[np.ndarray]:
    vec = pb.BlobProtoVector()
    vec.ParseFromString(text)
    return [blobproto_to_array(b) for b in vec.blobs]


def array_to_datum(arr, label=None):
    """A C x H x W array as a Datum: uint8 arrays as bytes, others as floats."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise CompatValueError(f"a Datum holds a C x H x W array, got shape {arr.shape}")
    datum = pb.Datum(channels=arr.shape[0], height=arr.shape[1], width=arr.shape[2])
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(np.float32).ravel().tolist())
    if label is not None:
        datum.label = int(label)
    return datum


def datum_to_array(datum) -> np.ndarray:
    """C x H x W: uint8 from ``data``, else float64 from ``float_data`` (pycaffe)."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.asarray(datum.float_data, dtype=np.float64).reshape(shape)
