"""Caffe ``.caffemodel`` weights: BlobProto <-> NumPy, whole-file read/write.

A caffemodel is a binary NetParameter whose layers carry their parameter
blobs. Files come in two layer formats: current ``layer`` entries (type is a
string) and legacy V1 ``layers`` entries (type is an enum, and very old files
nest a V0 layer inside). Blob geometry is either a ``shape`` message or the
legacy 4-D ``num/channels/height/width`` fields.

Real files are large (AlexNet is 244 MB, VGG-16 528 MB), so both directions
avoid per-element Python work: reading parses the bytes once and converts
each repeated float field with ``np.asarray`` (upb's containers implement
``__array__``); writing emits the packed float field's wire bytes directly
from the array's buffer, because ``RepeatedScalarContainer.extend`` walks the
array element by element (~17 s for 60M floats against ~0.3 s this way).

``match_weights`` (used by ``Net.copy_from``) is the pure decision logic of
Caffe's ``CopyTrainedLayersFrom``: copy by layer name, check blob counts and
shapes, and report what was loaded, kept at init, ignored or reshaped.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from netdef.errors import WeightsError, did_you_mean
from netdef.io.atomic import atomic_open
from netdef.frontend.schema import pb

# Field numbers come from the schema rather than being retyped here.
_BLOB_DATA = pb.BlobProto.DESCRIPTOR.fields_by_name["data"].number
_LAYER_BLOBS = pb.LayerParameter.DESCRIPTOR.fields_by_name["blobs"].number
_NET_LAYER = pb.NetParameter.DESCRIPTOR.fields_by_name["layer"].number
_LEGACY_DIMS = ("num", "channels", "height", "width")


@dataclass
class LayerBlobs:
    """One layer's parameter blobs as stored in a weight file.

    ``legacy[i]`` is True when blob i used the legacy 4-D fields; Caffe then
    accepts it for any net blob of at most 4 axes whose shape, padded with
    leading 1s, is equal (e.g. (1, 1, 4096, 9216) for an fc weight (4096, 9216)).
    """

    name: str
    type: str
    blobs: list[np.ndarray]
    legacy: tuple[bool, ...] = ()


# ------------------------------------------------------------------ blobs ---

def blob_shape(bp: pb.BlobProto) -> tuple[tuple[int, ...], bool]:
    """(shape, legacy) of a BlobProto, following Caffe's Blob::FromProto.

    When any legacy field is present the shape is the 4 legacy values
    (num, channels, height, width), unset ones counting as 0; otherwise it is
    ``shape.dim`` (an absent shape means 0 axes, i.e. one element).
    """
    if any(bp.HasField(f) for f in _LEGACY_DIMS):
        return (bp.num, bp.channels, bp.height, bp.width), True
    return tuple(int(d) for d in bp.shape.dim), False


def blob_to_array(bp: pb.BlobProto, where: str | None = None) -> np.ndarray:
    """The blob's data as a float32 array of the blob's shape.

    Values come from ``double_data`` when it is non-empty (converted to
    float32, as Caffe's float blobs do), else from ``data``.
    """
    shape, _ = blob_shape(bp)
    if any(d < 0 for d in shape):
        raise WeightsError(f"blob has a negative dimension in shape {shape}", where=where)
    count = int(np.prod(shape, dtype=np.int64))
    if len(bp.double_data):
        values = np.asarray(bp.double_data, dtype=np.float64).astype(np.float32)
        source = "double_data"
    else:
        values = np.asarray(bp.data, dtype=np.float32)
        source = "data"
    if values.size != count:
        raise WeightsError(
            f"blob of shape {shape} needs {count} values but has {values.size} in '{source}'",
            where=where)
    return values.reshape(shape)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _len_key(field_number: int, length: int) -> bytes:
    """Wire key of a length-delimited field (wire type 2) plus its length."""
    return _varint(field_number << 3 | 2) + _varint(length)


def _as_le_float32(arr) -> np.ndarray:
    return np.asarray(arr, dtype="<f4", order="C")  # (ascontiguousarray makes 0-d 1-d)


def _data_field(arr: np.ndarray) -> bytes:
    """The packed ``data`` field carrying ``arr`` (empty for an empty array)."""
    if arr.size == 0:
        return b""
    return _len_key(_BLOB_DATA, arr.nbytes) + arr.tobytes()


def array_to_blob(arr, legacy: bool = False) -> pb.BlobProto:
    """A BlobProto holding ``arr`` as float data with a ``shape`` field.

    ``legacy=True`` writes the old num/channels/height/width fields instead,
    padding the shape with leading 1s to 4 axes (at most 4 axes allowed).
    """
    arr = _as_le_float32(arr)
    bp = pb.BlobProto()
    if legacy:
        if arr.ndim > 4:
            raise WeightsError(f"legacy blobs have at most 4 axes, got shape {arr.shape}")
        padded = (1,) * (4 - arr.ndim) + arr.shape
        for name, dim in zip(_LEGACY_DIMS, padded, strict=True):
            setattr(bp, name, dim)
    else:
        bp.shape.SetInParent()
        bp.shape.dim.extend(arr.shape)
    # Merging the packed field's wire bytes appends them to `data` in one
    # memcpy-like pass (see the module docstring for why not extend()).
    bp.MergeFromString(_data_field(arr))
    return bp


# ------------------------------------------------------------ layer types ---

def _v1_type_names() -> dict[int, str]:
    """V1 enum value -> current type string (netdef.frontend.upgrade's table if present)."""
    try:
        from netdef.frontend.upgrade import V1_TYPE_NAMES
        return dict(V1_TYPE_NAMES)
    except ImportError:
        pass
    # Most names are the CamelCase of the enum name; these are not.
    irregular = {"NONE": "", "ABSVAL": "AbsVal", "ARGMAX": "ArgMax", "BNLL": "BNLL",
                 "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "IM2COL": "Im2col",
                 "LRN": "LRN", "MVN": "MVN", "RELU": "ReLU", "SOFTMAX_LOSS": "SoftmaxWithLoss",
                 "TANH": "TanH"}
    enum = pb.V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"]
    return {v.number: irregular.get(v.name, "".join(p.capitalize() for p in v.name.split("_")))
            for v in enum.values}


def _v0_type_name(v0_type: str, v1_names: dict[int, str]) -> str:
    """A V0 type string ("conv") as today's type, via netdef.frontend.upgrade's V0 table;
    the raw V0 string when that table is unavailable or lacks it."""
    try:
        from netdef.frontend.upgrade import V0_TYPES
        enum = pb.V1LayerParameter.LayerType.Value(V0_TYPES[v0_type])
    except (ImportError, KeyError, ValueError):
        return v0_type
    return v1_names.get(enum, v0_type)


# ----------------------------------------------------------------- reading ---

def _parse_net(path) -> pb.NetParameter:
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise WeightsError(f"cannot read weights: {e.strerror or e}", where=where) from None
    if data.startswith(b"\x89HDF"):
        raise WeightsError("this is an HDF5 weight file; only binary .caffemodel is supported",
                           where=where)
    net = pb.NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError as e:
        hint = None
        if data[:200].lstrip().startswith((b"name", b"layer", b"input", b"#")):
            hint = "this looks like a text prototxt; weights are binary .caffemodel files"
        raise WeightsError(f"not a binary caffemodel (NetParameter): {e}", where=where,
                           hint=hint) from None
    if not net.layer and not net.layers:
        raise WeightsError("no layers found: not a caffemodel (NetParameter)", where=where,
                           hint="a mean .binaryproto is read with read_mean()")
    if net.layer and net.layers:
        raise WeightsError("the file has both current 'layer' and legacy 'layers' entries",
                           where=where)
    return net


def _layer_blobs(name, type_, blobs, where) -> LayerBlobs:
    arrays, legacy = [], []
    for i, bp in enumerate(blobs):
        arrays.append(blob_to_array(bp, where=f"{where}: layer '{name}' blob {i}"))
        legacy.append(blob_shape(bp)[1])
    return LayerBlobs(name, type_, arrays, tuple(legacy))


def read_caffemodel(path) -> list[LayerBlobs]:
    """Every layer that has blobs, in file order, as float32 arrays.

    Handles current ``layer`` and legacy V1 ``layers`` entries (the V1 type
    enum is mapped to today's type string; a V0 layer nested in a V1 entry
    gives its name, blobs and mapped V0 type). Layers without blobs are skipped.
    """
    where = os.fspath(path)
    net = _parse_net(path)
    out = []
    for lp in net.layer:
        if len(lp.blobs):
            out.append(_layer_blobs(lp.name, lp.type, lp.blobs, where))
    if len(net.layers):
        v1_names = _v1_type_names()
        for v1 in net.layers:
            if len(v1.blobs):
                out.append(_layer_blobs(v1.name, v1_names.get(v1.type, ""), v1.blobs, where))
            elif v1.HasField("layer") and len(v1.layer.blobs):
                v0 = v1.layer
                out.append(_layer_blobs(v1.name or v0.name, _v0_type_name(v0.type, v1_names),
                                        v0.blobs, where))
    return out


# ----------------------------------------------------------------- writing ---

def _layer_entry(layer: pb.LayerParameter, arrays) -> list:
    """Wire chunks of one ``layer`` entry of a NetParameter, blobs appended.

    Protobuf concatenation appends repeated fields, so a layer's bytes plus
    extra ``blobs`` entries parse as that layer with those blobs. Array data
    is passed as memoryviews so a 240 MB blob is never copied.
    """
    body = [layer.SerializeToString()]
    for arr in arrays:
        arr = _as_le_float32(arr)
        head = pb.BlobProto()
        head.shape.SetInParent()
        head.shape.dim.extend(arr.shape)
        blob = [head.SerializeToString()]
        if arr.size:
            blob += [_len_key(_BLOB_DATA, arr.nbytes), memoryview(arr).cast("B")]
        blob_len = sum(len(c) for c in blob)
        body += [_len_key(_LAYER_BLOBS, blob_len)] + blob
    return [_len_key(_NET_LAYER, sum(len(c) for c in body))] + body


def write_caffemodel(path, net_param: pb.NetParameter,
                     weights: dict[str, list[np.ndarray]]) -> None:
    """Write ``net_param`` with ``weights`` attached as a Caffe-readable caffemodel.

    ``net_param`` is the definition in the current format (``layer`` entries);
    it is not modified. Each layer named in ``weights`` gets exactly those
    blobs (shape field, float data), replacing any it had; other layers are
    written as they are. The file is replaced atomically.
    """
    if len(net_param.layers):
        raise WeightsError("write_caffemodel needs a net in the current format "
                           "('layer' entries), got legacy V1 'layers'",
                           where=os.fspath(path), hint="upgrade the net first (netdef.frontend.upgrade)")
    names = {lp.name for lp in net_param.layer}
    unknown = [n for n in weights if n not in names]
    if unknown:
        raise WeightsError(f"weights for layer '{unknown[0]}', which is not in the net",
                           where=os.fspath(path), hint=did_you_mean(unknown[0], names))
    header = pb.NetParameter()
    header.CopyFrom(net_param)
    header.ClearField("layer")
    with atomic_open(path, "wb") as f:
        f.write(header.SerializeToString())
        for lp in net_param.layer:
            if lp.name in weights:
                bare = pb.LayerParameter()
                bare.CopyFrom(lp)
                bare.ClearField("blobs")
                chunks = _layer_entry(bare, weights[lp.name])
            else:
                body = lp.SerializeToString()
                chunks = [_len_key(_NET_LAYER, len(body)), body]
            for chunk in chunks:
                f.write(chunk)


# ---------------------------------------------------------------- matching ---

def _fmt(shape) -> str:
    return str(tuple(int(d) for d in shape))


@dataclass
class LoadReport:
    """What ``match_weights`` decided, layer by layer.

    ``arrays[name][i]`` is the float32 array for blob i of that net layer,
    already in the net's shape. A list shorter than the layer's blob count
    (BatchNorm from a 3-blob file) means the trailing blobs keep their init.
    ``reshaped`` holds (layer, blob index, file shape, net shape).
    """

    arrays: dict[str, list[np.ndarray]] = field(default_factory=dict, repr=False)
    loaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    reshaped: list[tuple[str, int, tuple, tuple]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # (layer, blob index, non-finite values, blob size): NaN or infinity in the file
    nonfinite: list[tuple[str, int, int, int]] = field(default_factory=list)
    _rows: list[tuple[str, str, str]] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        """Counts and names, never the arrays (pycaffe users print what copy_from returns)."""
        def names(items, limit=4):
            shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
            return f" ({shown})" if items else ""

        parts = [f"loaded {len(self.loaded)}{names(self.loaded)}",
                 f"kept at init {len(self.kept)}{names(self.kept)}",
                 f"ignored {len(self.ignored)}{names(self.ignored)}",
                 f"reshaped {len(self.reshaped)}"
                 f"{names([f'{n}[{i}]' for n, i, _, _ in self.reshaped])}"]
        if self.nonfinite:
            parts.append(f"non-finite {len(self.nonfinite)}"
                         f"{names([f'{n}[{i}]' for n, i, _, _ in self.nonfinite])}")
        return "<LoadReport " + "; ".join(parts) + ">"

    __str__ = __repr__

    def lines(self) -> list[str]:
        """A human-readable report: one line per layer, then a summary."""
        width = max([len(f"{n} ({t})") for n, t, _ in self._rows] + [0])
        out = [f"  {f'{n} ({t})' if t else n:<{width}}  {s}" for n, t, s in self._rows]
        out.append(f"loaded {len(self.loaded)} layer(s), {len(self.kept)} kept at init, "
                   f"{len(self.ignored)} ignored, {len(self.reshaped)} blob(s) reshaped")
        return out


def _blob_count_ok(name, type_, n_net, n_file, source):
    """Caffe requires equal blob counts; BatchNorm files with 3 blobs
    (mean, variance, moving-average factor) are accepted by a BatchNorm that
    declares a different count: the common blobs are copied, the rest kept."""
    if n_net == n_file:
        return n_net, None
    if type_ == "BatchNorm" and n_file == 3:
        note = (f"layer '{name}' (BatchNorm): the file has 3 blobs, the net {n_net}; "
                f"copied the first {min(n_net, 3)}")
        return min(n_net, 3), note
    hint = "bias_term differs between the prototxt and the weights?" if {n_net, n_file} == {1, 2} \
        else None
    raise WeightsError(f"layer '{name}' ({type_}): the net has {n_net} parameter blob(s), "
                       f"the file has {n_file}", where=source, hint=hint)


def _legacy_equal(net_shape, file_shape) -> bool:
    """Caffe's ShapeEquals for a legacy blob: net shape padded to 4 axes."""
    if len(net_shape) > 4:
        return False
    return (1,) * (4 - len(net_shape)) + tuple(net_shape) == tuple(file_shape)


def _fit_blob(name, i, arr, want, legacy, strict, source) -> tuple[np.ndarray, bool]:
    """The file's blob as a float32 array of the net's shape, and whether that
    took a reshape Caffe would not have done silently."""
    want = tuple(int(d) for d in want)
    if arr.shape == want or (legacy and _legacy_equal(want, arr.shape)):
        return np.ascontiguousarray(arr, dtype=np.float32).reshape(want), False
    if arr.size != int(np.prod(want, dtype=np.int64)):
        raise WeightsError(f"layer '{name}' blob {i}: the net expects {_fmt(want)}, "
                           f"the file has {_fmt(arr.shape)}", where=source,
                           hint="to learn this layer from scratch, rename it in the net")
    if strict:
        raise WeightsError(f"layer '{name}' blob {i}: the net expects {_fmt(want)}, "
                           f"the file has {_fmt(arr.shape)} (same element count; "
                           "strict loading does not reshape)", where=source)
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(want), True


def match_weights(net_layers, file_layers: list[LayerBlobs], strict: bool = False,
                  source: str | None = None) -> LoadReport:
    """Decide which file blobs go into which net layers, Caffe-style, by name.

    ``net_layers``: ``(name, type, [expected shapes])`` for each layer owning
    parameter blobs, in net order. ``file_layers``: from ``read_caffemodel``.
    Equal shapes are copied; an equal element count with another shape is
    reshaped with a warning (an error when ``strict``); a different count is a
    WeightsError naming the layer, blob and both shapes. ``source`` (the file
    path) is used as the error location. Later duplicates in the file win, as
    each source layer overwrites the target in Caffe.
    """
    report = LoadReport()
    by_name: dict[str, LayerBlobs] = {}
    for fl in file_layers:
        if fl.name in by_name:
            report.warnings.append(f"layer '{fl.name}' appears more than once in the file; "
                                   "the last one is used")
        by_name[fl.name] = fl
    net_names = set()
    for name, type_, shapes in net_layers:
        net_names.add(name)
        fl = by_name.get(name)
        if fl is None:
            report.kept.append(name)
            report._rows.append((name, type_, "kept at init (not in the file)"))
            continue
        n, note = _blob_count_ok(name, type_, len(shapes), len(fl.blobs), source)
        if note:
            report.warnings.append(note)
        arrays, status = [], []
        for i in range(n):
            legacy = i < len(fl.legacy) and fl.legacy[i]
            arr, was_reshaped = _fit_blob(name, i, fl.blobs[i], shapes[i], legacy, strict, source)
            arrays.append(arr)
            if was_reshaped:
                old = tuple(fl.blobs[i].shape)
                report.reshaped.append((name, i, old, arr.shape))
                report.warnings.append(f"layer '{name}' blob {i}: reshaped {_fmt(old)} from "
                                       f"the file to the net's {_fmt(arr.shape)} "
                                       "(same element count)")
                status.append(f"blob {i} reshaped {_fmt(old)} -> {_fmt(arr.shape)}")
        report.arrays[name] = arrays
        report.loaded.append(name)
        for i, arr in enumerate(arrays):
            bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
            if bad:
                nan = int(np.count_nonzero(np.isnan(arr)))
                kinds = " and ".join(k for k, n in (("NaN", nan), ("infinite", bad - nan)) if n)
                report.nonfinite.append((name, i, bad, arr.size))
                report.warnings.append(f"layer '{name}' blob {i} {_fmt(arr.shape)}: {bad} of "
                                       f"{arr.size} values are {kinds}; outputs that depend "
                                       "on them will be NaN")
                status.append(f"blob {i}: {bad} non-finite values")
        text = "loaded " + ", ".join(_fmt(a.shape) for a in arrays)
        if n < len(shapes):
            text += f"; blobs {n}..{len(shapes) - 1} kept at init"
        report._rows.append((name, type_, "; ".join([text] + status)))
    for fl in file_layers:
        if fl.name not in net_names and fl.name not in report.ignored:
            report.ignored.append(fl.name)
            report._rows.append((fl.name, fl.type, "ignored (not in the net)"))
    if report.kept:
        report.warnings.append("kept at init (not in the weight file): " + ", ".join(report.kept))
    return report
