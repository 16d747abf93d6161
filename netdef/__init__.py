"""netdef: Caffe-style prototxt networks, compiled and run on the CPU.

The common entry points are importable from here; they load lazily so that
``import netdef`` stays cheap (no Numba until a net actually runs).
"""
import os as _os

__version__ = "0.1.0"

# Idle OpenMP workers (Numba's thread pool) must not spin indefinitely, or
# they fight OpenBLAS's GEMM threads for the cores: on 2 cores a whole
# forward pass got about 5x slower (_thread_policy allows a short spin). It
# has to be set before Numba starts its pool, hence here, at the first
# import of anything netdef. The user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The other side: OpenBLAS's idle workers spin for 2^28 cycles (~0.1 s) after
# every GEMM, taking a core from the Numba kernels that run between GEMMs
# (im2col, LRN and pooling ran about 2x slower at batch 10). 2^23 cycles (~3 ms)
# still covers the short gaps of a batch-1 forward, where waking sleeping
# workers for every GEMM cost more than the spinning (2^14 was measured: batch
# 10 -20%, batch 1 +30%). OpenBLAS reads this when numpy loads it, so it only
# takes effect if netdef is imported before numpy.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "23")

# The CPUs of the thread that imported netdef, kept while the pool's threads
# are bound (_bind_pool), else None; and the variable that marks the binding
# as netdef's own, for child processes that inherit it.
_CALLER_CPUS = None
_BIND_MARK = "NETDEF_SET_OMP_PROC_BIND"


def _thread_policy() -> None:
    """With numpy's OpenBLAS callable from Numba's threads, every GEMM of a
    forward pass runs on Numba's pool (kernels/gemm.py) and OpenBLAS's
    workers stay asleep; the pool's workers may then spin between parallel
    regions (100,000 spins: about 4 ms, like OpenBLAS's own 2^23 cycles),
    so that the next region starts at once instead of waking a sleeping
    thread (which cost a small kernel its whole gain from the second
    thread). GNU OpenMP reads this once, when Numba first starts its pool,
    so it is set here, before anything can start it."""
    from netdef.kernels._blas import find_blas

    if find_blas() is not None:
        _os.environ.setdefault("GOMP_SPINCOUNT", "100000")
        _bind_pool()


def _bind_pool() -> None:
    """Bind the pool's threads one per CPU (``OMP_PROC_BIND=spread``) unless
    the user chose a binding. Unbound, a worker woken after the pool had
    gone to sleep (a pause of 20 ms or more between forward passes: the
    frames of a video, the images of ``netdef detect``) was often queued
    on the CPU where the calling thread spun at the region's barrier, and
    started only when that spin ended: on the 2-core VM a trivial parallel
    region after such a pause took 3.6-4.3 ms instead of 0.12-0.14 ms
    (median), the delay growing with ``GOMP_SPINCOUNT``. GNU OpenMP binds
    the calling thread too; ``kernels._jit`` gives it back these CPUs once
    the pool has started. ``OMP_PROC_BIND=false`` turns the binding off
    (for several netdef processes that each use fewer threads than the
    machine has CPUs, say); a pool made smaller than the CPUs with
    ``NUMBA_NUM_THREADS`` is left unbound, for the same reason."""
    global _CALLER_CPUS
    env = _os.environ
    # a child process inherits the parent's setting, which is still netdef's own
    ours = env.get("OMP_PROC_BIND") == "spread" and env.get(_BIND_MARK) == "1"
    if not hasattr(_os, "sched_getaffinity") or (not ours and any(
            key in env for key in ("OMP_PROC_BIND", "OMP_PLACES", "GOMP_CPU_AFFINITY"))):
        return
    cpus = _os.sched_getaffinity(0)
    pool = env.get("NUMBA_NUM_THREADS", "")
    if pool.strip().isdigit() and int(pool) < len(cpus):
        return
    _CALLER_CPUS = cpus
    env["OMP_PROC_BIND"] = "spread"
    env[_BIND_MARK] = "1"


_thread_policy()

_EXPORTS = {
    "Net": "netdef.net",
    "summarize": "netdef.summary",
    "read_net": "netdef.frontend.source",
    "build_graph": "netdef.frontend.graph",
    "check": "netdef.check",
    "NetdefError": "netdef.errors",
    "get_solver": "netdef.train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'netdef' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
