"""Pooling: MAX, AVE and STOCHASTIC over kernel windows (Caffe's Pooling).

Window geometry is convolution's (layers/vision.py); output sizes come
from ``netdef.layers.geometry`` only. Kernels are imported inside
``forward``/``backward`` so that shape-only tools never import Numba.
"""
from __future__ import annotations

import numpy as np

from netdef.errors import InputError
from netdef.frontend.schema import pb
from netdef.layers.base import Layer, register
from netdef.layers.geometry import pool_out_size
from netdef.layers.vision import Window, _pair, read_window

_POOL = pb.PoolingParameter


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
    probability x / sum(x) (drawn from ``self.rng``); in TEST outputs
    sum(x^2) / sum(x).

    Backward: MAX routes each top gradient to its window's argmax, AVE
    spreads it over the window divided by the same area as forward,
    STOCHASTIC in TRAIN routes it to the picked element, and in TEST (which
    Caffe does not differentiate) uses the derivative of sum(x^2)/sum(x),
    (2 x - y) / sum(x). Forward keeps the argmax only when
    ``needs_backward`` is true (default: TRAIN phase; a net that will run
    backward through a TEST net sets it) or a mask top asks for it;
    without it, backward recomputes it from the bottom.
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
        train = self.phase == pb.TRAIN
        # the method is chosen once here, not per forward call
        self._forward, self._backward = {
            _POOL.MAX: (self._max, self._max_backward),
            _POOL.AVE: (self._ave, self._ave_backward),
            _POOL.STOCHASTIC: ((self._stochastic_train, self._picked_backward) if train else
                               (self._stochastic_test, self._stochastic_test_backward)),
        }[self.method]
        self.rng = np.random.default_rng()
        self.needs_backward = train

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
        self._argmax = None        # int64 (N, C, OH, OW): argmax or picked element
        self._argmax_valid = False

    def forward(self, bottoms, tops):
        self._forward(bottoms[0].data, tops)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            self._backward(tops[0].diff, bottoms[0])

    def _geometry(self) -> tuple[int, ...]:
        win = self.win
        return win.kh, win.kw, win.sh, win.sw, win.ph, win.pw

    def _argmax_for(self, shape) -> np.ndarray:
        if self._argmax is None or self._argmax.shape != shape:
            self._argmax = np.empty(shape, np.int64)
        return self._argmax

    def _max(self, x, tops):
        from netdef.kernels import pooling

        out = tops[0].data
        if not self.needs_backward and len(tops) == 1:
            # nothing will run backward: skip the argmax
            geometry = self._geometry()
            if geometry[:2] == (3, 3):
                pooling.max_pool_3x3_values(x, *geometry[2:], out)
            else:
                pooling.max_pool_forward_values(x, *geometry, out)
            self._argmax_valid = False
            return
        pooling.max_pool_forward(x, *self._geometry(), out, self._argmax_for(out.shape))
        self._argmax_valid = True
        if len(tops) > 1:
            tops[1].data[...] = self._argmax

    def _max_backward(self, dy, bottom):
        from netdef.kernels.pooling import max_pool_backward, max_pool_forward

        if not self._argmax_valid:      # forward skipped it: find the winners now
            values = np.empty(dy.shape, np.float32)
            max_pool_forward(bottom.data, *self._geometry(), values, self._argmax_for(dy.shape))
            self._argmax_valid = True
        max_pool_backward(dy, self._argmax, bottom.diff)

    def _ave(self, x, tops):
        from netdef.kernels import pooling

        n, c, h, w = x.shape
        win = self.win
        if (win.kh, win.kw, win.ph, win.pw) == (h, w, 0, 0):
            # one window per plane (global pooling): a plain mean of each plane
            pooling.global_ave_pool(x.reshape(n * c, h * w), tops[0].data.reshape(n * c))
            return
        pooling.ave_pool_forward(x, *self._geometry(), tops[0].data)

    def _ave_backward(self, dy, bottom):
        from netdef.kernels.pooling import ave_pool_backward

        ave_pool_backward(dy, *self._geometry(), bottom.diff)

    def _extended(self, x, out_shape) -> np.ndarray:
        """x, zero-extended past the bottom/right border so that every window
        of the output fits (stochastic pooling has no padding)."""
        win, (oh, ow) = self.win, out_shape[2:]
        n, c, h, w = x.shape
        need_h, need_w = (oh - 1) * win.sh + win.kh, (ow - 1) * win.sw + win.kw
        if need_h <= h and need_w <= w:
            return x
        padded = np.zeros((n, c, max(need_h, h), max(need_w, w)), x.dtype)
        padded[:, :, :h, :w] = x
        return padded

    def _taps(self, x, out_shape):
        """(i, j, view): every window tap (i, j) as a strided (N, C, OH, OW) view
        of x, which must be extended (``_extended``) to hold every window."""
        win, (oh, ow) = self.win, out_shape[2:]
        for i in range(win.kh):
            for j in range(win.kw):
                yield i, j, x[:, :, i:i + (oh - 1) * win.sh + 1:win.sh,
                              j:j + (ow - 1) * win.sw + 1:win.sw]

    def _sums(self, x, out_shape):
        """Per window: sum(x) + FLT_MIN and sum(x^2), float32."""
        total = np.zeros(out_shape, np.float32)
        squares = np.zeros(out_shape, np.float32)
        for _, _, tap in self._taps(self._extended(x, out_shape), out_shape):
            total += tap
            squares += tap * tap
        # Caffe starts the sum at FLT_MIN, so an all-zero window gives 0, not 0/0
        total += np.finfo(np.float32).tiny
        return total, squares

    def _stochastic_test(self, x, tops):
        out = tops[0].data
        total, squares = self._sums(x, out.shape)
        np.divide(squares, total, out=out)
        out[total <= 0] = 0.0

    def _stochastic_test_backward(self, dy, bottom):
        # y = Q / S per window: dy/dx = (2 x - y) / S for each element of it
        total, squares = self._sums(bottom.data, dy.shape)
        y = squares / total
        coef = np.where(total > 0, dy / total, np.float32(0.0))
        shift = coef * y
        x = self._extended(bottom.data, dy.shape)
        dx = np.zeros(x.shape, np.float32)
        taps = zip(self._taps(x, dy.shape), self._taps(dx, dy.shape))
        for (_, _, tap), (_, _, grad) in taps:
            grad += 2.0 * coef * tap - shift       # a view: windows of one tap never overlap
        h, w = bottom.shape[2:]
        bottom.diff[...] = dx[:, :, :h, :w]

    def _stochastic_train(self, x, tops):
        out = tops[0].data
        width = x.shape[3]
        oh, ow = out.shape[2:]
        extended = self._extended(x, out.shape)
        total = np.zeros(out.shape, np.float32)
        for _, _, tap in self._taps(extended, out.shape):
            total += tap
        threshold = self.rng.random(out.shape, np.float32) * total
        running = np.zeros(out.shape, np.float32)
        done = np.zeros(out.shape, bool)
        out[...] = 0.0
        # the picked element h*W + w of each window (-1: none), for backward
        picked = self._argmax_for(out.shape)
        picked[...] = -1
        corner = (np.arange(oh) * self.win.sh)[:, None] * width + np.arange(ow) * self.win.sw
        for i, j, tap in self._taps(extended, out.shape):
            running += tap        # same order as ``total``: the last tap reaches it
            pick = ~done & (running >= threshold)
            out[pick] = tap[pick]
            np.copyto(picked, corner + (i * width + j), where=pick)
            done |= pick
        self._argmax_valid = True

    def _picked_backward(self, dy, bottom):
        from netdef.kernels.pooling import max_pool_backward

        if not self._argmax_valid:
            raise InputError(f"layer '{self.name}' (Pooling): STOCHASTIC backward needs the "
                             "elements its forward picked; run forward first",
                             where=self.where)
        max_pool_backward(dy, self._argmax, bottom.diff)
