"""User-facing errors.

Every error says where (file:line:col, or the layer), what was expected and
what was found, and a hint when one helps. The CLI prints ``str(err)`` as one
line and exits 2; it never shows a traceback unless ``--debug`` is given.
``assert`` is kept for internal invariants only.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A position in a source text: 1-based line and column."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class NetdefError(Exception):
    """Base of every error netdef raises on bad input."""

    def __init__(self, message: str, *, where: Location | str | None = None,
                 hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def __str__(self) -> str:
        return self._render()


class ParseError(NetdefError):
    """Malformed prototxt: syntax, unknown field, bad value."""


class UpgradeError(NetdefError):
    """A legacy (V0/V1/header) net that cannot be upgraded faithfully."""


class GraphError(NetdefError):
    """Wiring problems: undefined bottom, duplicate top, cycle, arity, unknown type."""


class ShapeError(NetdefError):
    """Shape inference failed; the message names the layer and its bottom shapes."""


class WeightsError(NetdefError):
    """A weight file that cannot be read or does not fit the net."""


class InputError(NetdefError):
    """Bad user data given at run time (images, arrays, mean files)."""


class DataError(NetdefError):
    """A data layer's source cannot be read: missing, empty, a corrupt record,
    or records whose shapes differ. ``key`` names the record when there is one
    (a training loop can stop cleanly on it)."""

    def __init__(self, message: str, *, where=None, hint=None, key: str | None = None):
        self.key = key
        super().__init__(message, where=where, hint=hint)


def did_you_mean(name: str, choices, n: int = 3) -> str | None:
    """A 'did you mean ...?' hint naming the closest known names, or None."""
    import difflib

    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        if name.lower() in lowered:
            close = [lowered[name.lower()]]
    if not close:
        return None
    return "did you mean " + " or ".join(repr(c) for c in close) + "?"
