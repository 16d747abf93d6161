"""read_net(path_or_text) = parse + upgrade -> NetSource; solvers; writing prototxt.

The rest of netdef only ever sees current-format nets (``layer { type:
"Convolution" }``). A NetSource keeps the source map of the *original* text
and, for every upgraded layer, where its source entry began, so graph and
shape errors can still say ``file:line:col`` for a V1 or V0 file.
"""
from __future__ import annotations

import os
import pathlib
import tempfile
from dataclasses import dataclass, field

from netdef.errors import Location, ParseError
from netdef.frontend.parse import SourceMap, parse_message, to_text
from netdef.frontend.schema import pb
from netdef.frontend.upgrade import (DATA_PARAMS, V0_FIELDS, V1_PARAM_SPEC, Origin, upgrade_net,
                            upgrade_solver)

__all__ = ["NetSource", "read_net", "read_solver", "write_net", "upgrade_file", "read_text",
           "check_sizes"]


@dataclass
class NetSource:
    """A current-format net plus where each of its layers came from."""

    param: pb.NetParameter
    filename: str
    layer_locations: list[Location | None]   # parallel to param.layer
    source_map: SourceMap                    # of the ORIGINAL text
    original_format: str                     # "V2", "V1" or "V0"
    upgrade_log: list[str] = field(default_factory=list)
    origins: list[Origin] = field(default_factory=list)  # parallel to param.layer
    # Layers whose sizes are invalid; only read_net(errors=[...]) lets such a net through.
    invalid_layers: list[int] = field(default_factory=list)

    def layer_location(self, i: int) -> Location | None:
        return self.layer_locations[i] if 0 <= i < len(self.layer_locations) else None

    def field_location(self, i: int, *path) -> Location | None:
        """Where field ``path`` of upgraded layer ``i`` was written, else the layer's start.

        Exact for current-format files; for V1/V0 files the field is mapped
        back to its legacy spelling when possible (``param[0].lr_mult`` ->
        ``blobs_lr``). A field that is not in the text (a default) falls
        back to the closest enclosing field that is.
        """
        if not 0 <= i < len(self.origins):
            return None
        for candidate in _source_paths(self.origins[i], tuple(path)):
            for end in range(len(candidate), len(self.origins[i].path) - 1, -1):
                location = self.source_map.location(candidate[:end])
                if location is not None:
                    return location
        return self.layer_location(i)


# Inverses of the upgrade tables: current spelling -> legacy spelling.
_V0_SPELLING = {tuple(dest.split(".")): v0_name for v0_name, routes in V0_FIELDS.items()
                for dest in routes.values()}
_V1_SPELLING = {spec_field: v1_name for v1_name, spec_field in V1_PARAM_SPEC.items()}


def _source_paths(origin: Origin, path: tuple) -> list[tuple]:
    """Candidate paths (best first) in the original text for field ``path`` of a layer."""
    base, head = origin.path, (path[0] if path else None)
    if origin.kind == "input":  # the synthesized Input layer: map back into the header
        net = base[:-2]
        if head == "top" and len(path) > 1:
            return [net + ("input", path[1])]
        if head == "input_param" and len(path) >= 3:
            k, rest = path[2], path[3:]
            dim = rest[1] if len(rest) > 1 else 0
            return [net + ("input_shape", k) + rest, net + ("input_dim", 4 * k + dim)]
        return [base]
    candidates = []
    if origin.kind == "V2":
        candidates.append(base + path)
    elif head == "param" and len(path) > 1:  # param[j].lr_mult was blobs_lr[j], ...
        legacy = _V1_SPELLING.get(path[2] if len(path) > 2 else "lr_mult", "blobs_lr")
        candidates.append(base + (("layer",) if origin.kind == "V0" else ()) + (legacy, path[1]))
    elif origin.kind == "V1" or head in ("bottom", "top"):
        candidates.append(base + path)
    else:  # V0: the setting sits flat in the nested 'layer'
        named = tuple(p for p in path if isinstance(p, str))
        v0_name = "type" if named == ("type",) else _V0_SPELLING.get(named)
        if v0_name:
            candidates.append(base + ("layer", v0_name))
        candidates.append(base + ("layer",))
    if head == "transform_param" and len(path) > 1:  # may have moved out of a data param
        candidates += [base + (param,) + path[1:] for param in DATA_PARAMS]
    return candidates


def _looks_like_text(path_or_text) -> bool:
    return isinstance(path_or_text, str) and ("{" in path_or_text or "\n" in path_or_text)


def read_text(path) -> str:
    """A prototxt file's text (UTF-8, BOM tolerated), or ParseError naming the file."""
    path = pathlib.Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ParseError(f"cannot read {path}: {exc.strerror or exc}", where=str(path),
                         hint=_path_hint(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ParseError("the file is not valid UTF-8 text", where=Location(str(path), line, col),
                         hint="is it a binary .caffemodel? prototxt is text") from None


def _path_hint(path: pathlib.Path) -> str | None:
    """Why a missing 'file' may be a surprise: only when it looks like prototxt
    text given in one line (the Python API). A file name on the command line
    gets no hint."""
    text = str(path)
    if '"' in text or ": " in text:
        return "a string without '{' or a newline is taken as a file name"
    return None


def read_net(path_or_text, *, filename: str | None = None,
             errors: list | None = None) -> NetSource:
    """Parse and upgrade a net given as a path or as prototxt text.

    A ``str`` containing '{' or a newline is text; anything else is a path.
    An in-memory ``pb.NetParameter`` is upgraded too (its layers have no
    locations). With an ``errors`` list, problems the parser can step over
    and bad sizes are appended there instead of raised (see
    ``parse_message``), and the net read so far is returned.
    """
    if isinstance(path_or_text, pb.NetParameter):
        name = filename or "<message>"
        result = upgrade_net(path_or_text)
        source = NetSource(result.param, name, [None] * len(result.param.layer),
                           SourceMap(name, ""), result.original_format, result.log,
                           result.origins)
        source.invalid_layers = check_sizes(source, errors)
        return source
    if _looks_like_text(path_or_text):
        text, name = path_or_text, filename or "<string>"
    else:
        text, name = read_text(path_or_text), filename or str(path_or_text)
    param, source_map = parse_message(text, pb.NetParameter, name, errors=errors)
    result = upgrade_net(param, source_map)
    locations = [source_map.location(origin.path) for origin in result.origins]
    source = NetSource(result.param, name, locations, source_map, result.original_format,
                       result.log, result.origins)
    source.invalid_layers = check_sizes(source, errors)
    return source


# Caffe keeps every axis of a blob in a C int; a blob of more than 2**40
# values (4 TiB of float32) is a mistyped number, not a net.
MAX_AXIS = 2**31 - 1
MAX_VALUES = 2**40
POSITIVE = "sizes are positive integers, e.g. dim: 1 for one image"


def check_sizes(source: NetSource, errors: list | None = None) -> list[int]:
    """Every size written in an Input or DummyData layer is a positive, sane integer.

    ``input_param.shape``, the ``input:`` header (``input_dim``/``input_shape``,
    upgraded to an Input layer) and ``dummy_data_param`` (``shape`` or the
    legacy ``num/channels/height/width``) are where a prototxt states blob
    sizes outright; every other shape is inferred from them. A negative, a
    zero or an absurd value there becomes a ParseError at the value's
    file:line:col (appended to ``errors`` when given, else raised) instead
    of a failure deep in shape inference. Returns the indices of the layers
    with a bad size.
    """
    bad: list[int] = []
    for i, layer in enumerate(source.param.layer):
        what = f"{layer.type} layer '{layer.name}'"
        if layer.type == "Input":
            shapes = [(("input_param", "shape", k, "dim"), list(sh.dim))
                      for k, sh in enumerate(layer.input_param.shape)]
        elif layer.type == "DummyData":
            p = layer.dummy_data_param
            shapes = [(("dummy_data_param", "shape", k, "dim"), list(sh.dim))
                      for k, sh in enumerate(p.shape)]
            shapes += [(("dummy_data_param", axis), list(getattr(p, axis)))
                       for axis in ("num", "channels", "height", "width") if getattr(p, axis)]
        else:
            continue
        for path, dims in shapes:
            for j, message, hint in _size_problems(dims, path[-1] == "dim"):
                err = ParseError(f"{what}: {message}", where=source.field_location(i, *path, j),
                                 hint=hint)
                if errors is None:
                    raise err
                errors.append(err)
                if not bad or bad[-1] != i:
                    bad.append(i)
    return bad


def _size_problems(dims: list[int], one_shape: bool):
    """(index, message, hint) for each bad value of ``dims``; the product too
    when ``dims`` is one shape (not a list of per-top batch sizes)."""
    shape = "(" + ", ".join(map(str, dims)) + ")" if one_shape else None
    for j, d in enumerate(dims):
        of = f" in shape {shape}" if shape else ""
        if d < 0:
            yield j, f"size {d}{of} is negative", POSITIVE
        elif d == 0:
            yield j, f"size 0{of} leaves the blob empty", POSITIVE
        elif d > MAX_AXIS:
            yield j, (f"size {d}{of} is larger than one axis can be ({MAX_AXIS}, Caffe's "
                      "limit)"), None
    if one_shape and dims and all(0 < d <= MAX_AXIS for d in dims):
        values = 1
        for d in dims:
            values *= d
        if values > MAX_VALUES:
            big = max(range(len(dims)), key=lambda k: dims[k])
            yield big, (f"shape {shape} holds {values:.3g} values "
                        f"({values * 4 / 2**40:.0f} TiB of float32)"), "is a size mistyped?"


def read_solver(path) -> tuple[pb.SolverParameter, SourceMap]:
    """Parse and upgrade a solver file, including nets embedded in it."""
    name = str(path)
    param, source_map = parse_message(read_text(path), pb.SolverParameter, name)
    solver, _ = upgrade_solver(param, source_map)
    return solver, source_map


def write_net(param, path) -> None:
    """Write ``param`` as prototxt atomically: a temp file in the same folder, then rename."""
    path = pathlib.Path(path)
    text = to_text(param)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def upgrade_file(old_path, new_path) -> list[str]:
    """``netdef upgrade OLD NEW``: write OLD in the current format to NEW; return the log."""
    source = read_net(old_path)
    write_net(source.param, new_path)
    if not source.upgrade_log:
        return [f"nothing to upgrade: {source.filename} is already in the current format "
                "(rewritten as normalised prototxt; comments are not kept)"]
    return list(source.upgrade_log)
