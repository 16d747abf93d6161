"""Matrix products on Numba's thread pool: one pool for the whole forward pass.

``matmul(a, b, out)`` computes ``out = a @ b`` (``out += a @ b`` with
``accumulate=True``) for float32 matrices or stacks of them, as
``np.matmul`` does, but splits the work itself: the Numba pool's threads
each call the single-threaded SGEMM of numpy's own OpenBLAS on their part
(one matrix of a stack, or a band of rows of a single matrix; SGEMV and a
band of the result for a matrix-vector product).

Why: with OpenBLAS's own threads doing the GEMMs, a forward pass keeps two
thread pools on a 2-core machine. Each must spin between calls to start
quickly (on the VM measured here, a 384x14x14 depthwise layer took 0.15 ms
on two sleeping threads, 0.07 ms on two spinning ones and 0.13 ms on one),
but whichever spins takes the core the other pool's worker needs, so
Numba's kernels between GEMMs ran serially (the 1M-element threshold of
``_jit``) or slower than serially.
With every GEMM on the Numba pool, OpenBLAS's workers stay asleep and the
pool's workers can spin for a short while (``GOMP_SPINCOUNT``, set in
``netdef/__init__``). Measured alone, band-split GEMMs of MobileNet's and
AlexNet's shapes also beat OpenBLAS's own two threads: 1024x1024x49 took
0.93 ms against 1.67 ms, 384x64x196 0.09 against 0.15 ms.

The SGEMM comes from the OpenBLAS that numpy links (its 64-bit-integer
CBLAS, looked up by name through numpy's extension module), and
``openblas_set_num_threads_local`` keeps each call on its own thread. When
either is missing (numpy built on MKL or Accelerate, an older OpenBLAS) or
``NETDEF_GEMM=numpy`` is set, ``matmul`` is ``np.matmul`` and nothing here
is compiled. Layouts SGEMM cannot take (a matrix with no unit stride)
also go to ``np.matmul``.
"""
from __future__ import annotations

import numpy as np
from numba import types

from netdef.kernels._blas import find_blas
from netdef.kernels._jit import helper, parallel_kernel, prange

# CBLAS's enumerations (cblas.h): row-major order, and the two transposes
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
# below this many multiply-adds a product stays on the calling thread:
# a parallel region costs a few microseconds even with spinning workers
_PARALLEL_MIN_MACS = 1 << 17
# a band of rows is at least this tall (SGEMM's kernels work on 8-16 rows)
_MIN_BAND = 16
# A product with a single row or column runs as SGEMV: SGEMM would first pack
# (copy) the whole matrix (AlexNet's fc6 at batch 1: 14.6 ms that way, 6.3 ms
# as numpy's GEMV). Below this many rows or columns (but more than one)
# products stay np.matmul's, for the same reason.
_MIN_SIDE = 8


# The three BLAS functions, called by symbol name: ``_kernels`` registers the
# names with LLVM (at this process's addresses) before anything here is
# compiled or loaded from Numba's cache. Pointers travel as int64.
_I32, _I64, _F32 = types.int32, types.int64, types.float32
_sgemm = types.ExternalFunction(
    "netdef_sgemm64", types.void(_I32, _I32, _I32, _I64, _I64, _I64, _F32, _I64, _I64, _I64,
                                 _I64, _F32, _I64, _I64))
_sgemv = types.ExternalFunction(
    "netdef_sgemv64", types.void(_I32, _I32, _I64, _I64, _F32, _I64, _I64, _I64, _I64, _F32,
                                 _I64, _I64))
_threads_local = types.ExternalFunction("netdef_blas_threads_local", types.int32(_I32))


@helper
def _task(t, split, by_rows, m, n, k, a, ag, ar, ta, lda, b, bg, bc, tb, ldb, beta, c, cg, cr):
    """Part ``t % split`` of product ``t // split``. Pointers and strides
    in bytes: ag, bg, cg between products, ar and cr between rows of a and
    c, bc between columns of b. The parts are bands of rows (``by_rows``)
    or of columns."""
    g, part = t // split, t % split
    a += g * ag
    b += g * bg
    c += g * cg
    if by_rows:
        step = -(-m // split)
        lo, hi = part * step, min(m, (part + 1) * step)
        a += lo * ar
        c += lo * cr
        m_part, n_part = hi - lo, n
    else:
        step = -(-n // split)
        lo, hi = part * step, min(n, (part + 1) * step)
        b += lo * bc
        c += lo * 4
        m_part, n_part = m, hi - lo
    if m_part > 0 and n_part > 0:
        before = _threads_local(1)          # this call only: no OpenBLAS workers
        _sgemm(_ROW_MAJOR, ta, tb, m_part, n_part, k, np.float32(1.0), a, lda, b, ldb,
               beta, c, cr // 4)
        _threads_local(before)


@helper
def _vector_task(t, parts, trans, rows, cols, s, ld, step, x, incx, beta, y, incy):
    """Part t of y = S x (trans: S^T x) for the stored matrix S (rows, cols,
    leading dimension ld): a band of y's elements, ``step`` bytes apart in S."""
    length = rows if trans == _NO_TRANS else cols
    size = -(-length // parts)
    lo, hi = t * size, min(length, (t + 1) * size)
    if hi > lo:
        s += lo * step
        y += lo * incy * 4
        if trans == _NO_TRANS:
            rows = hi - lo
        else:
            cols = hi - lo
        before = _threads_local(1)
        _sgemv(_ROW_MAJOR, trans, rows, cols, np.float32(1.0), s, ld, x, incx, beta, y, incy)
        _threads_local(before)


@parallel_kernel
def vector_products(parts, trans, rows, cols, s, ld, step, x, incx, beta, y, incy):
    """y = S x, or S^T x when trans is CBLAS's transpose (112), in ``parts``
    bands of y: S a row-major float32 matrix (rows, cols, leading dimension
    ld) at address s, ``step`` bytes between the starts of consecutive
    elements of y in S; x and y float32 vectors at those addresses with
    element strides incx and incy; beta (float32) 0, or 1 to add to y.
    Every argument an int, except beta. ``.serial`` runs on the calling
    thread; ``.parallel_call``, the band per thread."""
    for t in prange(parts):
        _vector_task(t, parts, trans, rows, cols, s, ld, step, x, incx, beta, y, incy)


@parallel_kernel
def products(tasks, split, by_rows, m, n, k, a, ag, ar, ta, lda, b, bg, bc, tb, ldb, beta,
             c, cg, cr):
    """c[g] = a[g] @ b[g] (beta 1: +=) for tasks // split products, each in
    ``split`` bands of rows (by_rows != 0) or columns: m, n, k the sizes;
    a, b, c addresses of float32 matrices; ta, tb CBLAS's transpose flags
    (111 none, 112 transposed) with leading dimensions lda, ldb; strides in
    bytes as ``_task`` describes. Every argument an int, except beta
    (float32). ``.serial`` runs on the calling thread, ``.parallel_call``
    one task per thread."""
    for t in prange(tasks):
        _task(t, split, by_rows, m, n, k, a, ag, ar, ta, lda, b, bg, bc, tb, ldb, beta,
              c, cg, cr)


def _operand(x: np.ndarray, rows: int, cols: int):
    """(transpose flag, leading dimension, row stride, column stride) for
    SGEMM of the last two axes of x, strides in bytes; None if it has no
    unit stride."""
    rs, cs = x.strides[-2], x.strides[-1]
    if rows == 1:
        rs = cols * 4
    if cols == 1:
        cs = 4
    if cs == 4 and rs % 4 == 0 and rs >= cols * 4:
        return _NO_TRANS, rs // 4, rs, cs
    if cols == 1 and rs % 4 == 0 and rs > 0:
        return _NO_TRANS, max(rs // 4, 1), rs, 4
    if rs == 4 and cs % 4 == 0 and cs >= rows * 4:
        return _TRANS, cs // 4, rs, cs
    return None


_SYMBOLS = ("netdef_sgemm64", "netdef_sgemv64", "netdef_blas_threads_local")
_KERNELS = None          # True once the symbols are registered; False without them


def _kernels() -> bool:
    """Whether the BLAS functions were found; registers them with LLVM
    (once), which must precede any call of ``products``/``vector_products``."""
    global _KERNELS
    if _KERNELS is None:
        from numba import config

        # without the JIT the kernels are Python, which cannot call the symbols
        found = None if config.DISABLE_JIT else find_blas()
        if found:
            import llvmlite.binding as llvm

            for name, address in zip(_SYMBOLS, found, strict=True):
                llvm.add_symbol(name, address)
            _KERNELS = True
        else:
            _KERNELS = False
    return _KERNELS


def available() -> bool:
    """Whether products run on the Numba pool (else they are np.matmul's)."""
    return _kernels()


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray, accumulate: bool = False) -> None:
    """out = a @ b, or out += a @ b when ``accumulate``: float32 arrays of
    2 or 3 axes (a stack of products over the first axis; a 2-D operand is
    shared by every product of the stack). ``out`` needs unit column stride
    and must not overlap a or b (np.matmul would copy; this does not check)."""
    if (not _kernels() or out.ndim not in (2, 3) or a.ndim not in (2, 3) or b.ndim not in (2, 3)
            or a.dtype != np.float32 or b.dtype != np.float32 or out.dtype != np.float32):
        return _numpy(a, b, out, accumulate)
    g = out.shape[0] if out.ndim == 3 else 1
    m, k = a.shape[-2:]
    n = b.shape[-1]
    fa, fb = _operand(a, m, k), _operand(b, k, n)
    cr = out.strides[-2] if m > 1 else n * 4
    if (b.shape[-2] != k or out.shape[-2:] != (m, n) or (a.ndim == 3 and a.shape[0] != g)
            or (b.ndim == 3 and b.shape[0] != g) or 0 in (g, m, n, k)
            or fa is None or fb is None or (out.strides[-1] != 4 and n > 1)
            or cr % 4 or cr < n * 4):
        return _numpy(a, b, out, accumulate)
    ta, lda, ar, _ = fa
    tb, ldb, _, bc = fb
    beta = np.float32(1.0 if accumulate else 0.0)
    from numba import get_num_threads

    threads = get_num_threads()
    parallel = threads > 1 and g * m * n * k >= _PARALLEL_MIN_MACS
    if min(m, n) == 1:
        if g > 1:
            return _numpy(a, b, out, accumulate)
        return _vector(m, n, k, a, ta, lda, b, tb, ldb, beta, out, cr,
                       threads if parallel else 1)
    if min(m, n) < _MIN_SIDE:
        return _numpy(a, b, out, accumulate)
    ag = a.strides[0] if a.ndim == 3 else 0
    bg = b.strides[0] if b.ndim == 3 else 0
    cg = out.strides[0] if out.ndim == 3 else 0
    if parallel:
        fn = products.parallel_call
        split = -(-threads // g) if g < threads else 1
        by_rows = int(m >= split * _MIN_BAND or m >= n)
    else:
        fn, split, by_rows = products.serial, 1, 1
    fn(g * split, split, by_rows, m, n, k, a.ctypes.data, ag, ar, ta, lda, b.ctypes.data,
       bg, bc, tb, ldb, beta, out.ctypes.data, cg, cr)
    return None


def _vector(m, n, k, a, ta, lda, b, tb, ldb, beta, out, cr, parts):
    """A single matrix-vector product, m == 1 (row times matrix) or n == 1
    (matrix times column), as SGEMV over the stored matrix."""
    if m == 1:      # out row (n) = b^T a: b is the matrix, a's row the vector
        trans, rows, cols = (_TRANS, k, n) if tb == _NO_TRANS else (_NO_TRANS, n, k)
        step = 4 if tb == _NO_TRANS else ldb * 4
        matrix, ld = b, ldb
        vector, inc = a, (1 if ta == _NO_TRANS else lda)
        inc_out = 1
    else:           # out column (m) = a b: a is the matrix, b's column the vector
        trans, rows, cols = (_NO_TRANS, m, k) if ta == _NO_TRANS else (_TRANS, k, m)
        step = lda * 4 if ta == _NO_TRANS else 4
        matrix, ld = a, lda
        vector, inc = b, (ldb if tb == _NO_TRANS else 1)
        inc_out = cr // 4
    fn = vector_products.parallel_call if parts > 1 else vector_products.serial
    fn(parts, trans, rows, cols, matrix.ctypes.data, ld, step, vector.ctypes.data, inc, beta,
       out.ctypes.data, inc_out)


def _numpy(a, b, out, accumulate):
    if accumulate:
        out += a @ b
    else:
        np.matmul(a, b, out=out)
