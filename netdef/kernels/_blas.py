"""numpy's own OpenBLAS, found by symbol name: the three functions that
``gemm`` calls from Numba's threads. Only numpy and ctypes here, so that
``_jit`` can ask before Numba (and its OpenMP runtime) loads."""
from __future__ import annotations

import ctypes
import functools
import os


@functools.cache
def find_blas():
    """(sgemm, sgemv, set_num_threads_local) addresses in numpy's OpenBLAS, or None."""
    if os.environ.get("NETDEF_GEMM", "").lower() == "numpy":
        return None
    try:
        from numpy._core import _multiarray_umath as umath
    except ImportError:          # numpy < 2
        from numpy.core import _multiarray_umath as umath
    try:
        # dlsym on the extension module also searches the libraries it links
        lib = ctypes.CDLL(umath.__file__)
    except OSError:
        return None

    def address(*names):
        for name in names:
            fn = getattr(lib, name, None)
            if fn is not None:
                return ctypes.cast(fn, ctypes.c_void_p).value
        return None

    found = (address("scipy_cblas_sgemm64_", "cblas_sgemm64_"),     # ILP64 builds only
             address("scipy_cblas_sgemv64_", "cblas_sgemv64_"),
             address("openblas_set_num_threads_local", "openblas_set_num_threads_local64_",
                     "scipy_openblas_set_num_threads_local64_"))
    return None if None in found else found
