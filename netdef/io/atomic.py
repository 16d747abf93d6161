"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Everything netdef writes (weights, snapshots, prototxt, means) goes through
here. The data is written to a temporary file in the destination's own
directory (so the final ``os.replace`` is a same-filesystem rename), flushed
and fsync'ed, then renamed over the destination. If anything fails before the
rename, the temporary file is removed and the original is left untouched: a
crash half-way through a 240 MB snapshot must never destroy the previous one.
"""
from __future__ import annotations

import contextlib
import os
import secrets


def _temp_path(path: str) -> str:
    head, tail = os.path.split(path)
    # Hidden, and clearly tied to its destination when a crash leaves it behind.
    return os.path.join(head, f".{tail}.{secrets.token_hex(4)}.tmp")


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where unsupported."""
    try:
        fd = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path, mode: str = "wb", encoding: str = "utf-8"):
    """Open a temporary file for writing; on success it replaces ``path``.

    ``mode`` is "wb" (bytes) or "w" (text, ``encoding``). Use as::

        with atomic_open("net.caffemodel") as f:
            f.write(data)

    On an exception inside the block the temporary file is deleted, the
    destination keeps its previous content, and the exception propagates.
    A symlink destination is followed, so the link keeps pointing at the file.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    if os.path.islink(path):
        path = os.path.realpath(path)
    tmp = _temp_path(path)
    # 0o666 lets the process umask decide the permissions, as open() would;
    # tempfile.mkstemp would force 0o600 on every weight file we write.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if mode == "wb":
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline="")
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(os.path.dirname(path))


def atomic_write(path, data: bytes | str) -> None:
    """Write ``data`` (bytes, or str as UTF-8 text) to ``path`` atomically."""
    mode = "w" if isinstance(data, str) else "wb"
    with atomic_open(path, mode) as f:
        f.write(data)
