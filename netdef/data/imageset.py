"""Caffe's dataset tools: ``convert_imageset`` and ``compute_image_mean``.

``convert_imageset`` writes an LMDB of Datum records from a list file of
``path label`` lines (paths relative to ``root``), or from a folder of class
subfolders (label = index of the subfolder in sorted order). As Caffe does:
keys are ``%08d_<path>`` in list order (after the optional seeded shuffle),
images are read as uint8 BGR (gray with ``gray``), resized bilinearly when
both ``resize_height`` and ``resize_width`` are given; with ``encoded`` the
file's own bytes are stored when no resize is asked and its extension is
the encode type, otherwise the image is encoded as ``encode_type`` (default:
the file's extension). Unreadable images are skipped with a warning. The
database is built in a hidden folder beside ``out_lmdb`` and renamed when
complete, so an interrupted run never leaves a half-written database under
the final name.

``compute_image_mean`` averages every record of an LMDB (encoded records are
decoded as stored) into a (C, H, W) mean, written as a ``.binaryproto``
with Caffe's legacy (1, C, H, W) shape.
"""
from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field

import numpy as np

from netdef.data.records import (RecordError, datum_from_array, datum_from_encoded,
                                 datum_to_array, encode_image, join_root, parse_datum,
                                 read_image, read_list_file)
from netdef.errors import DataError, InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm")
_COMMIT_EVERY = 1000                   # records per transaction, as Caffe commits


@dataclass
class ImagesetReport:
    """What ``convert_imageset`` wrote."""

    out: str
    written: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (path, why)
    classes: list[str] = field(default_factory=list)               # folder mode: label names
    shape: tuple | None = None          # of the first record (raw records only)

    def __str__(self) -> str:
        text = f"wrote {self.written} records to {self.out}"
        if self.skipped:
            text += f" ({len(self.skipped)} unreadable images skipped)"
        return text


def list_images(source, root: str = "") -> tuple[list[tuple[str, int]], str, list[str]]:
    """(entries, root, class names) from a list file or a folder of classes."""
    source = os.fspath(source)
    if os.path.isdir(source):
        if root:
            raise InputError(f"'{source}' is a folder of classes; give either a folder, or a "
                             "list file with a root folder")
        classes = sorted(d for d in os.listdir(source)
                         if os.path.isdir(os.path.join(source, d)) and not d.startswith("."))
        entries = []
        for label, name in enumerate(classes):
            folder = os.path.join(source, name)
            for dirpath, dirnames, files in os.walk(folder):
                dirnames.sort()
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS):
                        rel = os.path.relpath(os.path.join(dirpath, f), source)
                        entries.append((rel.replace(os.sep, "/"), label))
        if not entries:
            raise InputError(f"no images found in class subfolders of '{source}'",
                             hint="expected <folder>/<class>/<image> files, or a list file")
        return entries, os.path.join(source, ""), classes
    if not os.path.exists(source):
        raise InputError(f"the list file or folder '{source}' does not exist")
    try:
        lines = read_list_file(source)
    except RecordError as e:
        raise InputError(str(e)) from None
    if not lines:
        raise InputError(f"the list file '{source}' is empty; expected 'path label' lines")
    return [(name, label) for name, label, _ in lines], root, []


def convert_imageset(source, root: str = "", out_lmdb=None, *, resize_height: int = 0,
                     resize_width: int = 0, gray: bool = False, shuffle: bool = False,
                     encoded: bool = False, encode_type: str = "", seed: int = 0,
                     check_size: bool = False, progress: bool | None = None) -> ImagesetReport:
    """Write the images of ``source`` (a list file or a folder of classes) to
    a new LMDB ``out_lmdb``; see the module docstring. ``progress``: a bar
    on stderr (None: when stderr is a terminal). Returns a report."""
    lmdb = _lmdb()
    if out_lmdb is None:
        raise InputError("convert_imageset needs an output path (out_lmdb)")
    out = os.path.abspath(os.fspath(out_lmdb))
    if os.path.exists(out):
        raise InputError(f"'{out_lmdb}' already exists", hint="remove it or choose a new name")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise InputError(f"the folder of '{out_lmdb}' does not exist: {parent}")
    if bool(resize_height) != bool(resize_width) or min(resize_height, resize_width) < 0:
        raise InputError(f"resize needs both a positive height and width, got "
                         f"{resize_height}x{resize_width}")
    size = (int(resize_height), int(resize_width)) if resize_height else None
    entries, root, classes = list_images(source, root)
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(entries))
        entries = [entries[i] for i in order]
    report = ImagesetReport(out=os.fspath(out_lmdb), classes=classes)
    tmp = os.path.join(parent, f".{os.path.basename(out)}.{secrets.token_hex(4)}.tmp")
    env = lmdb.open(tmp, map_size=1 << 28, subdir=True, meminit=False)
    try:
        chunk: list[tuple[bytes, bytes]] = []
        for line_id, (name, label) in enumerate(_progress(entries, progress)):
            path = join_root(root, name)
            try:
                value = _record(path, label, size, gray, encoded, encode_type, check_size,
                                report)
            except RecordError as e:
                report.skipped.append((path, str(e)))
                _warn(f"warning: skipped '{path}': {e}")
                continue
            chunk.append((f"{line_id:08d}_{name}".encode("utf-8"), value))
            if len(chunk) >= _COMMIT_EVERY:
                _commit(env, chunk, lmdb)
                report.written += len(chunk)
                chunk = []
        _commit(env, chunk, lmdb)
        report.written += len(chunk)
        if report.written == 0:
            raise InputError(f"none of the {len(entries)} images could be read, e.g. "
                             f"'{report.skipped[0][0]}': {report.skipped[0][1]}")
        env.sync(True)
        env.close()
        os.rename(tmp, out)
    except BaseException:
        env.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _record(path, label, size, gray, encoded, encode_type, check_size, report) -> bytes:
    arr = read_image(path, color=not gray, size=size)
    if check_size or report.shape is None:
        if report.shape is None:
            report.shape = arr.shape
        elif arr.shape != report.shape:
            raise InputError(f"image '{path}' has shape {arr.shape} (C, H, W); the first "
                             f"image has {report.shape} (check_size)")
    if not encoded:
        return datum_from_array(arr, label).SerializeToString()
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    fmt = (encode_type or ext).lower().lstrip(".")
    if size is None and _same_format(ext, fmt):
        with open(path, "rb") as f:            # the file as it is (Caffe's ReadFileToDatum)
            data = f.read()
    else:
        data = encode_image(arr, fmt)
    return datum_from_encoded(data, label).SerializeToString()


def _same_format(ext: str, fmt: str) -> bool:
    alias = {"jpeg": "jpg", "tiff": "tif"}
    return alias.get(ext, ext) == alias.get(fmt, fmt)


def _commit(env, chunk, lmdb) -> None:
    """Write ``chunk`` in one transaction, growing the map when it is full."""
    if not chunk:
        return
    while True:
        try:
            with env.begin(write=True) as txn:
                for key, value in chunk:
                    txn.put(key, value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def compute_image_mean(lmdb_path, out_binaryproto=None, *,
                       progress: bool | None = None) -> np.ndarray:
    """The mean (C, H, W) float32 of every record of an LMDB; written to
    ``out_binaryproto`` (atomically) when given. Records must share one shape.
    ``progress``: a bar on stderr (None: when stderr is a terminal)."""
    from netdef.data.readers import LMDBSource

    src = LMDBSource(os.fspath(lmdb_path), who="compute_image_mean")
    src.open()
    total = None
    first_key, count = None, 0
    try:
        with src.env.begin(buffers=False) as txn:
            for key, value in _progress(txn.cursor(), progress, src.count):
                name = key.decode("utf-8", "replace")
                try:
                    item = datum_to_array(parse_datum(value), color=None)
                except RecordError as e:
                    raise src.error(f"record '{name}' is corrupt: {e}", key=name) from None
                if total is None:
                    total, first_key = np.zeros(item.shape, np.float64), name
                elif item.shape != total.shape:
                    raise src.error(f"record '{name}' has shape {item.shape}; the first record "
                                    f"'{first_key}' has {total.shape}", key=name)
                total += item
                count += 1
    finally:
        src.close()
    if not count:
        raise DataError(f"compute_image_mean: LMDB '{lmdb_path}' has no records")
    mean = (total / count).astype(np.float32)
    if out_binaryproto is not None:
        from netdef.io.binaryproto import write_binaryproto

        write_binaryproto(out_binaryproto, mean[None])
    return mean


def _lmdb():
    try:
        import lmdb
    except ImportError:
        raise InputError("writing LMDB needs the lmdb package", hint="pip install lmdb") \
            from None
    return lmdb


def _progress(items, enabled: bool | None, total: int | None = None):
    from netdef.progress import progress_bar

    return progress_bar(items, total=total if total is not None else len(items), unit="img",
                        enabled=enabled, leave=True)


def _warn(text: str) -> None:
    from netdef.progress import write

    write(text)                   # above the bar, not through it
