"""Data layers: the sources of a net (no bottoms). (The Python layer is in
netdef.layers.python.)

Shapes are set once in ``setup`` and ``reshape`` leaves them alone, as in
Caffe: a source's top keeps whatever shape the user (or ``--input-shape``)
gave it afterwards.

The reading layers (Data over LMDB, ImageData, HDF5Data) are thin: the
readers, the transformer and the prefetch thread live in ``netdef.data``.
Their setup opens the source and reads the first record for the real
shape. A source that does not exist (or a LevelDB) leaves shape-only tools
working: the shape is inferred from the parameters where Caffe's rules
allow (batch size, crop size, resize), guessed from well-known source names
(recorded in the layer's ``note``), or ``UnknownShape`` says why and how to
set it; forward then raises the DataError. An empty source or a corrupt
first record is a DataError at once. Forward fills the next batch (the
random crops, mirrors and shuffles follow ``reseed(seed)``; ``seek(k)``
continues at batch k, ``position`` is the next batch) unless the user feeds
the tops like an Input's: the Net sets ``fed = True`` on the layer when it
does. ``close()`` stops the prefetch thread.

Relative paths (sources, image lists, mean files, Python modules) are looked
up in the current directory first, as Caffe does, then in ``search_path``: a
directory or a list of them (the Net sets it to the prototxt's directory).
"""
from __future__ import annotations

import functools
import os
import weakref
import zlib

import numpy as np

from netdef.data.paths import find_file  # noqa: F401  (re-exported: layers look files up)
from netdef.errors import DataError, InputError, NetdefError
from netdef.layers.base import Layer, UnknownShape, register, shape_text
from netdef.layers.neuron import layer_rng
from netdef.frontend.schema import pb

# Substrings of Caffe example source names and the (C, H, W) their databases
# hold (before any crop). Checked in order, first match wins. Used only when
# the source cannot be read.
SOURCE_GUESSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("mnist_siamese", (2, 28, 28)),      # pairs of digits stacked as 2 channels
    ("mnist", (1, 28, 28)),
    ("cifar", (3, 32, 32)),
    ("imagenet", (3, 256, 256)),
    ("ilsvrc", (3, 256, 256)),
)

# Batches prepared ahead by the prefetch thread (Caffe's data_param.prefetch
# overrides it for Data layers). NETDEF_NO_PREFETCH=1 reads in forward itself.
PREFETCH_DEPTH = 2


class SourceLayer(Layer):
    """Base of the layers without bottoms: shapes in setup, no-op reshape."""

    num_bottoms = 0
    kind = "data"
    what = "data"             # what forward would have to read, for its error

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.note: str | None = None     # how a shape was guessed, for check/summary
        self.search_path = None
        self.fed = False                  # the user fills the tops (set by the Net)

    @property
    def who(self) -> str:
        return f"layer '{self.name}' ({self.type})"

    def reshape(self, bottoms, tops):
        pass

    def backward(self, tops, propagate_down, bottoms):
        pass                              # no bottoms: nothing to propagate to

    def forward(self, bottoms, tops):
        if self.fed:
            return
        raise NetdefError(
            f"layer '{self.name}' ({self.type}): reading {self.what} is not supported yet",
            where=self.where, hint="feed its tops yourself, e.g. net.forward(data=array)")

    def shape_hint(self, tops) -> str:
        return f"pass --input-shape {tops[0].name}=N,C,H,W"


@register("Input")
class Input(SourceLayer):
    """Tops the user fills; input_param.shape gives one shape per top, or one for all."""

    num_tops = (1, None)

    def setup(self, bottoms, tops):
        shapes = self.param.input_param.shape
        if not shapes:
            raise UnknownShape(f"no shape given in input_param; {self.shape_hint(tops)}")
        if len(shapes) not in (1, len(tops)):
            raise self.config_error(f"{len(shapes)} input_param shapes for {len(tops)} tops; "
                                    "give one shape, or one per top")
        for i, top in enumerate(tops):
            top.reshape(tuple(shapes[0 if len(shapes) == 1 else i].dim))

    def forward(self, bottoms, tops):
        pass


@register("DummyData")
class DummyData(SourceLayer):
    """Tops filled by fillers (dummy_data_param), Caffe's rules:

    shapes from ``shape`` (once, or once per top) or the legacy
    ``num``/``channels``/``height``/``width`` (each once or once per top);
    ``data_filler`` 0 (constant 0), 1 (shared) or one per top. A constant
    filler fills its top once; any other refills on every forward. The
    generator is the layer's own (``reseed(seed)``).
    """

    num_tops = (1, None)

    def setup(self, bottoms, tops):
        p = self.param.dummy_data_param
        n = len(tops)
        if len(p.data_filler) not in (0, 1, n):
            raise self.config_error(f"{len(p.data_filler)} data_filler for {n} tops; give 0, 1 "
                                    "or one per top")
        shapes = self._shapes(p, n)
        fillers = list(p.data_filler) or [pb.FillerParameter(type="constant", value=0.0)]
        self.fillers_per_top = [fillers[i if len(fillers) > 1 else 0] for i in range(n)]
        self.refill = [f.type != "constant" for f in self.fillers_per_top]
        self._filled_at: list[int | None] = [None] * n
        self.reseed(0)
        for top, shape in zip(tops, shapes, strict=True):
            top.reshape(shape)

    def _shapes(self, p, n: int) -> list[tuple]:
        legacy = {f: list(getattr(p, f)) for f in ("num", "channels", "height", "width")}
        if any(legacy.values()):
            if p.shape:
                raise self.config_error("give either shape or num/channels/height/width, "
                                        "not both")
            for field, values in legacy.items():
                if len(values) not in (1, n):
                    raise self.config_error(f"dummy_data_param.{field} given {len(values)} "
                                            f"times for {n} tops; give it once, or once per top")
            return [tuple(v[0 if len(v) == 1 else i] for v in legacy.values()) for i in range(n)]
        if len(p.shape) not in (1, n):
            raise self.config_error(f"dummy_data_param.shape given {len(p.shape)} times for {n} "
                                    "tops; give it once, or once per top")
        return [tuple(p.shape[0 if len(p.shape) == 1 else i].dim) for i in range(n)]

    def reseed(self, seed: int) -> None:
        self.rng = layer_rng(self.name, seed)

    def forward(self, bottoms, tops):
        from netdef.fillers import fill

        for i, top in enumerate(tops):
            data = top.data
            address = data.__array_interface__["data"][0]
            # A constant top is filled once -- again only if its memory moved.
            if self.refill[i] or self._filled_at[i] != address:
                data[...] = fill(top.shape, self.fillers_per_top[i], self.rng,
                                 where=f"layer '{self.name}' (DummyData)")
                self._filled_at[i] = address


@register("MemoryData")
class MemoryData(SourceLayer):
    """Data (N, C, H, W) and label (N, 1, 1, 1) from memory_data_param, out of
    arrays given with ``set_input_arrays(data, labels)`` (pycaffe's): data
    (M, C, H, W) with M a multiple of batch_size, labels (M,) or (M, 1, 1, 1).
    Forward hands out consecutive batches, cycling; as in Caffe no
    transform_param is applied. The user may also feed both tops directly."""

    num_tops = 2
    what = "in-memory arrays"

    def setup(self, bottoms, tops):
        p = self.param.memory_data_param
        dims = (p.batch_size, p.channels, p.height, p.width)
        if not all(d > 0 for d in dims):
            raise self.config_error("memory_data_param needs positive batch_size, channels, "
                                    f"height and width; got {dims}")
        self.batch = p.batch_size
        self.item_shape = dims[1:]
        self._data: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self.position = 0
        tops[0].reshape(dims)
        tops[1].reshape((p.batch_size,))          # Caffe: one label per item, shape (N,)

    def set_input_arrays(self, data, labels) -> None:
        """Hand the layer the arrays it serves (copied as float32)."""
        data = np.asarray(data)
        labels = np.asarray(labels)
        want = (self.batch if not len(data.shape) else data.shape[0], *self.item_shape)
        if data.ndim != 4 or data.shape[1:] != tuple(self.item_shape):
            raise InputError(f"{self.who}: data array has shape {shape_text(data.shape)}; "
                             f"expected (M, {', '.join(map(str, self.item_shape))})",
                             hint=f"e.g. {shape_text(want)}")
        n = data.shape[0]
        if n == 0 or n % self.batch:
            raise InputError(f"{self.who}: data array has {n} items, which is not a positive "
                             f"multiple of batch_size {self.batch}")
        if labels.shape not in ((n,), (n, 1, 1, 1)):
            raise InputError(f"{self.who}: labels array has shape {shape_text(labels.shape)}; "
                             f"expected ({n},) or ({n}, 1, 1, 1) for {n} data items")
        if not (np.issubdtype(data.dtype, np.number) and np.issubdtype(labels.dtype, np.number)):
            raise InputError(f"{self.who}: data and labels must be numbers, got {data.dtype} "
                             f"and {labels.dtype}")
        self._data = np.ascontiguousarray(data, dtype=np.float32)
        self._labels = np.ascontiguousarray(labels, dtype=np.float32).reshape(n)
        self.position = 0

    def forward(self, bottoms, tops):
        if self.fed:
            return
        if self._data is None:
            raise DataError(f"{self.who}: no data: call set_input_arrays(data, labels) first",
                            hint="or feed its tops yourself, e.g. net.forward(data=...)")
        start = self.position
        stop = start + self.batch
        for top, arr in zip(tops, (self._data[start:stop], self._labels[start:stop])):
            if top.shape != arr.shape:
                raise DataError(f"{self.who}: batch {shape_text(arr.shape)} does not fit "
                                f"top '{top.name}' {shape_text(top.shape)}")
            top.data[...] = arr
        self.position = stop % self._data.shape[0]


class _FileSource(SourceLayer):
    """Data + optional label from files; label shape (batch,) as in Caffe."""

    num_tops = (1, 2)
    param_field = ""

    def setup(self, bottoms, tops):
        batch = self.batch_size()
        if len(tops) > 1:              # known even when the data shape is not
            tops[1].reshape((batch,))
        tops[0].reshape((batch, *self.item_shape(tops)))

    def batch_size(self) -> int:
        batch = getattr(self.param, self.param_field).batch_size
        if batch <= 0:
            raise self.config_error(f"{self.param_field}.batch_size must be given and positive")
        return batch

    def crop_size(self) -> int:
        legacy = getattr(getattr(self.param, self.param_field), "crop_size", 0)
        return self.param.transform_param.crop_size or legacy

    def item_shape(self, tops) -> tuple[int, ...]:
        raise NotImplementedError


class _ReaderLayer(_FileSource):
    """A layer whose forward takes the next batch from a ``netdef.data``
    source, prepared ahead in a prefetch thread.

    Subclasses build ``self.source`` and ``self.batcher`` in setup (see
    ``_start_setup``) and set ``self.first_shape``: the (C, H, W) of the
    first record, or None until it is read."""

    default_depth = PREFETCH_DEPTH

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seed = 0
        self.position = 0                 # the batch the next forward delivers
        self.source = None
        self._stream = None
        self._batch = 0

    # ---- the seeded, restartable stream --------------------------------------
    def reseed(self, seed: int) -> None:
        """Make shuffles, crops and mirrors follow ``seed``; the stream restarts
        at its first batch."""
        self.seed = int(seed)
        self._restart(0)

    def seek(self, batch: int) -> None:
        """Continue at batch ``batch`` of the stream (e.g. when resuming)."""
        self._restart(int(batch))

    def close(self) -> None:
        """Stop the prefetch thread and close the source (a later forward
        opens them again, at the same position)."""
        self._restart(self.position)
        if self.source is not None:
            self.source.close()

    def _restart(self, position: int) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self.position = position

    @property
    def seed_key(self) -> tuple[int, int]:
        return (self.seed & 0xFFFFFFFF, zlib.crc32(self.name.encode("utf-8")))

    @property
    def prefetch_depth(self) -> int:
        if os.environ.get("NETDEF_NO_PREFETCH", "") not in ("", "0"):
            return 0
        return self.default_depth

    def make_batcher(self):
        raise NotImplementedError

    def forward(self, bottoms, tops):
        if self.fed:
            return
        if self._stream is None:
            self.source.open()           # the clear error when it is missing or unreadable
            make = functools.partial(_batches, self.source, self._batch, self.position,
                                     self.seed_key, self.make_batcher())
            self._stream = _prefetcher(self, make)
        arrays = self._stream.next()
        for top, arr in zip(tops, arrays):
            if top.shape != arr.shape:
                raise DataError(f"{self.who}: the batches of {self.source.describe()} have "
                                f"shape {shape_text(arr.shape)} but top '{top.name}' is "
                                f"{shape_text(top.shape)}", hint="the records do not match "
                                "the net's input shape")
            top.data[...] = arr
        self.position += 1


def _batches(source, batch_size, start, seed_key, batcher):
    from netdef.data.readers import batches

    return batches(source, batch_size, start, seed_key, batcher)


def _prefetcher(layer, make):
    from netdef.data.prefetch import Prefetcher

    stream = Prefetcher(make, layer.prefetch_depth, name=f"netdef-data-{layer.name}")
    weakref.finalize(layer, stream.close)        # the thread never holds the layer
    return stream


class _ImageReaderLayer(_ReaderLayer):
    """Data and ImageData: items through the DataTransformer."""

    def transformer(self):
        from netdef.data.transform import DataTransformer

        try:
            t = DataTransformer(self.param.transform_param, self.phase,
                                search_path=self.search_path, who=self.who)
        except InputError as e:
            raise self.config_error(e.message.split(": ", 1)[-1]) from None
        legacy = getattr(self.param, self.param_field).crop_size
        t.crop_size = t.crop_size or legacy
        return t

    def set_item_shape(self, tops, item) -> None:
        self.first_shape = tuple(item) if item is not None else None
        if item is not None:
            try:
                self.transform.check_shape(item)
            except InputError as e:
                # Caffe stops here; shape-only tools go on (forward raises it).
                self.note = e.message.split(": ", 1)[-1] + "; forward will fail"
            tops[0].reshape((self._batch, *self.transform.output_shape(item)))

    def make_batcher(self):
        from netdef.data.readers import ItemBatcher

        shape = self.first_shape
        if shape is None:
            shape = self.source.first()[1].shape
        return ItemBatcher(self.source, self.transform, shape, label=self._has_label)


@register("Data")
class Data(_ImageReaderLayer):
    """Batches of Datum records from an LMDB (data_param: source, batch_size,
    backend; prefetch), in key order, cycling; transform_param applies.

    Raw records are used as stored (uint8 ``data`` or ``float_data``);
    encoded ones (JPEG/PNG) are decoded as BGR, gray with force_gray, 3
    channels with force_color. The shape comes from the first record; when
    the database cannot be read, from the transform (crop_size, force_gray/
    force_color) and otherwise from SOURCE_GUESSES (see ``note``)."""

    param_field = "data_param"
    what = "LMDB databases"

    def setup(self, bottoms, tops):
        from netdef.data.readers import LMDBSource, SourceUnavailable

        p = self.param.data_param
        self._batch = self.batch_size()
        self._has_label = len(tops) > 1
        if self._has_label:
            tops[1].reshape((self._batch,))
        if p.HasField("prefetch"):
            self.default_depth = int(p.prefetch)
        self.transform = self.transformer()
        color = True if p.force_encoded_color else self.transform.color
        self.source = LMDBSource(p.source, self.search_path, self.who, color)
        self.source.where = self.where
        try:
            key, item, _ = self.source.first()
        except SourceUnavailable as why:
            self.set_item_shape(tops, None)
            tops[0].reshape((self._batch, *self._guess_item_shape(tops, why.reason)))
            return
        finally:
            self.source.close()          # forward reopens it in the reading thread
        if p.backend != pb.DataParameter.LMDB:
            self.note = f"backend is LEVELDB but '{p.source}' is an LMDB; read as LMDB"
        self.set_item_shape(tops, item.shape)

    def _guess_item_shape(self, tops, reason: str):
        p = self.param.data_param
        tp = self.param.transform_param
        crop = self.crop_size()
        name = p.source.lower()
        guess = next((chw for key, chw in SOURCE_GUESSES if key in name), None)
        if guess is not None:
            c, h, w = guess
            self.note = (f"shape guessed from source name '{p.source}' ({reason}); "
                         f"{self.shape_hint(tops)} to set it")
        elif crop:
            c, h, w = 3, crop, crop
            if not (tp.force_gray or tp.force_color):
                self.note = (f"channel count assumed 3 for source '{p.source}' ({reason}); "
                             f"{self.shape_hint(tops)} to set it")
        else:
            backend = pb.DataParameter.DB.Name(p.backend)
            raise UnknownShape(f"cannot read {backend} '{p.source}' to learn the data shape "
                               f"({reason}); {self.shape_hint(tops)}")
        if tp.force_gray:
            c = 1
        elif tp.force_color:
            c = 3
        if crop:
            h = w = crop
        return c, h, w


@register("ImageData")
class ImageData(_ImageReaderLayer):
    """Batches of images named in a list file (image_data_param: source lines
    "path label", root_folder, is_color, new_height/new_width, shuffle,
    rand_skip, batch_size), read as Caffe's OpenCV does (uint8, BGR or gray),
    resized bilinearly, then transformed (transform_param).

    (C, H, W): C = 3, or 1 when is_color is false; H, W = the crop, else the
    resize, else the size of the first image in the list. With shuffle, the
    order is a seeded permutation, new every epoch.
    """

    num_tops = 2
    param_field = "image_data_param"
    what = "image lists"

    def setup(self, bottoms, tops):
        from netdef.data.readers import ImageListSource, SourceUnavailable

        p = self.param.image_data_param
        if bool(p.new_height) != bool(p.new_width):
            raise self.config_error("image_data_param.new_height and new_width must be set "
                                    "together")
        self._batch = self.batch_size()
        self._has_label = True
        tops[1].reshape((self._batch,))
        self.transform = self.transformer()
        channels = 3 if p.is_color else 1
        size = (p.new_height, p.new_width) if p.new_height else None
        self.source = ImageListSource(p.source, self.search_path, self.who, root=p.root_folder,
                                      color=bool(p.is_color), size=size, shuffle=p.shuffle,
                                      rand_skip=p.rand_skip)
        self.source.where = self.where
        if size is not None:
            self.set_item_shape(tops, (channels, *size))
            return
        crop = self.crop_size()
        try:
            key, item, _ = self.source.first()
        except SourceUnavailable as why:     # the list or the image is not there
            self.set_item_shape(tops, None)
            if crop:                          # known without the images
                tops[0].reshape((self._batch, channels, crop, crop))
                return
            raise UnknownShape(f"cannot read the first image of '{p.source}' to learn the image "
                               f"size ({why.reason}); {self.shape_hint(tops)} or set "
                               "new_height/new_width") from None
        self.note = f"image size read from '{key}', the first image of '{p.source}'"
        self.set_item_shape(tops, item.shape)


@register("HDF5Data")
class HDF5Data(_ReaderLayer):
    """Batches from HDF5 files listed in hdf5_data_param.source (one path per
    line): top i is the dataset named like the top, shape (batch_size,
    *dataset.shape[1:]), read as float32. Rows are served in order, file
    after file, cycling; with shuffle the files and the rows in each are
    permuted every epoch. No transform_param (Caffe refuses it here)."""

    num_tops = (1, None)
    param_field = "hdf5_data_param"
    what = "HDF5 files"

    def setup(self, bottoms, tops):
        from netdef.data.readers import HDF5Source, SourceUnavailable

        if self.param.HasField("transform_param"):
            raise self.config_error("HDF5Data does not transform data; remove transform_param "
                                    "and scale the data when writing the .h5 files")
        p = self.param.hdf5_data_param
        self._batch = self.batch_size()
        self.source = HDF5Source(p.source, self.search_path, self.who,
                                 names=[t.name for t in tops], shuffle=p.shuffle)
        self.source.where = self.where
        try:
            self.source.open()
        except SourceUnavailable as why:
            raise UnknownShape(f"cannot read the HDF5 files listed in '{p.source}' to learn the "
                               f"data shapes ({why.reason}); pass --input-shape for every "
                               "top") from None
        for top, rows in zip(tops, self.source.row_shapes, strict=True):
            top.reshape((self._batch, *rows))

    def make_batcher(self):
        from netdef.data.readers import RowBatcher

        return RowBatcher()


@register("WindowData")
class WindowData(_FileSource):
    """Crops of windows listed in a window file (R-CNN fine-tuning): data
    (batch, 3, crop, crop) and label (batch,); crop_size is required."""

    num_tops = 2
    param_field = "window_data_param"
    what = "window files"

    def item_shape(self, tops):
        crop = self.crop_size()
        if not crop:
            raise self.config_error("WindowData needs a crop size (transform_param.crop_size)")
        return 3, crop, crop
