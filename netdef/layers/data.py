"""Data layers: the sources of a net (no bottoms), and the Python layer.

Shapes are set once in ``setup`` and ``reshape`` leaves them alone, as in
Caffe: a source's top keeps whatever shape the user (or ``--input-shape``)
gave it afterwards.

Reading databases (LMDB/LevelDB), image lists, HDF5 and window files is not
supported yet. Their *shapes* are inferred from the parameters where Caffe's
rules allow (batch size, crop size, resize), from the first image of an
ImageData list, or guessed from well-known source names (recorded in the
layer's ``note``); otherwise ``UnknownShape`` says why and how to set it.
Their forward raises unless the user feeds the tops like an Input's: the
Net sets ``fed = True`` on the layer when it does.

Relative paths (sources, image lists, Python modules) are looked up in the
current directory first, as Caffe does, then in ``search_path``: a directory
or a list of them (the Net sets it to the prototxt's directory).
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys

from netdef.errors import NetdefError, ShapeError, did_you_mean
from netdef.layers.base import Layer, UnknownShape, register
from netdef.layers.neuron import layer_rng
from netdef.frontend.schema import pb

# Substrings of Caffe example source names and the (C, H, W) their databases
# hold (before any crop). Checked in order, first match wins.
SOURCE_GUESSES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("mnist_siamese", (2, 28, 28)),      # pairs of digits stacked as 2 channels
    ("mnist", (1, 28, 28)),
    ("cifar", (3, 32, 32)),
    ("imagenet", (3, 256, 256)),
    ("ilsvrc", (3, 256, 256)),
)


def _search_dirs(search_path) -> list[str]:
    if not search_path:
        return []
    return [search_path] if isinstance(search_path, (str, os.PathLike)) else list(search_path)


def find_file(path: str, search_path=None) -> str | None:
    """``path`` if it exists (absolute, or relative to the current directory),
    else the first ``search_path`` directory holding it; None if nowhere."""
    if os.path.exists(path):
        return path
    if not os.path.isabs(path):
        for folder in _search_dirs(search_path):
            candidate = os.path.join(folder, path)
            if os.path.exists(candidate):
                return candidate
    return None


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

    def reshape(self, bottoms, tops):
        pass

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
    """Data (N, C, H, W) and label (N, 1, 1, 1) from memory_data_param; the user
    supplies the arrays (pycaffe's set_input_arrays): feed both tops."""

    num_tops = 2
    what = "in-memory arrays"

    def setup(self, bottoms, tops):
        p = self.param.memory_data_param
        dims = (p.batch_size, p.channels, p.height, p.width)
        if not all(d > 0 for d in dims):
            raise self.config_error("memory_data_param needs positive batch_size, channels, "
                                    f"height and width; got {dims}")
        tops[0].reshape(dims)
        tops[1].reshape((p.batch_size, 1, 1, 1))


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


@register("Data")
class Data(_FileSource):
    """Batches from an LMDB/LevelDB database (data_param). The database cannot
    be read yet, so (C, H, W) comes from the transform (crop_size, force_gray/
    force_color) and otherwise from SOURCE_GUESSES (see ``note``)."""

    param_field = "data_param"
    what = "LMDB/LevelDB databases"

    def item_shape(self, tops):
        p = self.param.data_param
        tp = self.param.transform_param
        crop = self.crop_size()
        name = p.source.lower()
        guess = next((chw for key, chw in SOURCE_GUESSES if key in name), None)
        if guess is not None:
            c, h, w = guess
            self.note = (f"shape guessed from source name '{p.source}'; "
                         f"{self.shape_hint(tops)} to set it")
        elif crop:
            c, h, w = 3, crop, crop
            if not (tp.force_gray or tp.force_color):
                self.note = (f"channel count assumed 3 for source '{p.source}'; "
                             f"{self.shape_hint(tops)} to set it")
        else:
            backend = pb.DataParameter.DB.Name(p.backend)
            raise UnknownShape(f"cannot read {backend} '{p.source}' to learn the data shape; "
                               f"{self.shape_hint(tops)}")
        if tp.force_gray:
            c = 1
        elif tp.force_color:
            c = 3
        if crop:
            h = w = crop
        return c, h, w


@register("ImageData")
class ImageData(_FileSource):
    """Batches of images named in a list file (image_data_param: source lines
    "path label", root_folder, is_color, new_height/new_width, batch_size).

    (C, H, W): C = 3, or 1 when is_color is false; H, W = the crop, else the
    resize, else the size of the first image in the list (read with Pillow).
    """

    num_tops = 2
    param_field = "image_data_param"
    what = "image lists"

    def item_shape(self, tops):
        p = self.param.image_data_param
        if bool(p.new_height) != bool(p.new_width):
            raise self.config_error("image_data_param.new_height and new_width must be set "
                                    "together")
        channels = 3 if p.is_color else 1
        crop = self.crop_size()
        if crop:
            return channels, crop, crop
        if p.new_height:
            return channels, p.new_height, p.new_width
        width, height = self._first_image_size(p, tops)
        return channels, height, width

    def _first_image_size(self, p, tops) -> tuple[int, int]:
        hint = f"{self.shape_hint(tops)} or set new_height/new_width"
        listing = find_file(p.source, self.search_path)
        if listing is None:
            raise UnknownShape(f"cannot find the image list '{p.source}' to learn the image "
                               f"size; {hint}")
        with open(listing, encoding="utf-8", errors="replace") as f:
            line = next((ln.strip() for ln in f if ln.strip()), "")
        if not line:
            raise UnknownShape(f"the image list '{p.source}' is empty; {hint}")
        # Caffe splits at the last space: file names may contain spaces.
        name = line.rsplit(" ", 1)[0] if " " in line else line
        image = find_file(p.root_folder + name, self.search_path)
        if image is None:
            raise UnknownShape(f"cannot find image '{p.root_folder + name}' (first line of "
                               f"'{p.source}') to learn the image size; {hint}")
        try:
            from PIL import Image

            with Image.open(image) as im:
                size = im.size
        except Exception as err:   # any unreadable image: shape unknown
            raise UnknownShape(f"cannot read image '{image}': {err}; {hint}") from None
        self.note = f"image size read from '{image}', the first image of '{p.source}'"
        return size


@register("HDF5Data")
class HDF5Data(_FileSource):
    """Batches from HDF5 files listed in hdf5_data_param.source: top i is the
    dataset named like the top, shape (batch_size, *dataset.shape[1:]). The
    shapes need the files and h5py (optional, not a netdef dependency)."""

    num_tops = (1, None)
    param_field = "hdf5_data_param"
    what = "HDF5 files"

    def setup(self, bottoms, tops):
        batch = self.batch_size()
        for top, shape in zip(tops, self._dataset_shapes(tops), strict=True):
            top.reshape((batch, *shape[1:]))

    def _dataset_shapes(self, tops) -> list[tuple]:
        source = self.param.hdf5_data_param.source
        why = f"cannot read the HDF5 files listed in '{source}' to learn the data shapes"
        hint = "pass --input-shape for every top"
        try:
            import h5py
        except ImportError:
            raise UnknownShape(f"{why}: h5py is not installed; {hint}") from None
        listing = find_file(source, self.search_path)
        if listing is None:
            raise UnknownShape(f"{why}: the list file does not exist; {hint}")
        with open(listing, encoding="utf-8") as f:
            first = next((ln.strip() for ln in f if ln.strip()), "")
        path = find_file(first, self.search_path) if first else None
        if path is None:
            raise UnknownShape(f"{why}: cannot find '{first}'; {hint}")
        with h5py.File(path, "r") as h5:
            missing = [t.name for t in tops if t.name not in h5]
            if missing:
                raise self.config_error(f"HDF5 file '{path}' has no dataset '{missing[0]}'",
                                        hint=did_you_mean(missing[0], list(h5)))
            return [tuple(h5[t.name].shape) for t in tops]


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


class PyBlob:
    """The pycaffe Blob surface over a netdef Blob, for Python layers:
    ``data``, ``diff``, ``shape``, ``count``, ``num``/``channels``/``height``/
    ``width`` and ``reshape(*dims)`` (pycaffe takes the dims as arguments)."""

    __slots__ = ("blob",)

    def __init__(self, blob):
        self.blob = blob

    data = property(lambda self: self.blob.data)
    diff = property(lambda self: self.blob.diff)
    shape = property(lambda self: self.blob.shape)
    count = property(lambda self: self.blob.count)
    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))

    def _legacy(self, axis: int) -> int:
        shape = self.blob.shape
        return shape[axis] if axis < len(shape) else 1

    def reshape(self, *dims) -> None:
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        self.blob.reshape(dims)


@register("Python")
class Python(Layer):
    """A layer written in Python, pycaffe's protocol (python_param: module,
    layer, param_str).

    The class is looked up in the module (imported from sys.path, the
    current directory and ``search_path``) and created with the
    LayerParameter (pycaffe's ``caffe.Layer(param)``) when its constructor
    takes an argument. It gets ``param_str`` and ``phase`` attributes and its
    ``setup``/``reshape``/``forward``/``backward`` are called with lists of
    PyBlob. A module that cannot be imported makes the tops' shapes unknown
    (UnknownShape with the import error).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.search_path = None
        self.impl = None

    def setup(self, bottoms, tops):
        p = self.param.python_param
        if not p.module or not p.layer:
            raise self.config_error("python_param needs both module and layer")
        module = self._import(p.module)
        cls = getattr(module, p.layer, None)
        if cls is None:
            names = [n for n in dir(module) if not n.startswith("_")]
            raise self.config_error(f"module '{p.module}' has no class '{p.layer}'",
                                    hint=did_you_mean(p.layer, names))
        self.impl = cls(self.param) if _takes_argument(cls) else cls()
        self.impl.param_str = p.param_str
        self.impl.phase = self.phase
        self._call("setup", bottoms, tops)

    def _import(self, name: str):
        saved = list(sys.path)
        extra = [os.getcwd(), *_search_dirs(self.search_path)]
        sys.path[:0] = [d for d in extra if d not in sys.path]
        try:
            return importlib.import_module(name)
        except Exception as err:   # user code may fail any way
            raise UnknownShape(f"cannot import Python layer module '{name}': "
                               f"{type(err).__name__}: {err}") from None
        finally:
            sys.path[:] = saved

    def _call(self, method: str, *blob_lists, extra=None):
        args = [[PyBlob(b) for b in blobs] for blobs in blob_lists]
        if extra is not None:
            args.insert(1, extra)
        try:
            getattr(self.impl, method)(*args)
        except (NetdefError, UnknownShape):
            raise
        except Exception as err:   # name the layer in user-code failures
            p = self.param.python_param
            raise ShapeError(f"layer '{self.name}' (Python): {p.module}.{p.layer}.{method} "
                             f"raised {type(err).__name__}: {err}; bottoms: "
                             f"{self.bottoms_text()}", where=self.where) from err

    def reshape(self, bottoms, tops):
        self._call("reshape", bottoms, tops)

    def forward(self, bottoms, tops):
        self._call("forward", bottoms, tops)

    def backward(self, tops, propagate_down, bottoms):
        self._call("backward", tops, bottoms, extra=list(propagate_down))


def _takes_argument(cls) -> bool:
    """True when ``cls(param)`` is the right call (pycaffe's Layer takes the
    LayerParameter); False for a plain class whose constructor takes nothing."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):      # builtin or extension base (real pycaffe)
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in params)
