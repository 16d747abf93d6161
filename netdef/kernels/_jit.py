"""The two decorators every kernel uses: the one place for Numba options.

``kernel`` is a serial ``njit(cache=True)``; ``parallel_kernel`` adds
``parallel=True`` for kernels whose outermost loop is a ``prange`` over
enough work to repay the thread start-up (a few microseconds per call on
2 cores).  Both share ``FASTMATH``.

FASTMATH allows re-association (so float reductions vectorise), contraction
into FMAs, reciprocal division and ignoring the sign of zero.  It does NOT
allow ``nnan``/``ninf``: max pooling, ReLU and Clip must keep Caffe's
behaviour for NaN and infinity, and ``afn`` would swap exp/log/pow for
approximations.

``error_model="numpy"``: float division by zero gives inf/NaN as in C++
(Caffe's average pooling of an empty ceil-mode window is 0/0 = NaN) instead
of raising, and the divide loops need no zero checks, so they vectorise.

Numba's on-disk cache key holds the function's bytecode and signature but
not these options, so after editing this file delete the cached
``__pycache__/*.nbi``/``*.nbc`` files next to the kernels (or touch the
kernel modules); otherwise stale machine code is loaded.  For the same
reason helpers called by a kernel live in the kernel's own module: a change
to the module's source invalidates its cache, a change elsewhere does not.
"""
from __future__ import annotations

from numba import njit, prange  # noqa: F401  (prange re-exported for the kernel modules)

FASTMATH = frozenset({"contract", "reassoc", "arcp", "nsz"})

OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH))

kernel = njit(**OPTIONS)
parallel_kernel = njit(parallel=True, **OPTIONS)
