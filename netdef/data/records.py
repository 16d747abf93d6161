"""Records as Caffe stores them: Datum messages, images as uint8 C x H x W
in BGR order (what OpenCV's ``imread`` gives Caffe), and ``path label`` lists.

Decoding uses Pillow. ``color`` is True (3 channels, BGR), False (one gray
channel, luma 0.299/0.587/0.114 as OpenCV and Pillow compute it) or None
(the file's own: gray files stay one channel, Caffe's ``DecodeDatumNative``).
Alpha is dropped; 16-bit images keep their high byte, as OpenCV's 8-bit
read does. A record that cannot be decoded raises :class:`RecordError`,
which the readers turn into a DataError naming the layer, source and key.
"""
from __future__ import annotations

import io
import os

import numpy as np

from netdef.frontend.schema import pb

_GRAY_MODES = ("1", "L", "LA", "La")


class RecordError(Exception):
    """One record cannot be decoded (the reader adds where it came from)."""


# ------------------------------------------------------------ images ----

def _to_8bit(img):
    """16-bit and float images as 8-bit gray, as OpenCV reads them into uint8."""
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535) >> 8
        return Image.fromarray(values.astype(np.uint8), "L")
    if mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8), "L")
    return img


def image_to_array(img, color: bool | None) -> np.ndarray:
    """A Pillow image as C x H x W uint8 (BGR when it has 3 channels)."""
    img = _to_8bit(img)
    if color is None:
        color = img.mode not in _GRAY_MODES
    if not color:
        return np.ascontiguousarray(np.asarray(img.convert("L"))[None])
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")          # palette transparency goes through RGBA
    rgb = np.asarray(img.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1].transpose(2, 0, 1))


def _open(source):
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(source)
        img.load()
        return img
    except FileNotFoundError:
        raise RecordError("image file not found") from None
    except UnidentifiedImageError:
        raise RecordError("not an image Pillow can decode") from None
    except Image.DecompressionBombError as e:
        raise RecordError(f"image refused: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:      # truncated or corrupt
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise RecordError(f"cannot decode the image: {reason}") from None


def decode_image(data: bytes, color: bool | None = None) -> np.ndarray:
    """Encoded image bytes (JPEG, PNG, ...) as C x H x W uint8."""
    return image_to_array(_open(io.BytesIO(data)), color)


def read_image(path, color: bool | None = True, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as C x H x W uint8, resized to ``size`` = (h, w) if given."""
    arr = image_to_array(_open(os.fspath(path)), color)
    if size is not None and tuple(size) != arr.shape[1:]:
        arr = resize_u8(arr, size)
    return arr


def resize_u8(arr: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of C x H x W uint8 to (h, w), rounded back to uint8 (as
    OpenCV's INTER_LINEAR on 8-bit images; it may differ by one level)."""
    from netdef.images import resize_image

    hwc = resize_image(arr.transpose(1, 2, 0), size)
    if hwc.ndim == 2:
        hwc = hwc[:, :, None]
    out = np.clip(np.rint(hwc), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def encode_image(arr: np.ndarray, fmt: str) -> bytes:
    """C x H x W uint8 (BGR or gray) encoded as ``fmt`` ("png", "jpg", ...)."""
    from PIL import Image

    fmt = fmt.lower().lstrip(".")
    name = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "tif": "TIFF",
            "tiff": "TIFF", "webp": "WEBP", "ppm": "PPM", "pgm": "PPM"}.get(fmt)
    if name is None:
        raise RecordError(f"unknown encode type {fmt!r}; use png or jpg")
    if arr.shape[0] == 1:
        img = Image.fromarray(arr[0], "L")
    else:
        img = Image.fromarray(np.ascontiguousarray(arr[::-1].transpose(1, 2, 0)), "RGB")
    buf = io.BytesIO()
    options = {"quality": 95} if name == "JPEG" else {}    # OpenCV's default JPEG quality
    img.save(buf, format=name, **options)
    return buf.getvalue()


# ------------------------------------------------------------- Datum ----

def datum_from_array(arr: np.ndarray, label: int = 0) -> pb.Datum:
    """A raw Datum: uint8 ``data`` (or ``float_data`` for float arrays), C x H x W."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError(f"a Datum holds C x H x W, got shape {arr.shape}")
    c, h, w = arr.shape
    datum = pb.Datum(channels=c, height=h, width=w, label=int(label))
    if arr.dtype == np.uint8:
        datum.data = np.ascontiguousarray(arr).tobytes()
    else:
        datum.float_data.extend(np.asarray(arr, np.float32).ravel().tolist())
    return datum


def datum_from_encoded(data: bytes, label: int = 0) -> pb.Datum:
    return pb.Datum(data=data, label=int(label), encoded=True)


def parse_datum(value: bytes) -> pb.Datum:
    from google.protobuf.message import DecodeError

    datum = pb.Datum()
    try:
        datum.ParseFromString(value)          # bytes or a buffer (memoryview)
    except DecodeError as e:
        raise RecordError(f"not a Datum message ({e})") from None
    return datum


def datum_to_array(datum: pb.Datum, color: bool | None = None) -> np.ndarray:
    """The C x H x W item of a Datum: uint8 (raw or decoded) or float32.

    ``color`` applies to encoded data only, as in Caffe (raw data is used
    as stored)."""
    if datum.encoded:
        return decode_image(datum.data, color)
    c, h, w = datum.channels, datum.height, datum.width
    if min(c, h, w) <= 0:
        raise RecordError(f"the Datum's shape ({c}, {h}, {w}) is not positive")
    size = c * h * w
    if datum.data:
        if len(datum.data) != size:
            raise RecordError(f"the Datum holds {len(datum.data)} bytes for shape "
                              f"({c}, {h}, {w}), which needs {size}")
        return np.frombuffer(datum.data, np.uint8).reshape(c, h, w)
    if len(datum.float_data) != size:
        raise RecordError(f"the Datum holds {len(datum.float_data)} float_data values for "
                          f"shape ({c}, {h}, {w}), which needs {size}")
    return np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)


# -------------------------------------------------------- list files ----

def read_list_file(path, what: str = "list file") -> list[tuple[str, int, int]]:
    """``path label`` lines as (path, label, line number); blank lines skipped.

    Caffe splits at the last space, so file names may contain spaces. A line
    without a label or with a non-integer one raises RecordError naming the
    line."""
    entries = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n").rstrip()
            if not line.strip():
                continue
            name, sep, label = line.rpartition(" ")
            try:
                value = int(label)
            except ValueError:
                value = None
            if not sep or not name or value is None:
                raise RecordError(f"{os.fspath(path)}:{number}: expected 'path label' in the "
                                  f"{what}, got {line!r}")
            entries.append((name, value, number))
    return entries


def join_root(root: str, name: str) -> str:
    """Caffe's ``root_folder + name`` (a plain concatenation); when that does
    not exist but ``os.path.join(root, name)`` does (a root without its
    trailing slash), the latter."""
    joined = root + name
    if root and not root.endswith(("/", os.sep)) and not os.path.exists(joined):
        other = os.path.join(root, name)
        if os.path.exists(other):
            return other
    return joined
