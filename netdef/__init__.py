"""netdef: Caffe-style prototxt networks, compiled and run on the CPU.

The common entry points are importable from here; they load lazily so that
``import netdef`` stays cheap (no Numba until a net actually runs).
"""
import os as _os

__version__ = "0.1.0"

# Idle OpenMP workers (Numba's thread pool) must sleep instead of spinning,
# or they fight OpenBLAS's GEMM threads for the cores: on 2 cores a whole
# forward pass gets about 5x slower. It has to be set before Numba starts
# its pool, hence here, at the first import of anything netdef. The user's
# own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

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
