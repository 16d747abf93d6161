"""The two decorators every kernel uses: the one place for Numba options.

``kernel`` is a serial ``njit(cache=True)``; ``parallel_kernel`` adds
``parallel=True`` for kernels whose outermost loop is a ``prange``;
``helper`` is for the private functions kernels call.  All share
``OPTIONS``.

Parallel kernels keep their per-task body in a helper and run it in a
single ``prange`` loop; the dispatcher below decides whether a call runs
that loop on the thread pool or on the calling thread.

Helpers are inlined into their callers by Numba (``inline="always"``)
rather than compiled on their own and linked: on the 2-core target that
halved the first-use compile time of im2col (2.5 s to 1.2 s), because
the helper no longer goes through Numba's pipeline and LLVM's optimiser
once by itself and again inside each caller. A helper called from
Python still compiles normally.

Compiling a kernel with ``parallel=True`` costs 2-3x a serial build (the
parfor passes, then a second, threaded copy of the loop body for LLVM):
on the 2-core target, compiling the four kernels a LeNet forward calls took
11.4 s as parallel builds and 5.3 s as serial builds of the same code. So a
``parallel_kernel`` is a dispatcher with two builds, compiled on demand: a
call whose array arguments all have fewer than ``PARALLEL_MIN_WORK``
elements goes to a serial build of the same function (``prange`` is
``range`` there), and only a larger call compiles and runs the parallel
build. Small nets (and the first run of the digits demo) never pay for the
parallel build; ``netdef warmup`` compiles both. The serial build has its
own name (``<kernel>.serial``) and so its own cache files. The parallel
build holds no serial fallback of its own: that second copy of the loop
cost compile time in both builds.  Measured on the 2-core
target: a second thread halves im2col, pooling and LRN times when the cores
are free, but a parallel region whose worker thread has been descheduled
(any other busy process) waits for the next scheduler tick, 4-12 ms: 100x
the whole cost of a small call, and gradient checks make thousands of them.

PARALLEL_MIN_WORK is 64K elements when the GEMMs run on Numba's pool
(``POOL_GEMM``, see ``gemm``), 1M otherwise; ``NETDEF_PARALLEL_MIN_WORK``
overrides it. With OpenBLAS's own threads doing the GEMMs, its workers
still spin on the other core while a kernel runs between two GEMMs, so a
woken OpenMP worker waits for the core it needs: with a 32K threshold the
face detector, MobileNet-SSD and MobileNet v1/v2 were 13-25% slower than
with every kernel serial, hence 1M there (AlexNet's second LRN at batch 10,
1.9M elements, still halves on two threads). With the GEMMs on the pool,
OpenBLAS's workers sleep and the pool's spin for a few milliseconds
(``GOMP_SPINCOUNT``, netdef/__init__), so a second thread pays off much
earlier: a 384x14x14 depthwise layer took 0.13 ms serially and 0.07 ms on
two spinning threads (0.15-0.19 ms with sleeping ones). Against OpenCV in
the same run (100,000 spins), 64K gave MobileNet v2 0.87 and the face
detector 1.11, 32K 0.89 and 1.12: within the noise, and 64K keeps more
small calls on the serial build, which compiles faster.

FASTMATH allows re-association (so float reductions vectorise), contraction
into FMAs, reciprocal division and ignoring the sign of zero.  It does NOT
allow ``nnan``/``ninf`` (max pooling, ReLU and Clip keep Caffe's behaviour
for NaN and infinity) nor ``afn`` (approximate exp/log/pow).

``error_model="numpy"``: float division by zero gives inf/NaN as in C++
(Caffe's average pooling of an empty ceil-mode window is 0/0 = NaN) instead
of raising, and divide loops need no zero checks, so they vectorise.

Numba's on-disk cache key holds a function's bytecode and signature, not
these options.  After
editing this file, delete ``netdef/kernels/__pycache__/*.nb[ic]``, or stale
machine code is loaded.  For the same reason a kernel's helpers live in the
kernel's own module: editing that module invalidates its cache entries.
"""
from __future__ import annotations

import os

# Idle OpenMP workers must not spin for long (see netdef/__init__.py, which
# normally sets this first; repeated here for direct kernel imports).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import types  # noqa: E402

import numpy as np  # noqa: E402

from netdef.kernels._blas import find_blas  # noqa: E402

# True when the GEMMs run on Numba's pool (kernels/gemm.py): OpenBLAS's own
# workers then stay asleep, and the pool's may spin briefly between calls.
POOL_GEMM = find_blas() is not None
if POOL_GEMM:        # netdef/__init__ normally sets it first (see its _thread_policy)
    os.environ.setdefault("GOMP_SPINCOUNT", "100000")

from numba import njit, prange  # noqa: E402,F401  (prange re-exported for kernel modules)
from numba.core.registry import CPUDispatcher  # noqa: E402

# The CPUs of the thread that imported netdef, when netdef/__init__ asked GNU
# OpenMP to bind the pool's threads (see _thread_policy there), else None.
from netdef import _CALLER_CPUS  # noqa: E402

_pool_started = False


def _start_pool() -> None:
    """Before the first parallel call: start Numba's thread pool if it is not
    running yet (GNU OpenMP binds its threads as it starts, the calling one
    included), then give the calling thread back the CPUs it had when
    netdef was imported, so that the threads and processes it starts later
    are not pinned to one CPU."""
    global _pool_started, _MASTER_CPUS
    _pool_started = True
    if _CALLER_CPUS is None:
        return
    import numba

    numba.get_num_threads()
    bound = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, _CALLER_CPUS)
    except OSError:         # a CPU taken away since (cgroup change): keep the binding
        return
    if bound != _CALLER_CPUS:
        _MASTER_CPUS = bound


# The CPUs GNU OpenMP bound the calling thread to as the pool started (its
# place; the workers have the others), or None where netdef did not bind the pool.
_MASTER_CPUS = None


class _OnCPUs:
    """``with _OnCPUs(cpus):`` runs the block with the calling thread on
    ``cpus`` (nothing if None), then gives it back the CPUs it had."""

    __slots__ = ("cpus", "saved")

    def __init__(self, cpus):
        self.cpus = cpus
        self.saved = None

    def __enter__(self):
        if self.cpus is not None:
            saved = os.sched_getaffinity(0)
            if saved != self.cpus:
                try:
                    os.sched_setaffinity(0, self.cpus)
                    self.saved = saved
                except OSError:     # a CPU taken away since: run where it is
                    pass
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            try:
                os.sched_setaffinity(0, self.saved)
            except OSError:
                pass
            self.saved = None
        return False


def master_place() -> _OnCPUs:
    """``with master_place():`` runs a net's steps with the calling thread on
    the CPUs of its OpenMP place (``_MASTER_CPUS``), then gives it back the
    CPUs it had. Between forward passes the unbound caller often woke on
    the CPU a worker is bound to, and each parallel region's worker then
    waited for the caller to leave that CPU. MobileNet v2 in the bench's
    conditions (0.25 s pauses, another process in between): 15.0 ms median
    with the caller free, 9.9 ms on its place, and 208 ms with the caller
    held on the worker's CPU. Two or three system calls per use (a few
    microseconds); nothing where netdef did not bind the pool."""
    return _OnCPUs(_MASTER_CPUS)


def caller_place() -> _OnCPUs:
    """``with caller_place():`` inside ``master_place``: the calling thread
    back on the CPUs it had when netdef was imported, for user code (a
    Python layer) whose threads and processes would inherit the place."""
    return _OnCPUs(_CALLER_CPUS if _MASTER_CPUS is not None else None)


FASTMATH = frozenset({"contract", "reassoc", "arcp", "nsz"})

def _min_work_from_env(default: int = (1 << 16) if POOL_GEMM else (1 << 20)) -> int:
    """NETDEF_PARALLEL_MIN_WORK as a positive element count; a value that is
    not one is reported on stderr (importing must not fail) and the default used."""
    text = os.environ.get("NETDEF_PARALLEL_MIN_WORK")
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        import sys

        print(f"netdef: warning: NETDEF_PARALLEL_MIN_WORK={text!r} is not a positive "
              f"number of elements; using {default}", file=sys.stderr)
        return default
    return value


PARALLEL_MIN_WORK = _min_work_from_env()

OPTIONS = dict(cache=True, nogil=True, error_model="numpy", fastmath=set(FASTMATH))

kernel = njit(**OPTIONS)
helper = njit(inline="always", **OPTIONS)


def _serial_copy(fn):
    """``fn`` under another qualified name, so its builds cache apart."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)
    copy.__qualname__ = f"{fn.__qualname__}.serial"
    copy.__module__, copy.__doc__ = fn.__module__, fn.__doc__
    return copy


_NDARRAY = np.ndarray


class OnDemandParallel(CPUDispatcher):
    """A ``parallel=True`` dispatcher whose small calls run a serial build.

    ``serial`` is the serial dispatcher; ``parallel_call(*args)`` always
    uses the parallel build (warmup compiles it that way). Called from
    other jitted code, the parallel build is used.
    """

    serial = None      # set by parallel_kernel; None after unpickling: plain dispatcher
    min_work = PARALLEL_MIN_WORK   # elements of the largest array from which a call is parallel

    def __call__(self, *args, **kwargs):
        serial = self.serial
        if serial is None:
            return CPUDispatcher.__call__(self, *args, **kwargs)
        min_work = self.min_work
        for a in args:         # a plain loop: this runs on every call (about 1 us)
            if isinstance(a, _NDARRAY) and a.size >= min_work:
                if not _pool_started:
                    _start_pool()
                return CPUDispatcher.__call__(self, *args, **kwargs)
        return serial(*args, **kwargs)

    def parallel_call(self, *args, **kwargs):
        if not _pool_started:
            _start_pool()
        return CPUDispatcher.__call__(self, *args, **kwargs)

    @property
    def signatures(self):
        """Signatures compiled by either build (each build has the same ones)."""
        both = list(self.overloads) + (list(self.serial.overloads) if self.serial else [])
        return list(dict.fromkeys(both))


def parallel_kernel(fn=None, *, fastmath: bool = True, work_per_element: int = 1):
    """``njit(parallel=True, **OPTIONS)`` with a serial build for small calls.

    ``work_per_element`` (W) makes calls parallel from PARALLEL_MIN_WORK / W
    elements, for kernels that do W times a copy's work per element of their
    largest array (depthwise convolution: nine multiply-adds).

    ``fastmath=False`` (``@parallel_kernel(fastmath=False)``) is for kernels
    that only copy, compare or scatter-add floats one at a time (im2col,
    col2im, max pooling): the flags gain nothing there but cost LLVM time,
    about 0.2 s per kernel on first use. Helpers inlined into a kernel take the kernel's flags.
    """
    if fn is None:
        return lambda f: parallel_kernel(f, fastmath=fastmath, work_per_element=work_per_element)
    options = dict(OPTIONS) if fastmath else dict(OPTIONS, fastmath=False)
    disp = njit(parallel=True, **options)(fn)
    if not isinstance(disp, CPUDispatcher):      # NUMBA_DISABLE_JIT=1: the function itself
        return disp
    disp.__class__ = OnDemandParallel            # same layout: CPUDispatcher has no slots
    disp.serial = njit(**options)(_serial_copy(fn))
    disp.min_work = max(1, PARALLEL_MIN_WORK // work_per_element)
    return disp
