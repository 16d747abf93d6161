"""Image loading and preprocessing with Caffe's semantics.

Two preprocessing paths exist in Caffe and both live here:

* pycaffe's (``caffe.io.load_image`` + ``Transformer`` + ``Classifier``):
  :func:`load_image` gives an H x W x C RGB float image in [0, 1];
  :class:`Preprocessor` resizes it (optionally to a larger size first and then
  center-crops, like ``Classifier.predict(oversample=False)``), transposes to
  C x H x W, swaps RGB to BGR, multiplies by ``raw_scale`` (255), subtracts
  the mean and multiplies by ``input_scale`` -- in that order.
* the data layers' ``transform_param``: ``netdef.data.transform``'s
  DataTransformer (still importable from here) crops (random in TRAIN,
  center in TEST), mirrors, subtracts ``mean_file`` or ``mean_value`` and
  multiplies by ``scale``.

Resizing (:func:`resize_image`) is bilinear with half-pixel centers and edge
clamping, without anti-aliasing. Measured on ../shared images (cat.jpg
360x480, fish-bike.jpg 323x481) against scikit-image 0.26 ``resize(order=1)``
as pycaffe calls it (min/max-normalised):

* ``mode='constant', anti_aliasing=False`` (the skimage of pycaffe's era):
  identical (max |diff| 3e-16) when downsampling to 227/224/256, which is
  the common case; when upsampling only the outermost row/column differs
  (constant mode blends it with the image minimum, up to 0.29 in [0, 1]).
* ``mode='edge', anti_aliasing=False``: identical for every size.
* today's defaults (``mode='reflect'``, Gaussian anti-aliasing before
  downsampling): max 0.16 (42/255), mean 0.002-0.005 (0.6-1.1/255).
* OpenCV ``cv2.resize(float32, INTER_LINEAR)``: identical up to 1e-7.

So netdef reproduces classic pycaffe exactly where it matters and avoids the
constant-mode dark border on upsampled images.
"""
from __future__ import annotations

import os

import numpy as np

from netdef.errors import InputError

# skimage's rgb2gray weights (ITU-R BT.709), which pycaffe's load_image(color=False) used.
_GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])


# ------------------------------------------------------------- loading ----

ALPHA_DROPPED = ("the alpha channel is dropped (transparent pixels are not composited onto "
                 "a background)")


def load_image(path, color: bool = True, notes: list | None = None) -> np.ndarray:
    """Read an image file as float32 H x W x C in [0, 1], like pycaffe.

    ``color=True`` gives 3 RGB channels: grayscale is replicated, palette
    images are expanded, alpha is dropped (not composited -- pycaffe keeps
    ``img[:, :, :3]``), CMYK/YCbCr are converted. ``color=False`` gives one
    channel: color images become luminance with BT.709 weights (skimage's
    ``rgb2gray``). 8-bit data is divided by 255, 16-bit by 65535 (Pillow's
    32-bit "I" mode, used for some 16-bit files, is scaled the same way and
    clipped), float ("F") data is kept as is. EXIF orientation is ignored, as
    in pycaffe. Multi-frame files give their first frame. What is dropped
    on the way (transparency) is appended to ``notes`` as a sentence, so a
    caller can say so.
    """
    from PIL import Image, UnidentifiedImageError

    where = os.fspath(path)
    try:
        with Image.open(path) as img:
            img.load()
    except FileNotFoundError:
        raise InputError("image file not found", where=where) from None
    except UnidentifiedImageError:
        raise InputError("not an image file Pillow can read", where=where) from None
    except Image.DecompressionBombError as e:
        raise InputError(f"image refused: {e}", where=where) from None
    except (OSError, ValueError, SyntaxError) as e:  # unreadable, truncated or corrupt
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise InputError(f"cannot read image: {reason}", where=where) from None
    if notes is not None and _has_transparency(img):
        notes.append(ALPHA_DROPPED)
    arr = _pixels(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if color and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif not color and arr.shape[2] == 3:
        arr = (arr @ _GRAY_WEIGHTS)[:, :, None]
    return np.ascontiguousarray(arr, dtype=np.float32)


def _has_transparency(img) -> bool:
    """Whether any pixel is not fully opaque (an all-opaque alpha loses nothing)."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if "A" not in img.getbands() and "a" not in img.getbands():
        return False
    low, _ = img.getchannel("A" if "A" in img.getbands() else "a").getextrema()
    return low < 255       # alpha bands are 8-bit in every Pillow mode that has one


def _pixels(img) -> np.ndarray:
    """The image as float64 in [0, 1]: H x W (one channel) or H x W x 3."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img, dtype=np.float64)
    if mode.startswith("I;16"):
        return np.asarray(img).astype(np.float64) / 65535.0
    if mode == "I":
        return np.clip(np.asarray(img, dtype=np.float64) / 65535.0, 0.0, 1.0)
    if mode == "F":
        return np.asarray(img, dtype=np.float64)
    if mode in ("L", "LA", "La"):
        return np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    if mode in ("P", "PA"):
        # Via RGBA, as skimage reads palettes; P -> RGB directly warns about transparency.
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")  # RGBA, RGBX, CMYK, YCbCr, ...: alpha is dropped, not composited
    return np.asarray(img, dtype=np.float64) / 255.0


# ------------------------------------------------------------ resizing ----

def _axis_weights(n_out: int, n_in: int, step: float):
    """Source index pairs and weights for one axis (half-pixel centers, clamped)."""
    x = (np.arange(n_out) + 0.5) * step - 0.5
    x = np.clip(x, 0.0, n_in - 1)
    lo = np.floor(x).astype(np.intp)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, x - lo


def resize_image(im: np.ndarray, size, *, step=None) -> np.ndarray:
    """Bilinear resize of an H x W [x C] image to ``size`` = (h, w), as float32.

    ``step`` = (sy, sx) source pixels per output pixel; by default H/h and
    W/w. OpenCV's ``resize(fx=, fy=)`` maps with 1/fx instead, which
    compat.cv2dnn passes here. The arithmetic is done in float64.
    """
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise InputError(f"cannot resize to {h}x{w}: sizes must be positive")
    src = np.asarray(im, dtype=np.float64)
    squeeze = src.ndim == 2
    if squeeze:
        src = src[:, :, None]
    big_h, big_w = src.shape[:2]
    if (big_h, big_w) == (h, w) and step is None:
        out = src
    else:
        sy, sx = step if step is not None else (big_h / h, big_w / w)
        y0, y1, wy = _axis_weights(h, big_h, sy)
        x0, x1, wx = _axis_weights(w, big_w, sx)
        wx = wx[None, :, None]
        top = src[y0][:, x0] * (1 - wx) + src[y0][:, x1] * wx
        bottom = src[y1][:, x0] * (1 - wx) + src[y1][:, x1] * wx
        wy = wy[:, None, None]
        out = top * (1 - wy) + bottom * wy
    out = out[:, :, 0] if squeeze else out
    return np.ascontiguousarray(out, dtype=np.float32)


def center_crop_offsets(size, crop) -> tuple[int, int]:
    """Top-left corner of a centered ``crop`` (h, w) inside ``size`` (H, W).

    Equals pycaffe Classifier's ``int(center - crop/2)`` and Caffe's
    ``(H - h) / 2`` (both round down).
    """
    return (int(size[0]) - int(crop[0])) // 2, (int(size[1]) - int(crop[1])) // 2


def center_crop(im: np.ndarray, crop, axes=(0, 1)) -> np.ndarray:
    """The centered (h, w) window of ``im`` over the two given axes."""
    ay, ax = axes
    oy, ox = center_crop_offsets((im.shape[ay], im.shape[ax]), crop)
    index = [slice(None)] * im.ndim
    index[ay] = slice(oy, oy + int(crop[0]))
    index[ax] = slice(ox, ox + int(crop[1]))
    return im[tuple(index)]


# --------------------------------------------------------------- means ----

def parse_mean(spec: str, channels: int):
    """``--mean``: "B,G,R" / one number -> (C,) values, else a mean file.

    Returns ``(array, source)``; files are read by netdef.io.binaryproto
    (``.binaryproto`` or ``.npy``), values are given in the net's channel
    order (BGR for Caffe's ImageNet models).
    """
    parts = [p.strip() for p in spec.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = None
    if values is not None:
        if len(values) not in (1, channels):
            raise InputError(f"--mean {spec!r} has {len(values)} values; the input has "
                             f"{channels} channels", hint="give one value or one per channel")
        return np.array(values * (channels // len(values)), dtype=np.float32), None
    from netdef.io.binaryproto import read_mean

    return read_mean(spec), spec


def fit_mean(mean, shape):
    """Fit a mean to a (C, H, W) input; returns ``(array, rule)``.

    The rule, which :meth:`Preprocessor.describe` reports:

    * one value or one per channel -> subtracted per channel;
    * a (C, H, W) image of the input's size -> subtracted pixelwise;
    * a larger image (the usual 256x256 mean for a 227x227 input) -> its
      center crop, the window Caffe's TEST-phase data layer would use;
    * a smaller image -> its per-channel average (pycaffe's
      ``mean.mean(1).mean(1)``), since no window of it fits.
    """
    c, h, w = (int(d) for d in shape)
    m = np.asarray(mean, dtype=np.float32)
    if m.ndim == 0:
        m = m.reshape(1)
    if m.ndim == 2:
        m = m[None]
    if m.ndim == 1:
        if m.size not in (1, c):
            raise InputError(f"the mean has {m.size} values; the input has {c} channels")
        values = np.broadcast_to(m, (c,)).copy()
        return values.reshape(c, 1, 1), "per-channel values " + _fmt_values(values)
    if m.ndim != 3 or m.shape[0] != c:
        raise InputError(f"the mean has shape {tuple(m.shape)}; the input needs {c} channels "
                         f"(a (C, H, W) image or C values)")
    mh, mw = m.shape[1:]
    if (mh, mw) == (h, w):
        return m, f"mean image {mh}x{mw}"
    if mh >= h and mw >= w:
        return np.ascontiguousarray(center_crop(m, (h, w), axes=(1, 2))), \
            f"mean image {mh}x{mw} center-cropped to {h}x{w}"
    values = m.mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
    return values.reshape(c, 1, 1), (f"per-channel average {_fmt_values(values)} of the "
                                     f"mean image {mh}x{mw} (smaller than the input {h}x{w})")


def _fmt_values(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in np.asarray(values).ravel()) + ")"



# ------------------------------------------------------- pycaffe style ----

class Preprocessor:
    """pycaffe's classification preprocessing for one net input.

    ``prep(image)`` takes :func:`load_image`'s H x W x C RGB [0, 1] image
    and returns the C x H x W float32 array the net's input expects:

    1. resize to the input (H, W); or, with ``resize=(h, w)`` larger than the
       input, resize to (h, w) and center-crop to (H, W) (pycaffe's
       ``Classifier`` with ``image_dims`` and ``oversample=False``);
    2. H x W x C -> C x H x W, then ``channel_swap`` (default (2, 1, 0):
       RGB -> BGR for 3-channel inputs);
    3. multiply by ``raw_scale`` (255: back to Caffe's 0..255 pixel range);
    4. subtract the mean, fitted to the input by :func:`fit_mean`;
    5. multiply by ``input_scale``.
    """

    def __init__(self, input_shape, *, resize=None, channel_swap="auto", raw_scale=255.0,
                 mean=None, mean_source=None, input_scale=None):
        c, h, w = (int(d) for d in tuple(input_shape)[-3:])
        self.shape = (c, h, w)
        self.resize = (h, w) if resize is None else (int(resize[0]), int(resize[1]))
        if self.resize[0] < h or self.resize[1] < w:
            raise InputError(f"resize size {self.resize[0]}x{self.resize[1]} is smaller than "
                             f"the net input {h}x{w}; it must be at least the input size")
        self.crop = self.resize != (h, w)
        if channel_swap == "auto":
            channel_swap = (2, 1, 0) if c == 3 else None
        if channel_swap is not None:
            channel_swap = tuple(int(i) for i in channel_swap)
            if sorted(channel_swap) != list(range(c)):
                raise InputError(f"channel swap {channel_swap} is not an order of the "
                                 f"input's {c} channels")
        self.channel_swap = channel_swap
        self.raw_scale = raw_scale
        self.input_scale = input_scale
        self.mean_source = mean_source
        self.mean, self.mean_rule = (None, None) if mean is None else fit_mean(mean, self.shape)

    @property
    def color(self) -> bool:
        """Whether images should be loaded with 3 channels."""
        return self.shape[0] != 1

    def __call__(self, image) -> np.ndarray:
        im = np.asarray(image, dtype=np.float32)
        if im.ndim == 2:
            im = im[:, :, None]
        c, h, w = self.shape
        if im.ndim != 3 or im.shape[2] not in (1, c):
            raise InputError(f"image of shape {im.shape} does not fit the input's {c} channels")
        if im.shape[2] != c:
            im = np.repeat(im, c, axis=2)
        im = resize_image(im, self.resize)
        if self.crop:
            im = center_crop(im, (h, w))
        x = im.transpose(2, 0, 1)
        if self.channel_swap is not None:
            x = x[list(self.channel_swap)]
        x = np.array(x, dtype=np.float32)  # a fresh contiguous copy: the steps below are in place
        if self.raw_scale is not None:
            x *= self.raw_scale
        if self.mean is not None:
            x -= self.mean
        if self.input_scale is not None:
            x *= self.input_scale
        return x

    def batch(self, images) -> np.ndarray:
        """Preprocess several images into one N x C x H x W array."""
        return np.stack([self(im) for im in images])

    def channel_order(self) -> str:
        c, swap = self.shape[0], self.channel_swap
        if c == 1:
            return "gray"
        if c == 3 and swap in (None, (0, 1, 2)):
            return "RGB"
        if c == 3 and swap == (2, 1, 0):
            return "BGR"
        return f"RGB channels reordered by {swap}" if swap else "as loaded"

    def describe(self) -> dict:
        """What is applied, as plain data (for ``--json`` and the stderr line)."""
        c, h, w = self.shape
        mean = None
        if self.mean is not None:
            mean = {"source": self.mean_source, "rule": self.mean_rule}
            if self.mean.shape[1:] == (1, 1):
                mean["values"] = [float(v) for v in self.mean.ravel()]
        return {
            "input_shape": [c, h, w],
            "resize": list(self.resize),
            "interpolation": "bilinear",
            "crop": [h, w] if self.crop else None,
            "channel_order": self.channel_order(),
            "channel_swap": list(self.channel_swap) if self.channel_swap else None,
            "raw_scale": self.raw_scale,
            "mean": mean,
            "input_scale": self.input_scale,
        }

    def summary(self) -> str:
        """The preprocessing as one line, in the order it is applied."""
        c, h, w = self.shape
        steps = [f"image as {'RGB' if self.color else 'gray'} in [0,1]",
                 f"resize to {self.resize[0]}x{self.resize[1]} (bilinear)"]
        if self.crop:
            steps.append(f"center crop {h}x{w}")
        if c == 3 and self.channel_order() != "RGB":
            steps.append(f"RGB->{self.channel_order()}")
        if self.raw_scale is not None:
            steps.append(f"x{self.raw_scale:g}")
        if self.mean is not None:
            src = f" from {self.mean_source}" if self.mean_source else ""
            steps.append(f"minus {self.mean_rule}{src}")
        if self.input_scale is not None:
            steps.append(f"x{self.input_scale:g}")
        return " -> ".join(steps) + f" -> input {c}x{h}x{w}"


# ------------------------------------------------------ transform_param ----

def __getattr__(name):
    # The data layers' DataTransformer lives in netdef.data.transform now.
    if name == "DataTransformer":
        from netdef.data.transform import DataTransformer

        return DataTransformer
    raise AttributeError(f"module 'netdef.images' has no attribute {name!r}")
