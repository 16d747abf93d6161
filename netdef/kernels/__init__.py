"""Numba CPU kernels: pure functions over float32 arrays and scalars.

Importing this package is cheap: it does not import Numba.  Layers import
the kernel modules lazily inside ``forward``/``backward``, and ``warmup``
compiles every kernel once so the on-disk Numba cache is filled (``netdef
warmup``).  Each kernel's docstring (and its module's) states the dtypes it
expects; sticking to them keeps exactly one compiled signature per kernel,
which ``compiled_signatures`` lets a test verify.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import time
from collections.abc import Callable

# (module, function) of every public kernel, in warm-up order.
ALL_KERNELS: list[tuple[str, str]] = [
    ("im2col", "im2col"),
    ("im2col", "col2im"),
    ("im2col", "conv_bands"),       # calls numpy's OpenBLAS: skipped by warmup without it
    ("im2col", "pointwise_bands"),  # likewise
    ("pooling", "max_pool_forward"),
    ("pooling", "max_pool_forward_values"),
    ("pooling", "max_pool_3x3_values"),
    ("pooling", "max_pool_backward"),
    ("pooling", "ave_pool_forward"),
    ("pooling", "ave_pool_backward"),
    ("pooling", "global_ave_pool"),
    ("lrn", "lrn_across_forward"),
    ("lrn", "lrn_across_backward"),
    ("lrn", "lrn_within_forward"),
    ("lrn", "lrn_within_backward"),
    ("elementwise", "relu"),
    ("elementwise", "relu_backward"),
    ("elementwise", "bias_relu"),
    ("elementwise", "relu6"),
    ("elementwise", "relu6_backward"),
    ("elementwise", "sigmoid"),
    ("elementwise", "sigmoid_backward"),
    ("elementwise", "tanh"),
    ("elementwise", "tanh_backward"),
    ("elementwise", "elu"),
    ("elementwise", "elu_backward"),
    ("elementwise", "absval"),
    ("elementwise", "absval_backward"),
    ("elementwise", "power"),
    ("elementwise", "power_backward"),
    ("elementwise", "exp_base"),
    ("elementwise", "log_base"),
    ("elementwise", "log_backward"),
    ("elementwise", "bnll"),
    ("elementwise", "bnll_backward"),
    ("elementwise", "threshold"),
    ("elementwise", "clip"),
    ("elementwise", "clip_backward"),
    ("elementwise", "swish"),
    ("elementwise", "swish_backward"),
    ("elementwise", "prelu"),
    ("elementwise", "prelu_backward"),
    ("elementwise", "eltwise_sum"),
    ("elementwise", "eltwise_sum_pair"),
    ("elementwise", "eltwise_prod"),
    ("elementwise", "eltwise_max_pair"),
    ("elementwise", "eltwise_max"),
    ("elementwise", "eltwise_max_backward"),
    ("normalization", "channel_affine"),
    ("normalization", "channel_affine_relu"),
    ("normalization", "channel_sum_affine_relu"),
    ("normalization", "channel_mean_var"),
    ("normalization", "channel_sums"),
    ("normalization", "channel_affine_pair"),
    ("normalization", "mvn_forward"),
    ("normalization", "mvn_backward"),
    ("softmax", "softmax"),
    ("softmax", "softmax_backward"),
    ("detection", "nms_keep"),
    ("depthwise", "depthwise_forward"),
    ("depthwise", "pointwise_depthwise"),
    ("depthwise", "depthwise_backward_data"),
    ("depthwise", "depthwise_backward_weights"),
    ("winograd", "winograd_input"),
    ("winograd", "winograd_output"),
    ("winograd", "winograd_conv"),  # skipped by warmup without numpy's OpenBLAS
    ("gemm", "products"),           # skipped by warmup without numpy's OpenBLAS
    ("gemm", "vector_products"),
]

# the kernels that call numpy's OpenBLAS (kernels.gemm): compiled only where it can be called
NEEDS_BLAS = frozenset({("gemm", "products"), ("gemm", "vector_products"),
                        ("im2col", "conv_bands"), ("im2col", "pointwise_bands"),
                        ("depthwise", "pointwise_depthwise"),
                        ("winograd", "winograd_conv")})


def matmul(a, b, out, accumulate: bool = False) -> None:
    """``out = a @ b`` (``+=`` when ``accumulate``) on Numba's thread pool:
    ``netdef.kernels.gemm.matmul``, imported on first use so that layers
    can call it without importing Numba at import time."""
    from netdef.kernels.gemm import matmul as pool_matmul

    pool_matmul(a, b, out, accumulate)


def _pool_gemm() -> bool:
    from netdef.kernels.gemm import available

    return available()


def get_kernel(module: str, name: str) -> Callable:
    """The kernel ``netdef.kernels.<module>.<name>`` (imports Numba)."""
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def warmup(progress: Callable[[str], None] | None = None, *,
           compiled: list[str] | None = None) -> tuple[list[str], float]:
    """Compile (or load from the Numba cache) every kernel in ALL_KERNELS
    (the GEMM kernels only where numpy's OpenBLAS can be called from them).

    Each kernel is called once on tiny dummy arrays of the documented
    dtypes, through both builds of a parallel kernel (see ``_jit``).
    ``progress(name)`` is called before each one with its dotted name.
    Dotted names of the kernels that had to be compiled (not found in the
    cache) are appended to ``compiled``.  Returns the dotted names and the
    seconds taken in total.
    """
    from netdef.kernels._warmup import dummy_args

    start = time.perf_counter()
    names = []
    for module, name in ALL_KERNELS:
        dotted = f"{module}.{name}"
        if progress is not None:
            progress(dotted)
        if (module, name) in NEEDS_BLAS and not _pool_gemm():
            continue
        fn = get_kernel(module, name)
        builds = [fn, getattr(fn, "serial", None)]
        misses = _cache_misses(builds)
        fn(*dummy_args(module, name))
        if hasattr(fn, "parallel_call"):
            fn.parallel_call(*dummy_args(module, name))
        if compiled is not None and _cache_misses(builds) > misses:
            compiled.append(dotted)
        names.append(dotted)
    return names, time.perf_counter() - start


def warmup_command(quiet: bool = False) -> str:
    """``netdef warmup``: ``warmup`` behind a progress bar; returns the summary line.

    With a warm cache this only loads every kernel (a second or two) and
    says so; it never claims to compile what came from the cache.
    """
    from netdef.progress import progress_bar

    compiled: list[str] = []
    total = sum(1 for kernel in ALL_KERNELS if kernel not in NEEDS_BLAS or _pool_gemm())
    with progress_bar(total=total, desc="warmup", unit="kernel",
                      enabled=False if quiet else None) as bar:
        def step(name: str) -> None:
            if bar.n < step.calls:           # the previous kernel is done
                bar.update(1)
            step.calls += 1
            bar.set_postfix_str(name, refresh=False)

        step.calls = 0
        names, seconds = warmup(step, compiled=compiled)
        bar.update(len(names) - bar.n)
    cached = len(names) - len(compiled)
    where = _cache_dir(get_kernel(*ALL_KERNELS[0])) if names else None
    return (f"{len(names)} kernels ready in {seconds:.1f} s: {len(compiled)} compiled, "
            f"{cached} loaded from the cache" + (f" ({where})" if where else ""))


def _cache_dir(fn) -> str | None:
    """The folder Numba caches ``fn`` in (beside the package, or a user cache)."""
    path = getattr(getattr(fn, "_cache", None), "_cache_path", None)
    return str(path) if path else None


def _cache_misses(builds) -> int:
    """Compilations so far (Numba counts a cache miss per compiled signature)."""
    stats = [getattr(b, "stats", None) for b in builds if b is not None]
    return sum(sum(s.cache_misses.values()) for s in stats if s is not None)


@contextlib.contextmanager
def compile_notice(log: Callable[[str], None], enabled: bool | None = None):
    """Say so while kernels compile inside the block (the first run on a machine).

    Numba compiles a kernel the first time it is called and keeps the result
    in its cache, so later runs only load it. Compiling the few kernels of a
    small net takes seconds and looks like a hang, so on the first compile
    this logs one line, then shows a counter of compiled kernels (a
    ``netdef.progress`` bar: a terminal only, or ``enabled``) and at the end
    logs how many were compiled and how long it took. Nothing is shown
    when every kernel comes from the cache.
    """
    from numba.core import event

    from netdef.progress import progress_bar

    public = set(ALL_KERNELS)
    state = {"bar": None, "done": set(), "start": 0.0}

    def kernel_name(ev) -> str | None:
        """'module.kernel' of a public kernel being compiled (helpers do not count)."""
        fn = getattr((ev.data or {}).get("dispatcher"), "py_func", None)
        package, _, module = (getattr(fn, "__module__", "") or "").rpartition(".")
        name = getattr(fn, "__qualname__", "").removesuffix(".serial")
        if package == __name__ and (module, name) in public:
            return f"{module}.{name}"
        return None

    class Listener(event.Listener):
        def on_start(self, ev):
            name = kernel_name(ev)
            if name is None:
                return
            if state["bar"] is None:
                log("compiling kernels for this machine (first run only; they are cached "
                    "for the next runs, or run `netdef warmup` once)...")
                state["start"] = time.perf_counter()
                state["bar"] = progress_bar(desc="compiling kernels", enabled=enabled,
                                            bar_format="{desc}: {n} done, {elapsed}{postfix}")
            state["bar"].set_postfix_str(name, refresh=True)

        def on_end(self, ev):
            name = kernel_name(ev)
            if name is not None and state["bar"] is not None and name not in state["done"]:
                state["done"].add(name)
                state["bar"].update(1)

    with event.install_listener("numba:compile", Listener()):
        try:
            yield
        finally:
            if state["bar"] is not None:
                state["bar"].close()
                log(f"compiled {len(state['done'])} kernel(s) in "
                    f"{time.perf_counter() - state['start']:.1f} s (cached for the next runs)")


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
