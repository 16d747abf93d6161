"""Tiny dummy arguments for each kernel, with exactly the documented types.

Used by ``netdef.kernels.warmup``; the types here are the contract (float32
C-contiguous arrays, int64 index arrays, Python int and float scalars), so a
layer calling a kernel the documented way reuses the warmed-up signature.
"""
from __future__ import annotations

import numpy as np


def _f(*shape):
    return np.zeros(shape, np.float32)


def _i(*shape):
    return np.zeros(shape, np.int64)


def _flat1(nargs):
    return lambda: (_f(4),) * nargs


# geometry shared by the windowed kernels: 3x3 window, stride 1, pad 1, on 4x4
_G = (3, 3, 1, 1, 1, 1)  # kh, kw, sh, sw, ph, pw

_ARGS = {
    ("im2col", "im2col"): lambda: (_f(1, 2, 4, 4), 0, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4,
                                   _f(18, 16)),
    ("im2col", "col2im"): lambda: (_f(18, 16), 0, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4,
                                   _f(1, 2, 4, 4)),
    ("pooling", "max_pool_forward"): lambda: (_f(1, 2, 4, 4), *_G, _f(1, 2, 4, 4),
                                              _i(1, 2, 4, 4)),
    ("pooling", "max_pool_forward_values"): lambda: (_f(1, 2, 4, 4), *_G, _f(1, 2, 4, 4)),
    ("pooling", "max_pool_3x3_values"): lambda: (_f(1, 2, 4, 4), *_G[2:], _f(1, 2, 4, 4)),
    ("pooling", "max_pool_backward"): lambda: (_f(1, 2, 4, 4), _i(1, 2, 4, 4), _f(1, 2, 4, 4)),
    ("pooling", "ave_pool_forward"): lambda: (_f(1, 2, 4, 4), *_G, _f(1, 2, 4, 4)),
    ("pooling", "ave_pool_backward"): lambda: (_f(1, 2, 4, 4), *_G, _f(1, 2, 4, 4)),
    ("pooling", "global_ave_pool"): lambda: (_f(2, 16), _f(2)),
    ("lrn", "lrn_across_forward"): lambda: (_f(1, 3, 2, 2), 3, 1e-4, 0.75, 1.0,
                                            _f(1, 3, 2, 2), _f(1, 3, 2, 2)),
    ("lrn", "lrn_across_backward"): lambda: (_f(1, 3, 2, 2), _f(1, 3, 2, 2),
                                             np.ones((1, 3, 2, 2), np.float32),
                                             _f(1, 3, 2, 2), 3, 1e-4, 0.75, _f(1, 3, 2, 2)),
    ("lrn", "lrn_within_forward"): lambda: (_f(1, 3, 2, 2), 3, 1e-4, 0.75,
                                            _f(1, 3, 2, 2), _f(1, 3, 2, 2)),
    ("lrn", "lrn_within_backward"): lambda: (_f(1, 3, 2, 2), _f(1, 3, 2, 2),
                                             np.ones((1, 3, 2, 2), np.float32),
                                             _f(1, 3, 2, 2), 3, 1e-4, 0.75, _f(1, 3, 2, 2)),
    ("elementwise", "relu"): lambda: (_f(4), 0.0, _f(4)),
    ("elementwise", "relu_backward"): lambda: (_f(4), _f(4), 0.0, _f(4)),
    ("elementwise", "bias_relu"): lambda: (_f(2, 3), _f(2), 0.0),
    ("elementwise", "relu6"): lambda: (_f(4), 0.0, _f(4)),
    ("elementwise", "relu6_backward"): lambda: (_f(4), _f(4), 0.0, _f(4)),
    ("elementwise", "sigmoid"): _flat1(2),
    ("elementwise", "sigmoid_backward"): _flat1(3),
    ("elementwise", "tanh"): _flat1(2),
    ("elementwise", "tanh_backward"): _flat1(3),
    ("elementwise", "elu"): lambda: (_f(4), 1.0, _f(4)),
    ("elementwise", "elu_backward"): lambda: (_f(4), _f(4), _f(4), 1.0, _f(4)),
    ("elementwise", "absval"): _flat1(2),
    ("elementwise", "absval_backward"): _flat1(3),
    ("elementwise", "power"): lambda: (_f(4), 2.0, 1.0, 0.0, _f(4)),
    ("elementwise", "power_backward"): lambda: (_f(4), _f(4), 2.0, 1.0, 0.0, _f(4)),
    ("elementwise", "exp_base"): lambda: (_f(4), 1.0, 1.0, 0.0, _f(4)),
    ("elementwise", "log_base"): lambda: (np.ones(4, np.float32), 1.0, 1.0, 0.0, _f(4)),
    ("elementwise", "log_backward"): lambda: (np.ones(4, np.float32), _f(4), 1.0, 1.0, 0.0,
                                              _f(4)),
    ("elementwise", "bnll"): _flat1(2),
    ("elementwise", "bnll_backward"): _flat1(3),
    ("elementwise", "threshold"): lambda: (_f(4), 0.0, _f(4)),
    ("elementwise", "clip"): lambda: (_f(4), -1.0, 1.0, _f(4)),
    ("elementwise", "clip_backward"): lambda: (_f(4), _f(4), -1.0, 1.0, _f(4)),
    ("elementwise", "swish"): lambda: (_f(4), 1.0, _f(4)),
    ("elementwise", "swish_backward"): lambda: (_f(4), _f(4), 1.0, _f(4)),
    ("elementwise", "prelu"): lambda: (_f(1, 2, 3), _f(2), _f(1, 2, 3)),
    ("elementwise", "prelu_backward"): lambda: (_f(1, 2, 3), _f(1, 2, 3), _f(2), _f(1, 2, 3),
                                                _f(2)),
    ("elementwise", "eltwise_sum"): lambda: (_f(4), _f(4), 1.0),
    ("elementwise", "eltwise_sum_pair"): lambda: (_f(4), 1.0, _f(4), 1.0, _f(4)),
    ("elementwise", "eltwise_prod"): _flat1(2),
    ("elementwise", "eltwise_max_pair"): lambda: (_f(4), _f(4), _f(4), _i(4)),
    ("elementwise", "eltwise_max"): lambda: (_f(4), _f(4), _i(4), 2),
    ("elementwise", "eltwise_max_backward"): lambda: (_f(4), _i(4), 0, _f(4)),
    ("normalization", "channel_affine"): lambda: (_f(1, 2, 3), _f(2), _f(2), _f(1, 2, 3)),
    ("normalization", "channel_affine_relu"): lambda: (_f(1, 2, 3), _f(2), _f(2), 1,
                                                       np.float32(0.0), _f(1, 2, 3)),
    ("normalization", "channel_sum_affine_relu"): lambda: (_f(1, 2, 3), 1.0, _f(1, 2, 3), 1.0,
                                                           _f(2), _f(2), 1, np.float32(0.0),
                                                           _f(1, 2, 3)),
    ("normalization", "channel_mean_var"): lambda: (_f(1, 2, 3), _f(2), _f(2)),
    ("normalization", "channel_sums"): lambda: (_f(1, 2, 3), _f(1, 2, 3), _f(2), _f(2)),
    ("normalization", "channel_affine_pair"): lambda: (_f(1, 2, 3), _f(2), _f(1, 2, 3),
                                                       _f(2), _f(2), _f(1, 2, 3)),
    ("normalization", "mvn_forward"): lambda: (_f(2, 3), 1, 1e-9, _f(2, 3), _f(2)),
    ("normalization", "mvn_backward"): lambda: (_f(2, 3), _f(2, 3),
                                                np.ones(2, np.float32), 1, _f(2, 3)),
    ("softmax", "softmax"): lambda: (_f(1, 3, 2), _f(1, 3, 2)),
    ("softmax", "softmax_backward"): lambda: (_f(1, 3, 2), _f(1, 3, 2), _f(1, 3, 2)),
    ("detection", "nms_keep"): lambda: (_f(3, 4), _i(3), 0.45, 1.0, _i(3)),
    ("depthwise", "depthwise_forward"): lambda: (_f(1, 2, 4, 4), _f(2, 3, 3), _f(2), 3, 3,
                                                1, 1, 1, 1, 1, 1, 0, 0.0, _f(1, 2, 4, 4)),
    ("depthwise", "depthwise_backward_data"): lambda: (_f(1, 2, 4, 4), _f(2, 3, 3), 3, 3,
                                                      1, 1, 1, 1, 1, 1, _f(1, 2, 4, 4)),
    ("depthwise", "depthwise_backward_weights"): lambda: (_f(1, 2, 4, 4), _f(1, 2, 4, 4),
                                                         3, 3, 1, 1, 1, 1, 1, 1,
                                                         _f(2, 3, 3)),
    # a 4x4 output with pad 1: one tile per image
    ("winograd", "winograd_input"): lambda: (_f(1, 2, 4, 4), 0, 1, 1, 1, 1, _f(36, 1, 2)),
    ("winograd", "winograd_output"): lambda: (_f(36, 1, 2), 0, _f(2), 0, 0.0, 0, 1, 1,
                                              _f(1, 2, 4, 4)),
}


# the GEMM kernels take addresses: this buffer outlives their warm-up calls
_GEMM_BUFFER = _f(12)


def _gemm_args(vector: bool) -> tuple:
    """A 2x2 product (or a 2x2 matrix times a 2-vector) inside _GEMM_BUFFER,
    after registering the BLAS symbols the kernels link to."""
    from netdef.kernels import gemm

    gemm.available()
    a = _GEMM_BUFFER.ctypes.data
    beta = np.float32(0.0)
    if vector:      # parts, trans, rows, cols, s, ld, step, x, incx, beta, y, incy
        return (1, 111, 2, 2, a, 2, 8, a + 16, 1, beta, a + 32, 1)
    # tasks, split, by_rows, m, n, k, a, ag, ar, ta, lda, b, bg, bc, tb, ldb, beta, c, cg, cr
    return (1, 1, 1, 2, 2, 2, a, 0, 8, 111, 2, a + 16, 0, 4, 111, 2, beta, a + 32, 0, 8)


def _with_blas(make):
    """Dummy arguments from ``make()`` for a kernel that calls the BLAS of
    kernels.gemm, after registering its symbols (which must precede the
    kernel's compile or cache load)."""
    def args() -> tuple:
        from netdef.kernels import gemm

        gemm.available()
        return make()
    return args


# a 3x3 convolution of one 4x4 plane into two, in bands of two rows
_ARGS[("im2col", "conv_bands")] = _with_blas(lambda: (
    _f(1, 1, 4, 4), _f(2, 9), _f(2), 1, np.float32(0.0), 3, 3, 1, 1, 1, 1, 1, 1, 1, 2,
    _f(1, 2, 16)))
# one 4x4 tile of a 2-channel image into 2 channels, one worker
_ARGS[("winograd", "winograd_conv")] = _with_blas(lambda: (
    _f(1, 2, 4, 4), 0, 1, 1, 1, 1, 1, 1, _f(36, 2, 2), _f(2), 0, 0.0, _f(1, 2, 4, 4),
    _f(1, 36, 1, 2), _f(1, 36, 1, 2)))
# a 1x1 convolution of two 16-position planes into two, one block
_ARGS[("im2col", "pointwise_bands")] = _with_blas(lambda: (
    _f(1, 2, 16), _f(2, 2), _f(2), 1, np.float32(0.0), 2, 16, _f(1, 2, 16)))
# that 1x1 convolution on a 4x4 plane, then a 3x3 depthwise one, one band
_ARGS[("depthwise", "pointwise_depthwise")] = _with_blas(lambda: (
    _f(1, 2, 4, 4), _f(2, 2), _f(2), 1, np.float32(0.0), _f(2, 3, 3), _f(2), 3, 3,
    1, 1, 1, 1, 1, 1, 1, np.float32(0.0), 8, _f(1, 2, 4, 4)))


_ARGS[("gemm", "products")] = lambda: _gemm_args(False)
_ARGS[("gemm", "vector_products")] = lambda: _gemm_args(True)


def dummy_args(module: str, name: str) -> tuple:
    """Fresh dummy arguments for one kernel."""
    return _ARGS[(module, name)]()
