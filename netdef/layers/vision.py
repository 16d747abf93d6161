"""Vision layers: Convolution, Deconvolution, Im2col, Pooling, LRN.

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

from netdef.layers.base import Layer, filler_param, register
from netdef.layers.geometry import conv_out_size, deconv_out_size, pool_out_size
from netdef.frontend.schema import pb

_POOL = pb.PoolingParameter


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


def column_buffer(rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) float32 work matrix shared by every convolution of this thread.

    Layers run one after another, so one buffer as large as the largest
    column matrix serves them all: far less memory than one per layer (tens
    of MB for ResNet-50), and it stays warm in cache and in the page tables.
    It only grows, so after the first forward no call allocates.
    """
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.size < rows * cols:
        buf = _SCRATCH.buf = np.empty(rows * cols, np.float32)
    return buf[:rows * cols].reshape(rows, cols)


def _conv_axis(layer: Layer, msg, shape: tuple) -> int:
    axis = layer.canonical_axis(msg.axis, len(shape), "channel axis")
    if len(shape) - axis - 1 != 2:
        raise layer.config_error(
            f"only 2-D convolution is supported: the bottom has {len(shape) - axis - 1} "
            f"spatial axes after channel axis {axis}; bottoms: {layer.bottoms_text()}")
    return axis


class _ConvBase(Layer):
    """Parameters, weights and shape rules shared by Convolution and Deconvolution.

    Several bottoms of one shape may be given; each gets its own top and
    all use the same weights (Caffe's rule). Images are the product of the
    axes before ``axis``. Weight and bias fillers default to constant 0.
    """

    num_bottoms = (1, None)
    num_tops = (1, None)
    kind = "conv"

    def setup(self, bottoms, tops):
        cp = self.param.convolution_param
        if len(tops) != len(bottoms):
            raise self.config_error(f"needs one top per bottom, got {len(bottoms)} bottoms "
                                    f"and {len(tops)} tops")
        shape = bottoms[0].shape
        self.axis = _conv_axis(self, cp, shape)
        self.win = read_window(self, cp)
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


    def add_bias(self, y: np.ndarray) -> None:
        """y (..., num_output, spatial) += bias per channel: one image right after
        its GEMM (still in cache), or a whole batch."""
        if self.bias_term:
            b = self.blobs[1].data.reshape(self.num_output, 1)
            np.add(y, b, out=y)


@register("Convolution")
class Convolution(_ConvBase):
    """2-D convolution, y = W * x + b, with groups, dilation, stride and padding.

    Output size floor((H + 2p - (d(k-1)+1)) / s) + 1 per axis. Weight
    (num_output, C/group, kh, kw), bias (num_output,). Forward: per image,
    im2col (skipped for 1x1, stride 1, pad 0) and one GEMM per group.
    MACs: top count x (C/group) x kh x kw, per bottom.
    """

    def weight_shape(self):
        return (self.num_output, self.channels // self.group, self.win.kh, self.win.kw)

    def output_hw(self, h, w):
        win = self.win
        return (conv_out_size(h, win.kh, win.sh, win.ph, win.dh),
                conv_out_size(w, win.kw, win.sw, win.pw, win.dw))

    def forward(self, bottoms, tops):
        g, num, win = self.group, self.num, self.win
        kdim = self.channels // g * win.kh * win.kw      # GEMM depth per group
        w = self.blobs[0].data.reshape(g, self.num_output // g, kdim)
        (h, wd), (oh, ow) = self.in_hw, self.out_hw
        for bottom, top in zip(bottoms, tops, strict=True):
            x = bottom.data.reshape(num, self.channels, h, wd)
            y = top.data.reshape(num, g, self.num_output // g, oh * ow)
            if win.is_1x1:
                # all images in one call; matmul broadcasts the weights over them
                np.matmul(w, x.reshape(num, g, kdim, h * wd), out=y)
                self.add_bias(y.reshape(num, self.num_output, oh * ow))
                continue
            from netdef.kernels.im2col import im2col

            col = column_buffer(g * kdim, oh * ow)
            cols = col.reshape(g, kdim, oh * ow)
            for n in range(num):
                im2col(x[n], *win.args(), oh, ow, col)
                np.matmul(w, cols, out=y[n])
                self.add_bias(y[n].reshape(self.num_output, oh * ow))

    def macs(self, bottoms, tops):
        win = self.win
        per_output = self.channels // self.group * win.kh * win.kw
        return sum(t.count for t in tops) * per_output


@register("Deconvolution")
class Deconvolution(_ConvBase):
    """Transposed convolution: the gradient of Convolution w.r.t. its input.

    Output size s(H - 1) + d(k - 1) + 1 - 2p per axis. Weight
    (C, num_output/group, kh, kw), bias (num_output,). Forward: per image,
    one GEMM W^T x per group into columns, then col2im (skipped for 1x1).
    MACs: bottom count x (num_output/group) x kh x kw, per bottom (Caffe's
    deconvolution cost).
    """

    def weight_shape(self):
        return (self.channels, self.num_output // self.group, self.win.kh, self.win.kw)

    def output_hw(self, h, w):
        win = self.win
        return (deconv_out_size(h, win.kh, win.sh, win.ph, win.dh),
                deconv_out_size(w, win.kw, win.sw, win.pw, win.dw))

    def forward(self, bottoms, tops):
        g, num, win, m = self.group, self.num, self.win, self.num_output
        rows = m // g * win.kh * win.kw                  # column rows per group
        wt = self.blobs[0].data.reshape(g, self.channels // g, rows).transpose(0, 2, 1)
        (h, wd), (oh, ow) = self.in_hw, self.out_hw
        for bottom, top in zip(bottoms, tops, strict=True):
            x = bottom.data.reshape(num, g, self.channels // g, h * wd)
            y = top.data.reshape(num, m, oh, ow)
            if win.is_1x1:
                np.matmul(wt, x, out=y.reshape(num, g, rows, oh * ow))
                self.add_bias(y.reshape(num, m, oh * ow))
                continue
            from netdef.kernels.im2col import col2im

            col = column_buffer(g * rows, h * wd)
            cols = col.reshape(g, rows, h * wd)
            for n in range(num):
                np.matmul(wt, x[n], out=cols)
                col2im(col, m, oh, ow, *win.args(), h, wd, y[n])
                self.add_bias(y[n].reshape(m, oh * ow))

    def macs(self, bottoms, tops):
        win = self.win
        per_input = self.num_output // self.group * win.kh * win.kw
        return sum(b.count for b in bottoms) * per_input


@register("Im2col")
class Im2col(Layer):
    """The column matrix of a convolution as a blob: (N, C*kh*kw, OH, OW).

    Reads convolution_param's geometry (kernel, stride, pad, dilation, axis);
    row (c*kh + i)*kw + j of each image holds tap (i, j) of channel c.
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
        for n in range(num):
            im2col(x[n], *self.win.args(), oh, ow, y[n])


@register("Pooling")
class Pooling(Layer):
    """MAX, AVE or STOCHASTIC pooling of (N, C, H, W) over kernel windows.

    Output size: Caffe's ceil rule by default (``round_mode: FLOOR`` rounds
    down), dropping a last window that starts in the padding; see
    geometry.pool_out_size. ``global_pooling`` pools each whole plane
    (kernel = H x W, pad 0, stride 1). AVE divides by the window area
    clipped to the padded input. MAX may have a second top: the argmax
    h*W + w of each window, as floats (-1 for a window with no number).
    STOCHASTIC (no padding): in TRAIN picks one element per window with
    probability x / sum(x); in TEST outputs sum(x^2) / sum(x).
    """

    num_bottoms = 1
    num_tops = (1, 2)
    kind = "pool"

    def setup(self, bottoms, tops):
        pp = self.param.pooling_param
        self.method = pp.pool
        self.global_pooling = pp.global_pooling
        self.ceil_mode = pp.round_mode == _POOL.CEIL
        if len(tops) == 2 and self.method != _POOL.MAX:
            raise self.config_error("only MAX pooling has a second (argmax mask) top")
        if self.global_pooling:
            if any(pp.HasField(f) for f in ("kernel_size", "kernel_h", "kernel_w")):
                raise self.config_error("global_pooling takes the kernel size from the "
                                        "bottom; do not set kernel_size")
            bottom_hw = bottoms[0].shape[2:4] if bottoms[0].ndim == 4 else (1, 1)
            self.win = Window(*bottom_hw)
            if _pair(self, pp, "stride", 1) != (1, 1) or _pair(self, pp, "pad", 0) != (0, 0):
                raise self.config_error("global_pooling needs pad 0 and stride 1")
        else:
            self.win = read_window(self, pp, dilation=False)
        win = self.win
        if win.ph or win.pw:
            if self.method == _POOL.STOCHASTIC:
                raise self.config_error("STOCHASTIC pooling does not support padding")
            if win.ph >= win.kh or win.pw >= win.kw:
                raise self.config_error(f"pad {win.ph}x{win.pw} must be smaller than the "
                                        f"kernel {win.kh}x{win.kw}")
        stochastic = self._stochastic_train if self.phase == pb.TRAIN else self._stochastic_test
        # the method is chosen once here, not per forward call
        self._forward = {_POOL.MAX: self._max, _POOL.AVE: self._ave,
                         _POOL.STOCHASTIC: stochastic}[self.method]
        self.rng = np.random.default_rng()

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.require(len(shape) == 4, "expects a 4-axis (N, C, H, W) bottom")
        n, c, h, w = shape
        if self.global_pooling:
            self.win = Window(h, w)
        win = self.win
        oh = pool_out_size(h, win.kh, win.sh, win.ph, self.ceil_mode)
        ow = pool_out_size(w, win.kw, win.sw, win.pw, self.ceil_mode)
        self.require(oh > 0 and ow > 0, f"kernel {win.kh}x{win.kw} does not fit the padded "
                                        f"{h + 2 * win.ph}x{w + 2 * win.pw} input")
        for top in tops:
            top.reshape((n, c, oh, ow))
        self._argmax = None

    def forward(self, bottoms, tops):
        self._forward(bottoms[0].data, tops)

    def _max(self, x, tops):
        from netdef.kernels.pooling import max_pool_forward, max_pool_forward_values

        out = tops[0].data
        win = self.win
        if self.phase == pb.TEST and len(tops) == 1:
            # nothing will run backward through a TEST net: skip the argmax
            max_pool_forward_values(x, win.kh, win.kw, win.sh, win.sw, win.ph, win.pw, out)
            return
        if self._argmax is None or self._argmax.shape != out.shape:
            self._argmax = np.empty(out.shape, np.int64)
        max_pool_forward(x, win.kh, win.kw, win.sh, win.sw, win.ph, win.pw, out, self._argmax)
        if len(tops) > 1:
            tops[1].data[...] = self._argmax

    def _ave(self, x, tops):
        from netdef.kernels.pooling import ave_pool_forward

        win = self.win
        ave_pool_forward(x, win.kh, win.kw, win.sh, win.sw, win.ph, win.pw, tops[0].data)

    def _taps(self, x, out_shape):
        """Every window tap as a strided (N, C, OH, OW) view of x, zero-extended
        past the border (zeros add nothing to the sums used below)."""
        win, (oh, ow) = self.win, out_shape[2:]
        n, c, h, w = x.shape
        need_h, need_w = (oh - 1) * win.sh + win.kh, (ow - 1) * win.sw + win.kw
        if (need_h, need_w) != (h, w):
            padded = np.zeros((n, c, max(need_h, h), max(need_w, w)), np.float32)
            padded[:, :, :h, :w] = x
            x = padded
        for i in range(win.kh):
            for j in range(win.kw):
                yield x[:, :, i:i + (oh - 1) * win.sh + 1:win.sh, j:j + (ow - 1) * win.sw + 1:win.sw]

    def _stochastic_test(self, x, tops):
        out = tops[0].data
        total = np.zeros(out.shape, np.float32)
        squares = np.zeros(out.shape, np.float32)
        for tap in self._taps(x, out.shape):
            total += tap
            squares += tap * tap
        # Caffe starts the sum at FLT_MIN, so an all-zero window gives 0, not 0/0
        total += np.finfo(np.float32).tiny
        np.divide(squares, total, out=out)
        out[total <= 0] = 0.0

    def _stochastic_train(self, x, tops):
        out = tops[0].data
        total = np.zeros(out.shape, np.float32)
        for tap in self._taps(x, out.shape):
            total += tap
        threshold = self.rng.random(out.shape, np.float32) * total
        running = np.zeros(out.shape, np.float32)
        done = np.zeros(out.shape, bool)
        out[...] = 0.0
        for tap in self._taps(x, out.shape):
            running += tap        # same order as ``total``: the last tap reaches it
            pick = ~done & (running >= threshold)
            out[pick] = tap[pick]
            done |= pick


@register("LRN")
class LRN(Layer):
    """Local response normalisation, y = x * scale^-beta.

    ACROSS_CHANNELS: scale = k + alpha/size * sum of x^2 over ``local_size``
    neighbouring channels (centred; clipped at the ends). WITHIN_CHANNEL:
    scale = 1 + alpha * mean of x^2 over a size x size spatial window (pad
    (size-1)/2, Caffe's average-pooling divisor; k unused). Caffe divides
    alpha by the window size in both cases. local_size must be odd.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "norm"

    def setup(self, bottoms, tops):
        lp = self.param.lrn_param
        self.size, self.alpha, self.beta, self.k = lp.local_size, lp.alpha, lp.beta, lp.k
        if self.size % 2 != 1:
            raise self.config_error(f"local_size must be odd, got {self.size}")
        self.across = lp.norm_region == pb.LRNParameter.ACROSS_CHANNELS

    def reshape(self, bottoms, tops):
        self.require(bottoms[0].ndim == 4, "expects a 4-axis (N, C, H, W) bottom")
        tops[0].reshape(bottoms[0].shape)
        self._scale = None     # kept for backward; allocated on first forward
        self._out = None       # only used when run in place

    def forward(self, bottoms, tops):
        from netdef.kernels import lrn

        x, shape = bottoms[0].data, bottoms[0].shape
        if self._scale is None or self._scale.shape != shape:
            self._scale = np.empty(shape, np.float32)
        in_place = tops[0] is bottoms[0]
        if in_place:      # the kernels read neighbours after writing the centre
            if self._out is None or self._out.shape != shape:
                self._out = np.empty(shape, np.float32)
            out = self._out
        else:
            out = tops[0].data
        if self.across:
            lrn.lrn_across_forward(x, self.size, self.alpha, self.beta, self.k, out, self._scale)
        else:
            lrn.lrn_within_forward(x, self.size, self.alpha, self.beta, out, self._scale)
        if in_place:
            x[...] = out
