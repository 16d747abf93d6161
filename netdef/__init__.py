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
