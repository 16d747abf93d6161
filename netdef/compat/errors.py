"""Errors of the compatibility layers: netdef errors that are also the
built-in exception pycaffe (or OpenCV) raises in the same place, so both
``except ValueError:`` in user code and netdef's one-line CLI errors work."""
from __future__ import annotations

from netdef.errors import InputError, NetdefError


class CompatValueError(InputError, ValueError):
    """A pycaffe ValueError raised by netdef's compatibility layer."""


class CompatTypeError(NetdefError, TypeError):
    """A pycaffe TypeError (a value or argument of the wrong kind)."""


class CompatIndexError(NetdefError, IndexError):
    """A pycaffe IndexError."""


class CompatRuntimeError(NetdefError, RuntimeError):
    """What pycaffe's C++ core raises as RuntimeError (std::runtime_error)."""


class CompatAttributeError(NetdefError, AttributeError):
    """A pycaffe AttributeError (an unknown field, value or attribute)."""


class CompatKeyError(NetdefError, KeyError, AttributeError):
    """A missing name where pycaffe raises KeyError; also an AttributeError
    where the name was asked for as an attribute, so ``hasattr`` works."""


class CompatAssertionError(NetdefError, AssertionError):
    """A check that pycaffe makes with ``assert`` (netdef never asserts on user input)."""
