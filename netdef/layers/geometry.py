"""Output-size arithmetic for sliding windows: the one home of Caffe's rules.

Convolution rounds down. Pooling rounds up by default (Caffe's historical
choice, kept so published nets keep their shapes) and then drops a last
window that would start in the padding only:

>>> conv_out_size(227, kernel=11, stride=4, pad=0)
55
>>> conv_out_size(27, kernel=5, stride=1, pad=2, dilation=1)
27
>>> conv_out_size(10, kernel=3, stride=1, pad=0, dilation=2)
6
>>> pool_out_size(55, kernel=3, stride=2, pad=0)
27
>>> pool_out_size(112, kernel=3, stride=2, pad=0)   # GoogLeNet pool1: ceil
56
>>> pool_out_size(112, kernel=3, stride=2, pad=0, ceil_mode=False)
55
>>> pool_out_size(5, kernel=2, stride=2, pad=1)     # last window clipped
3
>>> deconv_out_size(4, kernel=4, stride=2, pad=1)
8
"""
from __future__ import annotations


def conv_out_size(size: int, kernel: int, stride: int = 1, pad: int = 0,
                  dilation: int = 1) -> int:
    """floor((size + 2 pad - extent) / stride) + 1, extent = dilation (kernel - 1) + 1."""
    extent = dilation * (kernel - 1) + 1
    return (size + 2 * pad - extent) // stride + 1


def deconv_out_size(size: int, kernel: int, stride: int = 1, pad: int = 0,
                    dilation: int = 1) -> int:
    """The input size a convolution with these settings maps onto ``size``."""
    extent = dilation * (kernel - 1) + 1
    return stride * (size - 1) + extent - 2 * pad


def pool_out_size(size: int, kernel: int, stride: int = 1, pad: int = 0,
                  ceil_mode: bool = True) -> int:
    """Caffe pooling output size.

    ceil (default) or floor of (size + 2 pad - kernel) / stride, plus one;
    with padding, a last window starting at or beyond size + pad (entirely
    in the padding) is dropped.
    """
    span = size + 2 * pad - kernel
    if ceil_mode:
        out = -(-span // stride) + 1
    else:
        out = span // stride + 1
    if pad > 0 and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def canonical_axis(axis: int, ndim: int) -> int | None:
    """Python-style negative axis -> index, or None when out of range."""
    if -ndim <= axis < ndim:
        return axis % ndim if ndim else 0
    return None
