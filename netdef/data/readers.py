"""The data sources of the data layers, and the stream of batches they feed.

A source is opened with ``open()`` (a DataError when it is empty or
unreadable; :class:`SourceUnavailable`, a DataError too, when it does not
exist or is in a format netdef cannot read, so shape-only tools can fall
back to guesses) and gives ``records(start, seed_key)``: an endless iterator
of (key, item, label) from record ``start`` of the endless sequence of
epochs (it cycles at the end, reshuffling each epoch when asked).

* :class:`LMDBSource`: Datum records in key order (Caffe's Data layer).
* :class:`ImageListSource`: ``path label`` lines, images read with Pillow.
* :class:`HDF5Source`: rows of the datasets named like the tops, over the
  ``.h5`` files listed in a text file.

Everything random is a pure function of ``seed_key`` (the layer's seed and
name) and a position: epoch e's order uses ``rng(seed_key, 1, e)`` and batch
k's crops and mirrors ``rng(seed_key, 2, k)``. So a stream restarted at
batch k (``batches(..., start=k)``) gives what the uninterrupted one gives,
with or without prefetching.
"""
from __future__ import annotations

import os
import threading
import weakref

import numpy as np

from netdef.data.paths import find_file, looked_in
from netdef.data.records import (RecordError, datum_to_array, join_root, parse_datum,
                                 read_image, read_list_file)
from netdef.errors import DataError, InputError, did_you_mean


class SourceUnavailable(DataError):
    """The source does not exist, or is a format netdef cannot read."""


def epoch_rng(seed_key, epoch: int) -> np.random.Generator:
    return np.random.default_rng([*seed_key, 1, int(epoch)])


def batch_rng(seed_key, batch: int) -> np.random.Generator:
    return np.random.default_rng([*seed_key, 2, int(batch)])


def shape_text(shape) -> str:
    return "(" + ", ".join(str(int(d)) for d in shape) + ")"


class Source:
    kind = "source"

    def __init__(self, given: str, search_path=None, who: str = "data layer"):
        self.given = given
        self.search_path = search_path
        self.who = who
        self.path: str | None = None          # where it was found
        self.where = None                     # the layer's prototxt location, for errors
        self.count = 0                        # records per epoch

    def describe(self) -> str:
        return f"{self.kind} '{self.given}'"

    def error(self, message: str, key=None, hint=None, cls=DataError,
              reason: str | None = None) -> DataError:
        """A DataError naming the layer and this source; its ``reason`` is a
        short form (for the notes of shape-only tools)."""
        err = cls(f"{self.who}: {self.describe()}: {message}", key=key, hint=hint,
                  where=self.where)
        err.reason = reason or message
        return err

    def _locate(self, expected: str, hint: str) -> str:
        path = find_file(self.given, self.search_path)
        if path is None:
            raise self.error(f"does not exist (looked in {looked_in(self.given, self.search_path)})"
                             f"; expected {expected}", hint=hint, cls=SourceUnavailable,
                             reason=f"{self.kind} not found")
        return path

    def open(self) -> None:
        raise NotImplementedError

    def first(self):
        """(key, item, label) of the first record, in stored order."""
        stream = self.records(0, (0,))
        try:
            return next(stream)
        finally:
            stream.close()

    def records(self, start: int, seed_key):
        raise NotImplementedError

    def close(self) -> None:
        pass


# -------------------------------------------------------------------- LMDB ----

class LMDBSource(Source):
    """Datum records of an LMDB, in key order; ``color`` decodes encoded ones."""

    kind = "LMDB"

    def __init__(self, given, search_path=None, who="data layer", color=None):
        super().__init__(given, search_path, who)
        self.color = color
        self.env = None
        self._release = None

    def open(self) -> None:
        if self.env is not None:
            return
        expected = "an LMDB directory of Datum records"
        self.path = self._locate(expected, "build one with `netdef convert-imageset`")
        try:
            import lmdb
        except ImportError:
            raise self.error("reading LMDB needs the lmdb package", hint="pip install lmdb") \
                from None
        subdir = os.path.isdir(self.path)
        if subdir and not os.path.exists(os.path.join(self.path, "data.mdb")):
            if os.path.exists(os.path.join(self.path, "CURRENT")):
                raise self.error("is a LevelDB, which netdef cannot read", cls=SourceUnavailable,
                                 reason="a LevelDB, which netdef cannot read",
                                 hint="convert the images to LMDB with `netdef convert-imageset`"
                                      " and set backend: LMDB")
            raise self.error(f"the folder has no data.mdb; expected {expected}")
        try:
            self.env, self._release = _open_env(lmdb, self.path, subdir)
            weakref.finalize(self, self._release)
        except lmdb.Error as e:
            raise self.error(f"cannot open it: {e}; expected {expected}") from None
        self.count = self.env.stat()["entries"]
        if self.count == 0:
            self.close()
            raise self.error(f"is empty (0 records); expected {expected}")

    def close(self) -> None:
        if self.env is not None:
            self.env = None
            self._release()

    def decode(self, key, value):
        name = bytes(key).decode("utf-8", "replace")
        try:
            datum = parse_datum(value)
            return name, datum_to_array(datum, self.color), float(datum.label)
        except RecordError as e:
            raise self.error(f"record '{name}' is corrupt: {e}", key=name) from None

    def records(self, start: int, seed_key):
        self.open()
        env, count = self.env, self.count
        # buffers=True: values are read in place from the map (each is parsed
        # before the cursor moves on, while its buffer is valid).
        with env.begin(buffers=True) as txn:
            cursor = txn.cursor()
            cursor.first()
            for _ in range(start % count):      # keys are not numbered: step to the start
                cursor.next()
            while True:
                yield self.decode(*cursor.item())
                if not cursor.next():            # Caffe restarts from the first record
                    cursor.first()


# LMDB refuses to open one environment twice in a process, yet a TRAIN and a
# TEST net (or two layers) may read the same database: they share one read-only
# environment (read transactions are per thread), closed with its last user.
_ENVS: dict[str, list] = {}
_ENVS_LOCK = threading.Lock()


def _open_env(lmdb, path: str, subdir: bool):
    """A shared read-only environment and the function that releases it (once;
    also called when its holder is garbage collected)."""
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS.get(key)
        if entry is None:
            env = lmdb.open(path, readonly=True, lock=False, subdir=subdir, readahead=True,
                            meminit=False, max_readers=126)
            entry = _ENVS[key] = [env, 0]
        entry[1] += 1
    released = []

    def release():
        if released:
            return
        released.append(True)
        with _ENVS_LOCK:
            entry[1] -= 1
            if entry[1] == 0 and _ENVS.get(key) is entry:
                del _ENVS[key]
                entry[0].close()

    return entry[0], release


# -------------------------------------------------------------- image list ----

class ImageListSource(Source):
    """Images named in a ``path label`` list, read as uint8 BGR (or gray when
    ``color`` is False), resized to ``size`` = (h, w) when given; the list is
    shuffled every epoch when ``shuffle``; ``rand_skip`` skips a seeded
    number (below it) of records at the start, as Caffe's ImageData does."""

    kind = "image list"

    def __init__(self, given, search_path=None, who="data layer", root="", color=True,
                 size=None, shuffle=False, rand_skip=0):
        super().__init__(given, search_path, who)
        self.root = root
        self.color = color
        self.size = size
        self.shuffle = shuffle
        self.rand_skip = rand_skip
        self.entries: list[tuple[str, int, int]] | None = None

    def open(self) -> None:
        if self.entries is not None:
            return
        self.path = self._locate("a text file of 'path label' lines",
                                 "write one line per image: <path> <label>")
        try:
            entries = read_list_file(self.path)
        except RecordError as e:
            raise self.error(str(e)) from None
        if not entries:
            raise self.error("is empty; expected 'path label' lines")
        self.entries = entries
        self.count = len(entries)

    def image_path(self, name: str) -> str:
        path = join_root(self.root, name)
        return find_file(path, self.search_path) or path

    def load(self, name: str, label: int, line: int):
        try:
            return name, read_image(self.image_path(name), self.color, self.size), float(label)
        except RecordError as e:
            image = join_root(self.root, name)
            missing = not os.path.exists(self.image_path(name))
            raise self.error(f"line {line}: image '{image}': {e}", key=name,
                             reason=f"image '{image}': {e}",
                             cls=SourceUnavailable if missing else DataError) from None

    def first(self):
        self.open()
        return self.load(*self.entries[0])

    def records(self, start: int, seed_key):
        self.open()
        if self.rand_skip:
            start += int(np.random.default_rng([*seed_key, 3]).integers(self.rand_skip))
        n = self.count
        epoch, index = divmod(start, n)
        while True:
            order = epoch_rng(seed_key, epoch).permutation(n) if self.shuffle else range(n)
            for i in range(index, n):
                yield self.load(*self.entries[order[i]])
            epoch, index = epoch + 1, 0


# -------------------------------------------------------------------- HDF5 ----

class HDF5Source(Source):
    """Rows of the datasets ``names`` over the .h5 files listed in a text file.

    Each file is read whole when its turn comes (as Caffe does); its datasets
    must have one row count and the same row shape as the first file's. With
    ``shuffle``, the file order and the rows inside each file are permuted
    every epoch."""

    kind = "HDF5 list"

    def __init__(self, given, search_path=None, who="data layer", names=("data",),
                 shuffle=False):
        super().__init__(given, search_path, who)
        self.names = list(names)
        self.shuffle = shuffle
        self.files: list[str] | None = None
        self.rows: list[int] = []
        self.row_shapes: list[tuple] | None = None

    def _h5py(self):
        try:
            import h5py
        except ImportError:
            raise self.error("reading HDF5 needs the h5py package", hint="pip install h5py",
                             cls=SourceUnavailable, reason="h5py is not installed") from None
        return h5py

    def open(self) -> None:
        if self.files is not None:
            return
        self.path = self._locate("a text file naming one .h5 file per line",
                                 "list the .h5 files, one per line")
        h5py = self._h5py()
        with open(self.path, encoding="utf-8", errors="replace") as f:
            names = [ln.strip() for ln in f if ln.strip()]
        if not names:
            raise self.error("is empty; expected one .h5 file per line")
        folder = os.path.dirname(os.path.abspath(self.path))
        files, rows = [], []
        for name in names:
            path = find_file(name, [*_dirs(self.search_path), folder])
            if path is None:
                raise self.error(f"lists '{name}', which does not exist", key=name,
                                 cls=SourceUnavailable, reason=f"'{name}' not found")
            try:
                with h5py.File(path, "r") as h5:
                    shapes = self._shapes(h5, path)
            except OSError as e:
                raise self.error(f"cannot read '{path}' as HDF5: {e}", key=name) from None
            rows.append(shapes[0][0])
            files.append(path)
        self.files, self.rows = files, rows
        self.count = sum(rows)
        if self.count == 0:
            raise self.error("its files hold no rows")

    def _shapes(self, h5, path) -> list[tuple]:
        shapes = []
        for name in self.names:
            if name not in h5:
                raise self.error(f"file '{path}' has no dataset '{name}' (one per top, named "
                                 "like the top)", key=path, hint=did_you_mean(name, list(h5)))
            ds = h5[name]
            if ds.ndim < 1:
                raise self.error(f"dataset '{name}' of '{path}' is a scalar; expected rows",
                                 key=path)
            shapes.append(tuple(ds.shape))
        counts = {s[0] for s in shapes}
        if len(counts) > 1:
            detail = ", ".join(f"'{n}' {shape_text(s)}" for n, s in zip(self.names, shapes))
            raise self.error(f"the datasets of '{path}' have different row counts: {detail}",
                             key=path)
        row_shapes = [s[1:] for s in shapes]
        if self.row_shapes is None:
            self.row_shapes = row_shapes
        for name, got, want in zip(self.names, row_shapes, self.row_shapes):
            if got != want:
                raise self.error(f"dataset '{name}' of '{path}' has rows of shape "
                                 f"{shape_text(got)}; the first file's have {shape_text(want)}",
                                 key=path)
        return shapes

    def load(self, index: int) -> list[np.ndarray]:
        h5py = self._h5py()
        path = self.files[index]
        try:
            with h5py.File(path, "r") as h5:
                self._shapes(h5, path)
                return [np.asarray(h5[name][...], dtype=np.float32) for name in self.names]
        except (OSError, TypeError, ValueError) as e:
            raise self.error(f"cannot read '{path}': {e}", key=path) from None

    def records(self, start: int, seed_key):
        self.open()
        shuffle = self.shuffle
        epoch, skip = divmod(start, self.count)
        while True:
            order = epoch_rng(seed_key, epoch).permutation(len(self.files)) if shuffle \
                else range(len(self.files))
            for f in order:
                if skip >= self.rows[f]:
                    skip -= self.rows[f]
                    continue
                arrays = self.load(f)
                rows = np.random.default_rng([*seed_key, 1, epoch, int(f) + 1]).permutation(
                    self.rows[f]) if shuffle else range(self.rows[f])
                name = os.path.basename(self.files[f])
                for r in list(rows)[skip:]:
                    yield f"{name}[{r}]", tuple(a[r] for a in arrays), None
                skip = 0
            epoch += 1


def _dirs(search_path) -> list:
    from netdef.data.paths import search_dirs

    return search_dirs(search_path)


# ----------------------------------------------------------------- batches ----

class ItemBatcher:
    """Stacks (key, item, label) records into (data, label) batches, checking
    every item against the first record's shape and transforming them.

    Without a crop every item must have ``item_shape``; with one, items may
    differ in height and width (each is cropped, as in Caffe) but not in
    channels, and must be at least the crop."""

    def __init__(self, source: Source, transformer, item_shape, label: bool):
        self.source = source
        self.transformer = transformer
        self.item_shape = tuple(item_shape)
        self.label = label

    def check(self, key, item) -> None:
        shape, want = item.shape, self.item_shape
        crop = self.transformer.crop_size
        if shape[0] != want[0] or (not crop and shape != want):
            raise self.source.error(f"record '{key}' has shape {shape_text(shape)}; the first "
                                    f"record has {shape_text(want)}", key=key)
        if crop and min(shape[1:]) < crop:
            raise self.source.error(f"record '{key}' has shape {shape_text(shape)}, smaller "
                                    f"than crop_size {crop}", key=key)

    def __call__(self, records, batch: int, seed_key):
        items = []
        for key, item, _ in records:
            self.check(key, item)
            items.append(item)
        t = self.transformer
        rng = batch_rng(seed_key, batch)
        try:
            if all(x.shape == items[0].shape for x in items):
                data = t.transform_batch(items, rng)
            else:                                  # crops of different-sized images
                data = np.empty((len(items), *t.output_shape(self.item_shape)), np.float32)
                for i, x in enumerate(items):
                    t.transform_batch([x], rng, out=data[i:i + 1])
        except InputError as e:
            raise DataError(str(e)) from None
        if not self.label:
            return (data,)
        return data, np.array([r[2] for r in records], dtype=np.float32)


class RowBatcher:
    """Stacks HDF5 rows (one array per top) into one batch per top."""

    def __call__(self, records, batch: int, seed_key):
        columns = zip(*(r[1] for r in records))
        return tuple(np.stack(col).astype(np.float32, copy=False) for col in columns)


def batches(source: Source, batch_size: int, start: int, seed_key, assemble):
    """Endless batches (tuples of arrays) from batch ``start`` on."""
    records = source.records(start * batch_size, seed_key)
    k = start
    while True:
        chunk = [next(records) for _ in range(batch_size)]
        yield assemble(chunk, k, seed_key)
        k += 1
