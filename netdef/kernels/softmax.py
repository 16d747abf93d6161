"""Softmax over the middle axis of x3 (outer, C, inner).

Per (outer, inner) position: subtract the maximum over C, exponentiate,
divide by the sum.  Work is split into (outer, block of inner) tasks so a
single image with a large spatial extent (FCN-style softmax) still uses
both cores; within a task the C loop is outermost so the inner loop runs
over contiguous memory. An inner axis of 1 (SSD's per-prior scores) is
a plain row-by-row pass instead.

Dtypes: x3/out3 float32 3-D C-contiguous.  out3 may be x3 (in place).
``softmax_backward`` takes the output y3 and the top diff dy3 the same way.
"""
from __future__ import annotations

import numpy as np

from netdef.kernels._jit import helper, kernel, parallel_kernel, prange

_BLOCK = 512


@helper
def _softmax_task(x3, o, j0, j1, out3, tmp):
    n_ch = x3.shape[1]
    # a small scratch row: first the running max, then the sum
    for j in range(j0, j1):
        tmp[j - j0] = x3[o, 0, j]
    for c in range(1, n_ch):
        for j in range(j0, j1):
            v = x3[o, c, j]
            t = tmp[j - j0]
            tmp[j - j0] = v if v > t else t  # a select, not a branch: vectorises
    for c in range(n_ch):
        for j in range(j0, j1):
            out3[o, c, j] = np.exp(x3[o, c, j] - tmp[j - j0])
    for j in range(j0, j1):
        tmp[j - j0] = 0.0
    for c in range(n_ch):
        for j in range(j0, j1):
            tmp[j - j0] += out3[o, c, j]
    for c in range(n_ch):
        for j in range(j0, j1):
            out3[o, c, j] /= tmp[j - j0]


@helper
def _softmax_rows(x2, r0, r1, out2):
    """Rows r0 .. r1-1 of x2 (rows, C), each softmaxed along its contiguous C."""
    n_ch = x2.shape[1]
    for r in range(r0, r1):
        src, dst = x2[r], out2[r]
        top = src[0]
        for c in range(1, n_ch):
            v = src[c]
            top = v if v > top else top
        total = np.float32(0.0)
        for c in range(n_ch):
            e = np.exp(src[c] - top)
            dst[c] = e
            total += e
        scale = np.float32(1.0) / total
        for c in range(n_ch):
            dst[c] *= scale


@parallel_kernel
def softmax(x3, out3):
    """out3 = exp(x3 - max_c x3) / sum_c exp(x3 - max_c x3), over axis 1."""
    outer, inner = x3.shape[0], x3.shape[2]
    if inner == 1:
        # SSD's per-prior softmax (8732 x 2, 1917 x 21): each row is contiguous,
        # so it is one short pass per row; through the strided tasks below a
        # row cost ~30 ns per element in loop set-up alone (0.57 ms for the
        # face detector's, measured)
        x2, out2 = x3.reshape(outer, x3.shape[1]), out3.reshape(outer, x3.shape[1])
        chunks = (outer + _BLOCK - 1) // _BLOCK
        for p in prange(chunks):
            _softmax_rows(x2, p * _BLOCK, min(outer, (p + 1) * _BLOCK), out2)
        return
    nblk = (inner + _BLOCK - 1) // _BLOCK
    # with a short inner axis (a few positions per row) a task takes several
    # outer rows, so that tasks and scratch rows stay few
    rows = max(1, _BLOCK // inner)
    groups = (outer + rows - 1) // rows
    for p in prange(groups * nblk):
        j0 = (p % nblk) * _BLOCK
        j1 = min(j0 + _BLOCK, inner)
        tmp = np.empty(j1 - j0, np.float32)
        first = (p // nblk) * rows
        for o in range(first, min(outer, first + rows)):
            _softmax_task(x3, o, j0, j1, out3, tmp)


@kernel
def softmax_backward(y3, dy3, dx3):
    """dx3 = y3 * (dy3 - sum_c dy3 * y3), over axis 1, y3 the softmax output.

    dx3 may be dy3 (an in-place Softmax: its top diff is its bottom diff).
    Serial, unlike the forward: it is memory-bound, runs only in training
    nets with a bare Softmax layer, and a parallel kernel costs seconds more
    to compile on first use.
    """
    outer, n_ch, inner = y3.shape
    # dot[j] = sum_c dy * y, complete before any dx is written: dx3 may be dy3
    dot = np.empty(inner, np.float32)
    for o in range(outer):
        dot[:] = 0.0
        for c in range(n_ch):
            for j in range(inner):
                dot[j] += dy3[o, c, j] * y3[o, c, j]
        for c in range(n_ch):
            for j in range(inner):
                dx3[o, c, j] = y3[o, c, j] * (dy3[o, c, j] - dot[j])
