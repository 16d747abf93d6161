"""The two decorators every kernel uses: the one place for Numba options.

``kernel`` is a serial ``njit(cache=True)``; ``parallel_kernel`` adds
``parallel=True`` for kernels whose outermost loop is a ``prange``.  Both
share ``OPTIONS``.

Parallel kernels keep their per-task body in a serial helper and run it
under ``prange`` only when the call has at least ``PARALLEL_MIN_WORK``
elements of work, on the calling thread otherwise.  Measured on the 2-core
target: a second thread halves im2col, pooling and LRN times when the cores
are free, but a parallel region whose worker thread has been descheduled
(any other busy process) waits for the next scheduler tick, 4-12 ms: 100x
the whole cost of a small call, and gradient checks make thousands of them.

FASTMATH allows re-association (so float reductions vectorise), contraction
into FMAs, reciprocal division and ignoring the sign of zero.  It does NOT
allow ``nnan``/``ninf`` (max pooling, ReLU and Clip keep Caffe's behaviour
for NaN and infinity) nor ``afn`` (approximate exp/log/pow).

``error_model="numpy"``: float division by zero gives inf/NaN as in C++
(Caffe's average pooling of an empty ceil-mode window is 0/0 = NaN) instead
of raising, and divide loops need no zero checks, so they vectorise.

Numba's on-disk cache key holds a function's bytecode and signature, not
these options nor PARALLEL_MIN_WORK (frozen in as a constant).  After
editing this file, delete ``netdef/kernels/__pycache__/*.nb[ic]``, or stale
machine code is loaded.  For the same reason a kernel's helpers live in the
kernel's own module: editing that module invalidates its cache entries.
"""
from __future__ import annotations

import os

# Idle OpenMP workers must sleep, not spin (see netdef/__init__.py, which
# normally sets this first; repeated here for direct kernel imports).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from numba import njit, prange  # noqa: E402,F401  (prange re-exported for kernel modules)

FASTMATH = frozenset({"contract", "reassoc", "arcp", "nsz"})

PARALLEL_MIN_WORK = 1 << 15

OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH))

kernel = njit(**OPTIONS)
parallel_kernel = njit(parallel=True, **OPTIONS)
