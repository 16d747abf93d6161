"""Convolution layers: Convolution, Deconvolution, Im2col, and the window
geometry and column buffers they share with pooling (layers/pooling.py).

All work on (N, C, H, W) float32 blobs (for convolution, the channel axis
may be moved with ``axis``; exactly two spatial axes must follow it).
Output sizes come from ``netdef.layers.geometry`` only. Kernels are imported
inside ``forward`` so that shape-only tools never import Numba.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from netdef.kernels import matmul
from netdef.layers.base import Layer, filler_param, register
from netdef.layers.geometry import conv_out_size, deconv_out_size



@dataclass(frozen=True)
class Window:
    """Sliding-window geometry of a 2-D convolution or pooling."""

    kh: int
    kw: int
    sh: int = 1
    sw: int = 1
    ph: int = 0
    pw: int = 0
    dh: int = 1
    dw: int = 1

    @property
    def is_1x1(self) -> bool:
        # The input plane is then the column matrix itself: no im2col.
        return (self.kh, self.kw, self.sh, self.sw, self.ph, self.pw) == (1, 1, 1, 1, 0, 0)

    @property
    def kernel_text(self) -> str:
        text = f"{self.kh}x{self.kw}"
        if (self.dh, self.dw) != (1, 1):
            eh, ew = self.dh * (self.kh - 1) + 1, self.dw * (self.kw - 1) + 1
            text += f" (dilation {self.dh}x{self.dw}: extent {eh}x{ew})"
        return text

    def args(self) -> tuple[int, ...]:
        """(kh, kw, ph, pw, sh, sw, dh, dw): the order the im2col kernels take."""
        return self.kh, self.kw, self.ph, self.pw, self.sh, self.sw, self.dh, self.dw


def _pair(layer: Layer, msg, field: str, default: int | None) -> tuple[int, int]:
    """(h, w) from ``field`` (one value, or one per spatial axis) or from the
    2-D spellings ``<stem>_h``/``<stem>_w`` (kernel_size -> kernel_h)."""
    stem = field.removesuffix("_size")
    names = msg.DESCRIPTOR.fields_by_name
    h_name, w_name = f"{stem}_h", f"{stem}_w"
    if names[field].is_repeated:            # convolution: one value per axis allowed
        values = list(getattr(msg, field))
    else:                                   # pooling: a single value
        values = [getattr(msg, field)] if msg.HasField(field) else []
    if h_name in names and (msg.HasField(h_name) or msg.HasField(w_name)):
        if values:
            raise layer.config_error(f"give {field} or {h_name}/{w_name}, not both")
        if stem != "pad" and not (msg.HasField(h_name) and msg.HasField(w_name)):
            raise layer.config_error(f"{h_name} and {w_name} must be given together")
        return getattr(msg, h_name), getattr(msg, w_name)
    if not values:
        if default is None:
            raise layer.config_error(f"no {stem} size given",
                                     hint=f"set {field}, or {h_name} and {w_name}")
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise layer.config_error(f"{field} has {len(values)} values; give one, or one per "
                             "spatial axis (2)")


def read_window(layer: Layer, msg, dilation: bool = True) -> Window:
    """Validated kernel/stride/pad(/dilation) of a convolution or pooling param."""
    kh, kw = _pair(layer, msg, "kernel_size", None)
    sh, sw = _pair(layer, msg, "stride", 1)
    ph, pw = _pair(layer, msg, "pad", 0)
    dh, dw = _pair(layer, msg, "dilation", 1) if dilation else (1, 1)
    for what, (a, b) in (("kernel size", (kh, kw)), ("stride", (sh, sw)),
                         ("dilation", (dh, dw))):
        if a <= 0 or b <= 0:
            raise layer.config_error(f"{what} must be positive, got {a}x{b}")
    return Window(kh, kw, sh, sw, ph, pw, dh, dw)


_SCRATCH = threading.local()

# Convolution runs a block of images per GEMM: their column matrices lie side
# by side, so the GEMM is wide, and the hand-overs between the Numba kernels'
# threads (im2col, col2im) and BLAS's own, which can stall for a scheduler
# tick when another process is busy (see kernels/_jit.py), happen once per
# block instead of once per image. A block holds enough images for a GEMM
# _GEMM_COLUMNS wide, as long as its column matrix stays under _COLUMN_LIMIT
# floats (the bound on scratch memory; one image alone may exceed it).
# Measured single-threaded, blocks cost no extra work over one image at a time
# (AlexNet's convolutions, batch 10, within +-10% CPU time at every size).
# Blocks of one image each (an 8 MiB limit), though their columns then stay
# in cache, made AlexNet at batch 10 about 10% slower in the benchmark's
# protocol (one forward after a pause; one run against three): ten times
# the hand-overs.
_GEMM_COLUMNS = 1 << 15
_COLUMN_LIMIT = 1 << 23          # floats: 32 MiB


# Inference convolutions whose whole-image column matrix is large run in bands
# of output rows instead (kernels.im2col.conv_bands): each band's columns are
# built, multiplied and biased while in cache. Bands of about _BAND_COLUMNS
# output positions, measured on 2 threads against im2col + one GEMM per
# image: the face detector's 7x7 first layer 3.8 to 2.5 ms, VGG's conv1_1
# 2.7 to 1.4, ResNet-50's conv1 2.1 to 1.7, MobileNet v2's conv1 0.40 to
# 0.27, AlexNet's conv1 1.8 to 1.6; narrower bands lose on GEMM efficiency
# when the column depth is large (GoogLeNet's 5x5 layers: 1 row of 28 took
# 1.5x im2col's time, 8 rows 0.9x). Below _BAND_MIN_VALUES column entries
# per image the matrix stays in cache anyway.
_BAND_COLUMNS = 448
_BAND_MIN_VALUES = 1 << 18


def column_bands(conv) -> int:
    """Output rows per band for ``forward_bands``, or 0 where ``conv`` should
    keep im2col + GEMM (small column matrix, 1x1, depthwise, or no pooled
    BLAS for kernels.im2col.conv_bands to call)."""
    from netdef.kernels import gemm

    (oh, ow) = conv.out_hw
    kdim = conv.channels // conv.group * conv.win.kh * conv.win.kw
    if (conv.win.is_1x1 or getattr(conv, "depthwise", False) or oh < 2
            or kdim * oh * ow < _BAND_MIN_VALUES or not gemm.available()):
        return 0
    return max(1, min(round(_BAND_COLUMNS / ow), -(-oh // 2)))


# A pointwise block of output (channels x positions) for pointwise_bands: about
# 128 KiB, to stay in a core's L2 cache between its SGEMM and its bias pass
_POINTWISE_BLOCK = 1 << 15
# but at least this many positions wide: narrower SGEMMs lost more than the
# bias pass saved (MobileNet v1's 512x512 layer on 14x14 in blocks of 64
# positions: 0.58 -> 0.85 ms; ResNet-50's 2048x512 on 7x7 in 16: 0.75 -> 1.10)
_POINTWISE_MIN_COLS = 256


def pointwise_blocks(conv, threads: int) -> tuple[int, int] | None:
    """(rows, cols) of the blocks kernels.im2col.pointwise_bands computes
    for a 1x1, stride-1, ungrouped ``conv``, or None where it should keep
    its whole-map GEMM (maps under 16 positions, or no pooled BLAS). The
    blocks are full-height bands of positions; on small maps, with too few
    of them to keep ``threads`` busy, they are split into bands of output
    channels too."""
    from netdef.kernels import gemm

    win, (oh, ow) = conv.win, conv.out_hw
    plane, m = oh * ow, conv.num_output
    if (not win.is_1x1 or conv.group != 1 or conv.axis != 1
            or getattr(conv, "depthwise", False) or plane < 16 or not gemm.available()):
        return None
    # bands of about equal width, a multiple of 16 positions, as many per
    # image as a multiple of the threads (three bands on two threads: 2:1)
    per_image = -(-plane // max(_POINTWISE_MIN_COLS, _POINTWISE_BLOCK // m))
    if per_image > 1:
        per_image = -(-per_image // threads) * threads
    width = -(-plane // per_image)
    cols = min(plane, -(-width // 16) * 16)
    bands = conv.num * -(-plane // cols)
    rows = m
    if bands < 2 * threads:
        rows = max(16, -(-m // -(-2 * threads // bands)))
    return rows, cols


def forward_pointwise(conv, blocks: tuple[int, int], relu_slope, bottoms, tops) -> None:
    """Forward of a 1x1 ``conv`` (with a bias) through
    kernels.im2col.pointwise_bands in ``blocks`` (``pointwise_blocks``)."""
    from netdef.kernels.im2col import pointwise_bands

    plane = conv.out_hw[0] * conv.out_hw[1]
    w = conv.blobs[0].data.reshape(conv.num_output, conv.channels)
    relu = 0 if relu_slope is None else 1
    slope = np.float32(0.0 if relu_slope is None else relu_slope)
    for bottom, top in zip(bottoms, tops, strict=True):
        # the kernel addresses x and y as whole C-contiguous arrays
        x = np.ascontiguousarray(bottom.data).reshape(conv.num, conv.channels, plane)
        y = top.data.reshape(conv.num, conv.num_output, plane)
        out = y if y.flags.c_contiguous else np.empty(y.shape, np.float32)
        pointwise_bands(x, w, conv.blobs[1].data, relu, slope, *blocks, out)
        if out is not y:
            y[...] = out


def forward_bands(conv, band: int, relu_slope, bottoms, tops) -> None:
    """Forward of ``conv`` (with a bias) through kernels.im2col.conv_bands,
    ``band`` output rows per task; ``relu_slope`` None for no ReLU."""
    from netdef.kernels.im2col import conv_bands

    (h, wd), (oh, ow) = conv.in_hw, conv.out_hw
    w = conv.blobs[0].data.reshape(conv.num_output, -1)
    bias = conv.blobs[1].data
    relu = 0 if relu_slope is None else 1
    slope = np.float32(0.0 if relu_slope is None else relu_slope)
    for bottom, top in zip(bottoms, tops, strict=True):
        x = bottom.data.reshape(conv.num, conv.channels, h, wd)
        y = top.data.reshape(conv.num, conv.num_output, oh * ow)
        conv_bands(x, w, bias, relu, slope, *conv.win.args(), conv.group, band, y)


def _scratch(name: str, size: int) -> np.ndarray:
    """A flat float32 work array of this thread, at least ``size`` long; it only grows."""
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None:
        bufs = _SCRATCH.bufs = {}
    buf = bufs.get(name)
    if buf is None or buf.size < size:
        buf = bufs[name] = np.empty(size, np.float32)
    return buf[:size]


def column_buffer(rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) float32 work matrix shared by every convolution of this thread.

    Layers run one after another, so one buffer as large as the largest
    column matrix serves them all: far less memory than one per layer (tens
    of MB for ResNet-50), and it stays warm in cache and in the page tables.
    It only grows, so after the first forward no call allocates. Taking it
    forgets which convolution's columns it held (see ``_ConvBase``).
    """
    _SCRATCH.col_owner = None
    return _scratch("col", rows * cols).reshape(rows, cols)


def _gather(src: np.ndarray, n0: int, b: int, name: str) -> np.ndarray:
    """Images n0 .. n0+b-1 of ``src`` (N, C, S) side by side as a (C, b*S)
    matrix: a view for one image, else a copy into scratch ``name``."""
    if b == 1:
        return src[n0]
    c, s = src.shape[1:]
    buf = _scratch(name, c * b * s).reshape(c, b, s)
    np.copyto(buf, src[n0:n0 + b].transpose(1, 0, 2))
    return buf.reshape(c, b * s)


def _scatter(mat: np.ndarray, dst: np.ndarray, n0: int, b: int, bias=None) -> None:
    """The inverse of _gather: dst[n0:n0+b] (b, C, S) = mat (C, b*S) (+ bias per C)."""
    c, s = dst.shape[1:]
    blocks = mat.reshape(c, b, s).transpose(1, 0, 2)
    if bias is None:
        np.copyto(dst[n0:n0 + b], blocks)
    else:
        np.add(blocks, bias.reshape(c, 1), out=dst[n0:n0 + b])


def _block_size(num: int, rows: int, plane: int) -> int:
    """Images per GEMM block (see _GEMM_COLUMNS), evened out over the batch;
    ``rows`` x ``plane`` is the largest scratch matrix one image needs."""
    want = -(-_GEMM_COLUMNS // plane)
    cap = max(1, _COLUMN_LIMIT // max(rows * plane, 1))
    b = max(1, min(num, want, cap))
    blocks = -(-num // b)
    return -(-num // blocks)


def _conv_axis(layer: Layer, msg, shape: tuple) -> int:
    axis = layer.canonical_axis(msg.axis, len(shape), "channel axis")
    if len(shape) - axis - 1 != 2:
        raise layer.config_error(
            f"only 2-D convolution is supported: the bottom has {len(shape) - axis - 1} "
            f"spatial axes after channel axis {axis}; bottoms: {layer.bottoms_text()}")
    return axis


def read_conv_geometry(layer: Layer, cp, bottoms, tops) -> tuple:
    """What every convolution reads first: one top per bottom, the channel
    axis and the window (set on the layer as ``axis`` and ``win``). Returns
    bottom 0's shape."""
    if len(tops) != len(bottoms):
        raise layer.config_error(f"needs one top per bottom, got {len(bottoms)} bottoms "
                                 f"and {len(tops)} tops")
    shape = bottoms[0].shape
    layer.axis = _conv_axis(layer, cp, shape)
    layer.win = read_window(layer, cp)
    return shape


class _ConvBase(Layer):
    """Parameters, weights and shape rules shared by Convolution and Deconvolution.

    Several bottoms of one shape may be given; each gets its own top and
    all use the same weights (Caffe's rule). Images are the product of the
    axes before ``axis``. Weight and bias fillers default to constant 0.

    Work is done per block of images (``_block_size``): one GEMM per group
    and block, forward and backward. The column matrix of the last block of
    the last bottom stays in the thread's column buffer after forward;
    backward, which visits blocks in reverse, uses it instead of unfolding
    that block again when nothing has taken the buffer in between.
    """

    num_bottoms = (1, None)
    num_tops = (1, None)
    kind = "conv"

    def setup(self, bottoms, tops):
        cp = self.param.convolution_param
        shape = read_conv_geometry(self, cp, bottoms, tops)
        self.channels, self.num_output, self.group = shape[self.axis], cp.num_output, cp.group
        if self.num_output <= 0:
            raise self.config_error("num_output must be set to a positive number",
                                    hint="convolution_param { num_output: ... }")
        if self.group <= 0:
            raise self.config_error(f"group must be positive, got {self.group}")
        if self.channels % self.group:
            raise self.config_error(
                f"{self.channels} input channels are not divisible by group {self.group}; "
                f"bottoms: {self.bottoms_text()}")
        if self.num_output % self.group:
            raise self.config_error(
                f"num_output {self.num_output} is not divisible by group {self.group}")
        self.bias_term = cp.bias_term
        self.add_param(self.weight_shape(), filler_param(cp, "weight_filler"))
        if self.bias_term:
            self.add_param((self.num_output,), filler_param(cp, "bias_filler"))
        self._token = object()      # names this layer's columns in the shared buffer

    def weight_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        raise NotImplementedError

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.require(all(b.shape == shape for b in bottoms),
                     "every bottom must have the same shape")
        self.require(len(shape) == self.axis + 3,
                     f"expects {self.axis + 3} axes (channel axis {self.axis} + 2 spatial)")
        self.require(shape[self.axis] == self.channels,
                     f"bottom has {shape[self.axis]} channels but the weights expect "
                     f"{self.channels}")
        h, w = shape[self.axis + 1:]
        oh, ow = self.output_hw(h, w)
        win = self.win
        self.require(oh > 0 and ow > 0,
                     f"output would be {oh}x{ow}: kernel {win.kernel_text}, stride "
                     f"{win.sh}x{win.sw} and pad {win.ph}x{win.pw} do not fit the "
                     f"{h}x{w} input")
        self.num = math.prod(shape[:self.axis])
        self.in_hw, self.out_hw = (h, w), (oh, ow)
        for top in tops:
            top.reshape(shape[:self.axis] + (self.num_output, oh, ow))

    def blocks(self, block: int, reverse: bool = False) -> list[tuple[int, int]]:
        """(first image, image count) of every block of the batch."""
        out = [(n0, min(block, self.num - n0)) for n0 in range(0, self.num, block)]
        return out[::-1] if reverse else out

    def add_bias(self, y: np.ndarray) -> None:
        """y (..., num_output, spatial) += bias per channel: one block right after
        its GEMM (still in cache), or a whole batch."""
        if self.bias_term:
            b = self.blobs[1].data.reshape(self.num_output, 1)
            np.add(y, b, out=y)

    def bias_backward(self, tops) -> None:
        """bias diff += top diff summed over images and positions, every top."""
        if self.bias_term and self.param_propagate_down[1]:
            m = self.num_output
            for top in tops:
                self.blobs[1].diff[...] += top.diff.reshape(self.num, m, -1).sum(axis=(0, 2))

    def add_weight_grad(self, a: np.ndarray, b: np.ndarray) -> None:
        """weight diff (viewed as a @ b's (g, p, q) shape) += a @ b, summed
        in place by the GEMM (beta = 1): no product buffer."""
        dw = self.blobs[0].diff.view()
        dw.shape = (a.shape[0], a.shape[1], b.shape[2])      # a view, never a copy
        matmul(a, b, dw, accumulate=True)

    def remember_columns(self, index: int, x: np.ndarray, n0: int, b: int) -> None:
        _SCRATCH.col_owner = (self._token, index, n0, b, x.ctypes.data, x.shape)

    def has_columns(self, index: int, x: np.ndarray, n0: int, b: int) -> bool:
        owner = getattr(_SCRATCH, "col_owner", None)
        return owner == (self._token, index, n0, b, x.ctypes.data, x.shape)


@register("Convolution")
class Convolution(_ConvBase):
    """2-D convolution, y = W * x + b, with groups, dilation, stride and padding.

    Output size floor((H + 2p - (d(k-1)+1)) / s) + 1 per axis. Weight
    (num_output, C/group, kh, kw), bias (num_output,). Forward: per block
    of images, im2col of the block (for 1x1, stride 1, pad 0 the input
    planes are the columns) and one GEMM per group. Backward per block and
    group: dW += dY cols^T, dcols = W^T dY, then col2im; bias diff = sum of
    dY over images and positions. MACs: top count x (C/group) x kh x kw,
    per bottom.
    """

    # Negative slope of a ReLU the fusion pass folded in (its copy of the
    # layer sets it): applied with the bias, in the same pass over the output.
    relu_slope = None

    def setup(self, bottoms, tops):
        super().setup(bottoms, tops)
        # group == channels: direct depthwise kernels (layers/depthwise.py), not GEMMs
        self.depthwise = self.group == self.channels > 1

    def _finish(self, y2: np.ndarray) -> None:
        """Bias (and the fused ReLU) of one image's output, y2 (M, OH*OW)."""
        if self.relu_slope is None:
            self.add_bias(y2)
            return
        from netdef.kernels.elementwise import bias_relu

        bias = (self.blobs[1].data if self.bias_term
                else np.zeros(self.num_output, np.float32))
        bias_relu(y2, bias, float(self.relu_slope))

    def weight_shape(self):
        return (self.num_output, self.channels // self.group, self.win.kh, self.win.kw)

    def output_hw(self, h, w):
        win = self.win
        return (conv_out_size(h, win.kh, win.sh, win.ph, win.dh),
                conv_out_size(w, win.kw, win.sw, win.pw, win.dw))

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        (oh, ow) = self.out_hw
        # per image: columns C*kh*kw (the "in" copy for 1x1) and the output's copy, M
        rows = max(self.channels * self.win.kh * self.win.kw, self.num_output)
        self.block = _block_size(self.num, rows, oh * ow)

    def _columns(self, x: np.ndarray, n0: int, b: int) -> np.ndarray:
        """The (C*kh*kw, b*OH*OW) column matrix of images n0 .. n0+b-1 of x."""
        (h, wd), (oh, ow) = self.in_hw, self.out_hw
        if self.win.is_1x1:
            return _gather(x.reshape(self.num, self.channels, h * wd), n0, b, "in")
        from netdef.kernels.im2col import im2col

        col = column_buffer(self.channels * self.win.kh * self.win.kw, b * oh * ow)
        im2col(x, n0, *self.win.args(), oh, ow, col)
        return col

    def forward(self, bottoms, tops):
        if self.depthwise:
            from netdef.layers import depthwise
            return depthwise.forward(self, bottoms, tops)
        g, m = self.group, self.num_output
        kdim = self.channels // g * self.win.kh * self.win.kw     # GEMM depth per group
        w = self.blobs[0].data.reshape(g, m // g, kdim)
        bias = self.blobs[1].data if self.bias_term else None
        (h, wd), (oh, ow) = self.in_hw, self.out_hw
        plane = oh * ow
        for i, (bottom, top) in enumerate(zip(bottoms, tops, strict=True)):
            x = bottom.data.reshape(self.num, self.channels, h, wd)
            y = top.data.reshape(self.num, m, plane)
            for n0, b in self.blocks(self.block):
                cols = self._columns(x, n0, b).reshape(g, kdim, b * plane)
                if b == 1:
                    matmul(w, cols, out=y[n0].reshape(g, m // g, plane))
                    self._finish(y[n0])
                else:
                    out = _scratch("out", m * b * plane).reshape(g, m // g, b * plane)
                    matmul(w, cols, out=out)
                    if self.relu_slope is None:
                        _scatter(out.reshape(m, b * plane), y, n0, b, bias)
                    else:
                        _scatter(out.reshape(m, b * plane), y, n0, b)
                        for k in range(n0, n0 + b):
                            self._finish(y[k])
                if not self.win.is_1x1:
                    self.remember_columns(i, x, n0, b)

    def backward(self, tops, propagate_down, bottoms):
        if self.depthwise:
            from netdef.layers import depthwise
            return depthwise.backward(self, tops, propagate_down, bottoms)
        self.bias_backward(tops)
        want_w = self.param_propagate_down[0]
        g, m, c = self.group, self.num_output, self.channels
        kdim = c // g * self.win.kh * self.win.kw
        wt = self.blobs[0].data.reshape(g, m // g, kdim).transpose(0, 2, 1)
        (h, wd), (oh, ow) = self.in_hw, self.out_hw
        plane = oh * ow
        for i in reversed(range(len(bottoms))):
            if not (want_w or propagate_down[i]):
                continue
            x = bottoms[i].data.reshape(self.num, c, h, wd)
            dy = tops[i].diff.reshape(self.num, m, plane)
            dx = bottoms[i].diff.reshape(self.num, c, h * wd)
            for n0, b in self.blocks(self.block, reverse=True):
                dyt = _gather(dy, n0, b, "out").reshape(g, m // g, b * plane)
                if want_w:
                    if self.has_columns(i, x, n0, b):
                        cols = _scratch("col", g * kdim * b * plane)
                    else:
                        cols = self._columns(x, n0, b)
                    cols = cols.reshape(g, kdim, b * plane)
                    self.add_weight_grad(dyt, cols.transpose(0, 2, 1))
                if not propagate_down[i]:
                    continue
                if self.win.is_1x1 and b == 1:
                    matmul(wt, dyt, out=dx[n0].reshape(g, kdim, plane))
                    continue
                dcol = column_buffer(g * kdim, b * plane)
                matmul(wt, dyt, out=dcol.reshape(g, kdim, b * plane))
                if self.win.is_1x1:
                    _scatter(dcol, dx, n0, b)
                else:
                    from netdef.kernels.im2col import col2im

                    col2im(dcol, n0, *self.win.args(), oh, ow,
                           bottoms[i].diff.reshape(self.num, c, h, wd))

    def macs(self, bottoms, tops):
        win = self.win
        per_output = self.channels // self.group * win.kh * win.kw
        return sum(t.count for t in tops) * per_output


@register("Deconvolution")
class Deconvolution(_ConvBase):
    """Transposed convolution: the gradient of Convolution w.r.t. its input.

    Output size s(H - 1) + d(k - 1) + 1 - 2p per axis. Weight
    (C, num_output/group, kh, kw), bias (num_output,). Forward: per block
    of images, one GEMM W^T x per group into columns, then col2im (skipped
    for 1x1). Backward: dcols = im2col(dY); dW += x dcols^T, dx = W dcols.
    MACs: bottom count x (num_output/group) x kh x kw, per bottom (Caffe's
    deconvolution cost).
    """

    def weight_shape(self):
        return (self.channels, self.num_output // self.group, self.win.kh, self.win.kw)

    def output_hw(self, h, w):
        win = self.win
        return (deconv_out_size(h, win.kh, win.sh, win.ph, win.dh),
                deconv_out_size(w, win.kw, win.sw, win.pw, win.dw))

    def reshape(self, bottoms, tops):
        super().reshape(bottoms, tops)
        h, w = self.in_hw
        # per image: columns M*kh*kw and the input's copy, C
        rows = max(self.num_output * self.win.kh * self.win.kw, self.channels)
        self.block = _block_size(self.num, rows, h * w)

    def forward(self, bottoms, tops):
        g, m, c = self.group, self.num_output, self.channels
        rows = m // g * self.win.kh * self.win.kw             # column rows per group
        wt = self.blobs[0].data.reshape(g, c // g, rows).transpose(0, 2, 1)
        bias = self.blobs[1].data if self.bias_term else None
        (h, wd), (oh, ow) = self.in_hw, self.out_hw
        hw = h * wd
        for bottom, top in zip(bottoms, tops, strict=True):
            x = bottom.data.reshape(self.num, c, hw)
            y = top.data.reshape(self.num, m, oh, ow)
            for n0, b in self.blocks(self.block):
                xg = _gather(x, n0, b, "in").reshape(g, c // g, b * hw)
                if self.win.is_1x1 and b == 1:
                    matmul(wt, xg, out=y[n0].reshape(g, rows, hw))
                    self.add_bias(y[n0].reshape(m, hw))
                    continue
                col = column_buffer(g * rows, b * hw)
                matmul(wt, xg, out=col.reshape(g, rows, b * hw))
                if self.win.is_1x1:
                    _scatter(col, y.reshape(self.num, m, hw), n0, b, bias)
                    continue
                from netdef.kernels.im2col import col2im

                col2im(col, n0, *self.win.args(), h, wd, y)
                self.add_bias(y[n0:n0 + b].reshape(b, m, oh * ow))

    def backward(self, tops, propagate_down, bottoms):
        self.bias_backward(tops)
        want_w = self.param_propagate_down[0]
        g, m, c = self.group, self.num_output, self.channels
        rows = m // g * self.win.kh * self.win.kw
        w = self.blobs[0].data.reshape(g, c // g, rows)
        (h, wd), (oh, ow) = self.in_hw, self.out_hw
        hw = h * wd
        for i in reversed(range(len(bottoms))):
            if not (want_w or propagate_down[i]):
                continue
            dy = tops[i].diff.reshape(self.num, m, oh, ow)
            x = bottoms[i].data.reshape(self.num, c, hw)
            dx = bottoms[i].diff.reshape(self.num, c, hw)
            for n0, b in self.blocks(self.block, reverse=True):
                if self.win.is_1x1:
                    dcol = _gather(dy.reshape(self.num, m, hw), n0, b, "out")
                else:
                    from netdef.kernels.im2col import im2col

                    dcol = column_buffer(g * rows, b * hw)
                    im2col(dy, n0, *self.win.args(), h, wd, dcol)
                dcol = dcol.reshape(g, rows, b * hw)
                if want_w:
                    xg = _gather(x, n0, b, "in").reshape(g, c // g, b * hw)
                    self.add_weight_grad(xg, dcol.transpose(0, 2, 1))
                if not propagate_down[i]:
                    continue
                if b == 1:
                    matmul(w, dcol, out=dx[n0].reshape(g, c // g, hw))
                else:
                    out = _scratch("in", c * b * hw).reshape(g, c // g, b * hw)
                    matmul(w, dcol, out=out)
                    _scatter(out.reshape(c, b * hw), dx, n0, b)

    def macs(self, bottoms, tops):
        win = self.win
        per_input = self.num_output // self.group * win.kh * win.kw
        return sum(b.count for b in bottoms) * per_input


@register("Im2col")
class Im2col(Layer):
    """The column matrix of a convolution as a blob: (N, C*kh*kw, OH, OW).

    Reads convolution_param's geometry (kernel, stride, pad, dilation, axis);
    row (c*kh + i)*kw + j of each image holds tap (i, j) of channel c.
    Backward folds the top diff back with col2im (overlapping taps add up).
    """

    num_bottoms = 1
    num_tops = 1
    kind = "conv"

    def setup(self, bottoms, tops):
        cp = self.param.convolution_param
        self.axis = _conv_axis(self, cp, bottoms[0].shape)
        self.win = read_window(self, cp)

    def reshape(self, bottoms, tops):
        shape, win = bottoms[0].shape, self.win
        self.require(len(shape) == self.axis + 3,
                     f"expects {self.axis + 3} axes (channel axis {self.axis} + 2 spatial)")
        c, h, w = shape[self.axis:]
        oh = conv_out_size(h, win.kh, win.sh, win.ph, win.dh)
        ow = conv_out_size(w, win.kw, win.sw, win.pw, win.dw)
        self.require(oh > 0 and ow > 0, f"kernel {win.kernel_text} does not fit the "
                                        f"padded {h + 2 * win.ph}x{w + 2 * win.pw} input")
        self.dims = (math.prod(shape[:self.axis]), c, h, w, oh, ow)
        tops[0].reshape(shape[:self.axis] + (c * win.kh * win.kw, oh, ow))

    def forward(self, bottoms, tops):
        from netdef.kernels.im2col import im2col

        num, c, h, w, oh, ow = self.dims
        x = bottoms[0].data.reshape(num, c, h, w)
        y = tops[0].data.reshape(num, -1, oh * ow)
        for n in range(num):      # the top holds each image's columns apart
            im2col(x, n, *self.win.args(), oh, ow, y[n])

    def backward(self, tops, propagate_down, bottoms):
        if not propagate_down[0]:
            return
        from netdef.kernels.im2col import col2im

        num, c, h, w, oh, ow = self.dims
        dy = tops[0].diff.reshape(num, -1, oh * ow)
        dx = bottoms[0].diff.reshape(num, c, h, w)
        for n in range(num):
            col2im(dy[n], n, *self.win.args(), oh, ow, dx)
