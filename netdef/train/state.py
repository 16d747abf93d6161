"""Snapshots: ``<prefix>_iter_N.caffemodel`` + ``<prefix>_iter_N.solverstate``.

The solverstate is Caffe's ``SolverState`` message (iter, learned_net,
history, current_step), so Caffe can resume from a netdef snapshot and
netdef from Caffe's. History blobs are written in the solver's order:
one per learnable parameter (SGD, Nesterov, AdaGrad, RMSProp), or two
(AdaDelta, Adam: the first N, then the second N), as Caffe does.

netdef adds one field Caffe does not know, written first: field
``EXTENSION_FIELD`` (a length-delimited JSON text) with the solver type,
the byte length and CRC-32 of the rest of the file (so a truncated or
damaged file is refused rather than half-restored) and the random state
of the layers (Dropout masks, data shuffling and read positions), which
is what makes a resumed run bit-identical to an uninterrupted one. Caffe's
parser skips unknown fields, so the file stays loadable by Caffe; a file
without it (written by Caffe) is restored without the layer states.

Both files are written atomically (netdef.io.atomic): a snapshot killed
mid-write never leaves a partial file under its final name.
"""
from __future__ import annotations

import json
import os
import zlib

from google.protobuf.message import DecodeError

from netdef.errors import NetdefError
from netdef.frontend.schema import pb
from netdef.io.atomic import atomic_open

EXTENSION_FIELD = 1000
_FORMAT = "netdef-solverstate-1"


class StateError(NetdefError):
    """A solverstate that cannot be restored (wrong kind of file, truncated,
    written by another solver type or for another net)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        out.append(low | 0x80 if value else low)
        if not value:
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


_KEY = _varint(EXTENSION_FIELD << 3 | 2)


def write_state(path, state: pb.SolverState, extra: dict) -> None:
    """Write ``state`` with netdef's ``extra`` JSON record in front (atomic)."""
    body = state.SerializeToString()
    record = dict(extra, format=_FORMAT, body_bytes=len(body), body_crc32=zlib.crc32(body))
    payload = json.dumps(record, separators=(",", ":")).encode("utf-8")
    with atomic_open(path, "wb") as f:
        f.write(_KEY + _varint(len(payload)) + payload)
        f.write(body)


def _kind_of(data: bytes, path: str) -> str | None:
    """Name the kind of file when it is clearly not a solverstate."""
    lower = path.lower()
    if lower.endswith((".caffemodel", ".caffemodel.h5")):
        return "caffemodel"
    if data.startswith(b"\x89HDF"):
        return "hdf5"
    head = data[:256].lstrip()
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head[:64]):
        return "text"
    return None


_HINTS = {
    "caffemodel": "this is a .caffemodel (weights): to start from weights use --weights "
                  "(Python: solver.net.copy_from); --snapshot takes a .solverstate",
    "hdf5": "this is an HDF5 file; netdef reads binary .solverstate files only "
            "(snapshot_format: BINARYPROTO)",
    "text": "this is a text file (a prototxt?); a .solverstate is binary",
}


def read_state(path) -> tuple[pb.SolverState, dict | None]:
    """Parse a .solverstate; returns (state, netdef's record or None).

    Refuses, with a StateError naming the file: a caffemodel or other
    foreign file, a truncated or damaged file.
    """
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise StateError(f"cannot read the solver state: {exc.strerror or exc}",
                         where=where) from None
    if not data:
        raise StateError("the solver state file is empty", where=where)
    kind = _kind_of(data, where)
    if kind is not None and not data.startswith(_KEY):
        raise StateError("not a solver state", where=where, hint=_HINTS[kind])
    record, body = None, data
    if data.startswith(_KEY):
        try:
            size, start = _read_varint(data, len(_KEY))
        except ValueError:
            raise StateError("the solver state is truncated (in its header)",
                             where=where) from None
        payload, body = data[start:start + size], data[start + size:]
        try:
            if len(payload) != size:
                raise ValueError
            record = json.loads(payload.decode("utf-8"))
            if not isinstance(record, dict) or record.get("format") != _FORMAT:
                raise ValueError
        except ValueError:
            raise StateError("the solver state is truncated or damaged (in its netdef header)",
                             where=where) from None
        if len(body) != record.get("body_bytes"):
            raise StateError(f"the solver state is truncated: {len(body)} of "
                             f"{record.get('body_bytes')} bytes after its header", where=where)
        if zlib.crc32(body) != record.get("body_crc32"):
            raise StateError("the solver state is damaged (checksum mismatch)", where=where)
    state = pb.SolverState()
    try:
        state.ParseFromString(body)
    except DecodeError:
        raise StateError("not a solver state, or a truncated one (the SolverState message "
                         "does not parse)", where=where,
                         hint=_HINTS.get(kind) if kind else None) from None
    if not state.HasField("iter"):
        hint = None
        if record is None:
            net = pb.NetParameter()
            try:
                net.ParseFromString(body)
                if len(net.layer) or len(net.layers):
                    hint = _HINTS["caffemodel"]
            except DecodeError:
                pass
        raise StateError("not a solver state: it has no iteration count", where=where,
                         hint=hint)
    return state, record


def resolve_learned_net(learned_net: str, state_path) -> str:
    """Where the state's weights are: ``learned_net`` as written (relative to
    the working directory, as Caffe), else the file of that name beside the
    state (a snapshot folder that was moved or copied)."""
    if os.path.exists(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(os.fspath(state_path)), os.path.basename(learned_net))
    if os.path.exists(beside):
        return beside
    raise StateError(f"the weights named in the solver state, '{learned_net}', do not exist "
                     f"(nor beside the state, as '{beside}')", where=os.fspath(state_path))


def _saved(layer) -> dict | None:
    if hasattr(layer, "get_state"):
        return {"layer": layer.get_state()}
    if hasattr(layer, "seek") and hasattr(layer, "position"):       # data readers
        return {"seed": int(getattr(layer, "seed", 0)), "position": int(layer.position)}
    if hasattr(getattr(layer, "rng", None), "bit_generator"):
        return {"rng": layer.rng.bit_generator.state}
    return None


def layer_states(net) -> dict:
    """The random state of each layer of ``net`` that has one: a layer's own
    ``get_state()``; for data readers (``seek``/``position``), their seed and
    the batch they deliver next (their stream is a function of both); else
    the layer's generator ``rng`` (Dropout, DummyData ...)."""
    out = {}
    for name, layer in zip(net.layer_names, net.layers):
        saved = _saved(layer)
        if saved is not None:
            out[name] = saved
    return out


def set_layer_states(net, states: dict) -> list[str]:
    """Put back what ``layer_states`` saved; returns the names of random
    layers of ``net`` that the record did not cover."""
    missing = []
    for name, layer in zip(net.layer_names, net.layers):
        saved = states.get(name)
        if saved is None or _saved(layer) is None:
            if _saved(layer) is not None:
                missing.append(name)
            continue
        if "layer" in saved and hasattr(layer, "set_state"):
            layer.set_state(saved["layer"])
        elif "position" in saved and hasattr(layer, "seek"):
            layer.reseed(saved["seed"])
            layer.seek(saved["position"])
        elif "rng" in saved and hasattr(getattr(layer, "rng", None), "bit_generator"):
            layer.rng.bit_generator.state = saved["rng"]
        else:
            missing.append(name)
    return missing
