"""Blob: a named N-d float32 array with its gradient, allocated lazily.

Shape inference (summary, draw, check) only needs shapes, so a Blob records
its shape and allocates ``data``/``diff`` on first access. The executor may
instead hand a Blob a view into a shared arena (``bind``), which is how the
memory planner reuses buffers between layers whose lifetimes do not overlap.
"""
from __future__ import annotations

import math

import numpy as np

DTYPE = np.float32


class Blob:
    __slots__ = ("_shape", "_data", "_diff", "_follows", "name")

    def __init__(self, shape=(), name: str = ""):
        self.name = name
        self._shape: tuple[int, ...] = ()
        self._data: np.ndarray | None = None
        self._diff: np.ndarray | None = None
        self._follows: Blob | None = None
        self.reshape(shape)

    # -- shape -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def count(self) -> int:
        return math.prod(self._shape)

    @property
    def ndim(self) -> int:
        return len(self._shape)

    def reshape(self, shape) -> None:
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        if shape == self._shape:
            return
        self._shape = shape
        # Views of a buffer keep their memory only while the size is unchanged.
        self._data = self._reshaped(self._data)
        self._diff = self._reshaped(self._diff)

    def _reshaped(self, arr):
        if arr is None or arr.size != self.count:
            return None
        return arr.reshape(self._shape)

    def reshape_like(self, other: Blob) -> None:
        self.reshape(other.shape)

    # -- storage -------------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        if self._follows is not None:
            return self._follows.data.reshape(self._shape)
        if self._data is None:
            self._data = np.zeros(self._shape, DTYPE)
        return self._data

    @data.setter
    def data(self, value) -> None:
        self._data = self._checked(value, "data")
        self._follows = None

    @property
    def diff(self) -> np.ndarray:
        if self._diff is None:
            self._diff = np.zeros(self._shape, DTYPE)
        return self._diff

    @diff.setter
    def diff(self, value) -> None:
        self._diff = self._checked(value, "diff")

    @property
    def allocated(self) -> bool:
        return self._data is not None or self._follows is not None

    def bind(self, data: np.ndarray | None = None, diff: np.ndarray | None = None) -> None:
        """Use the given arrays (e.g. arena views) as this blob's storage."""
        if data is not None:
            self.data = data
        if diff is not None:
            self.diff = diff

    def share_data(self, other: Blob) -> None:
        """Alias this blob's data to another's current array (Split/Flatten/Reshape tops)."""
        self._data = other.data.reshape(self._shape)
        self._follows = None

    def follow(self, other: Blob | None) -> None:
        """Make ``data`` always be ``other``'s data, reshaped (None: stop).

        For the tops of Split/Flatten/Reshape over a net input: the input
        blob takes whatever array the user feeds, a new one each forward,
        so a view taken when the plan was bound would go stale; following
        the blob itself costs a reshape per access and never a copy.
        Setting or binding ``data`` stops following."""
        self._follows = other
        if other is not None:
            self._data = None

    def release(self) -> None:
        self._follows = None
        self._data = None
        self._diff = None

    def _checked(self, value, what: str) -> np.ndarray:
        arr = np.asarray(value)
        if arr.dtype != DTYPE:
            arr = arr.astype(DTYPE)
        if arr.shape != self._shape:
            if arr.size != self.count:
                raise ValueError(
                    f"blob {self.name!r}: cannot set {what} of shape {arr.shape} "
                    f"on a blob of shape {self._shape}")
            arr = arr.reshape(self._shape)
        return arr

    def __repr__(self) -> str:
        return f"Blob({self.name!r}, shape={self._shape})"
