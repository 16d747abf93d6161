"""Numba CPU kernels: pure functions over float32 arrays and scalars.

Importing this package is cheap: it does not import Numba.  Layers import
the kernel modules lazily inside ``forward``/``backward``, and ``warmup``
compiles every kernel once so the on-disk Numba cache is filled (``netdef
warmup``).  Each kernel's docstring (and its module's) states the dtypes it
expects; sticking to them keeps exactly one compiled signature per kernel,
which ``compiled_signatures`` lets a test verify.
"""
from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable

# (module, function) of every public kernel, in warm-up order.
ALL_KERNELS: list[tuple[str, str]] = [
    ("im2col", "im2col"),
    ("im2col", "col2im"),
    ("pooling", "max_pool_forward"),
    ("pooling", "max_pool_forward_values"),
    ("pooling", "max_pool_backward"),
    ("pooling", "ave_pool_forward"),
    ("pooling", "ave_pool_backward"),
    ("lrn", "lrn_across_forward"),
    ("lrn", "lrn_across_backward"),
    ("lrn", "lrn_within_forward"),
    ("elementwise", "relu"),
    ("elementwise", "relu_backward"),
    ("elementwise", "sigmoid"),
    ("elementwise", "sigmoid_backward"),
    ("elementwise", "tanh"),
    ("elementwise", "tanh_backward"),
    ("elementwise", "elu"),
    ("elementwise", "elu_backward"),
    ("elementwise", "absval"),
    ("elementwise", "power"),
    ("elementwise", "exp_base"),
    ("elementwise", "log_base"),
    ("elementwise", "bnll"),
    ("elementwise", "threshold"),
    ("elementwise", "clip"),
    ("elementwise", "swish"),
    ("elementwise", "prelu"),
    ("elementwise", "prelu_backward"),
    ("elementwise", "eltwise_sum"),
    ("elementwise", "eltwise_prod"),
    ("elementwise", "eltwise_max_pair"),
    ("elementwise", "eltwise_max"),
    ("elementwise", "eltwise_max_backward"),
    ("normalization", "channel_affine"),
    ("normalization", "channel_mean_var"),
    ("normalization", "mvn_forward"),
    ("softmax", "softmax"),
]


def get_kernel(module: str, name: str) -> Callable:
    """The kernel ``netdef.kernels.<module>.<name>`` (imports Numba)."""
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def warmup(progress: Callable[[str], None] | None = None) -> tuple[list[str], float]:
    """Compile (or load from the Numba cache) every kernel in ALL_KERNELS.

    Each kernel is called once on tiny dummy arrays of the documented
    dtypes.  ``progress(name)`` is called before each one with its dotted
    name.  Returns the dotted names and the seconds taken in total.
    """
    from netdef.kernels._warmup import dummy_args

    start = time.perf_counter()
    names = []
    for module, name in ALL_KERNELS:
        dotted = f"{module}.{name}"
        if progress is not None:
            progress(dotted)
        get_kernel(module, name)(*dummy_args(module, name))
        names.append(dotted)
    return names, time.perf_counter() - start


def compiled_signatures() -> dict[str, list]:
    """Signatures compiled so far, per dotted kernel name.

    Only kernel modules that are already imported are inspected, so calling
    this never imports Numba.  A kernel with two or more signatures was
    called with inconsistent dtypes, ranks or scalar types somewhere.
    """
    found = {}
    for module, name in ALL_KERNELS:
        mod = sys.modules.get(f"{__name__}.{module}")
        if mod is not None:
            found[f"{module}.{name}"] = list(getattr(mod, name).signatures)
    return found
