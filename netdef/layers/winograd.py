"""Winograd forward for 3x3 stride-1 convolutions of inference plans.

The fusion pass (compile/fuse.py) gives every eligible Convolution of a
TEST-phase optimized plan its transformed weights (``WinogradWeights``);
its forward then runs ``forward`` here instead of im2col + GEMM: about 4x
fewer multiply-adds in the GEMMs and no column matrix 9x the input (see
netdef/kernels/winograd.py for the algorithm). Training plans, and
``Net`` without ``optimize``, keep im2col, whose sums are those of a
plain GEMM; Winograd's differ from them by float32 rounding (relative
1e-5 of the output's scale, tested).

Eligible: kernel 3x3, stride 1, dilation 1, channel axis 1, at least
MIN_CHANNELS input channels per group (with fewer, the transforms cost
more than the GEMMs save), not depthwise, and an image's transformed
tiles within the scratch budget. Small maps stay eligible: on the face
detector, whose 3x3 layers go down to 3x3 outputs (one tile), running
them all as Winograd measured 20-30% faster than keeping maps under 32
tiles on im2col, and AlexNet's 13x13 layers at batch 1 (16 tiles) were
even.
"""
from __future__ import annotations

import numpy as np

from netdef.kernels import matmul
from netdef.layers.vision import _scratch

MIN_CHANNELS = 16
# floats of one transformed block (V or P); images are grouped up to this
_BLOCK_FLOATS = 1 << 23          # 32 MiB
# Chunked (kernels.winograd.winograd_conv) up to this many floats of U, which
# every chunk reads again: 128x128 channels (U 2.25 MiB) on a 38x38 map
# measured 1.11 -> 0.99 ms; 256x256 (9 MiB) on 19x19 was slower than the
# three passes, whose 36 GEMMs each read their part of U once.
_CHUNKED_MAX_U = 36 * 128 * 128
# floats of V and P together per chunk, to stay in a core's L2 cache
_CHUNK_FLOATS = 1 << 16


def _tiles(layer) -> tuple[int, int]:
    oh, ow = layer.out_hw
    return -(-oh // 4), -(-ow // 4)


# Winograd's transformed weights are 4x im2col's (36 against 9 values per
# channel pair), read once per call: on maps of a few tiles (7x7 is four)
# the GEMMs are bound by reading them, so larger layers keep im2col there.
# Two nets in one process, alternating: ResNet-50 (res5's 512x512 on 7x7)
# 0.835 of the time, GoogLeNet (inception_5a/5b) 0.956. The face detector's
# small SSD layers (U up to 1M values) keep Winograd: taking every layer on
# so few tiles off it measured 1.019 there.
_FEW_TILES = 5
_FEW_TILES_MAX_U = 1 << 20


def eligible(layer) -> bool:
    win = layer.win
    if (win.kh, win.kw, win.sh, win.sw, win.dh, win.dw) != (3, 3, 1, 1, 1, 1):
        return False
    if layer.axis != 1 or getattr(layer, "depthwise", False):
        return False
    if layer.channels // layer.group < MIN_CHANNELS:
        return False
    th, tw = _tiles(layer)
    if (th * tw * layer.num < _FEW_TILES
            and 36 * (layer.channels // layer.group) * layer.num_output > _FEW_TILES_MAX_U):
        return False
    return 36 * max(layer.channels, layer.num_output) * th * tw <= _BLOCK_FLOATS


class WinogradWeights:
    """U (group, 36, C/group, M/group) of a convolution's 3x3 weights."""

    def __init__(self, weight: np.ndarray, group: int):
        from netdef.kernels.winograd import transform_weights

        m, cg = weight.shape[:2]
        self.u = np.stack([transform_weights(part) for part in
                           weight.reshape(group, m // group, cg, 3, 3)])

    @classmethod
    def stacked(cls, parts: list[WinogradWeights]) -> WinogradWeights:
        """The weights of ungrouped convolutions of one input, one after
        another along the output channels (for ``forward_heads``)."""
        out = cls.__new__(cls)
        out.u = np.concatenate([p.u for p in parts], axis=3)
        return out


def forward(layer, ww: WinogradWeights, bias: np.ndarray, relu_slope, bottoms, tops) -> None:
    """tops[i] = conv(bottoms[i]) + bias (then ReLU of ``relu_slope`` when
    given), for an eligible ``layer`` after reshape."""
    for bottom, top in zip(bottoms, tops, strict=True):
        forward_heads(layer, ww, [(bias, relu_slope)], bottom, [top])


def forward_heads(layer, ww: WinogradWeights, heads, bottom, tops) -> None:
    """Several convolutions of one bottom with the same geometry at once:
    ``ww`` holds their weights stacked along the output channels, in the
    order of ``tops``; ``heads`` gives each its (bias, relu_slope). The
    input transform, the costly part for the few output channels of SSD's
    box and class heads, is done once for all of them. ``layer`` supplies
    the geometry; its num_output is not used."""
    from netdef.kernels.gemm import available as gemm_available
    from netdef.kernels.winograd import winograd_input, winograd_output

    g, c = layer.group, layer.channels
    m = ww.u.shape[0] * ww.u.shape[3]
    mg, cg = m // g, c // g
    (h, wd), (oh, ow) = layer.in_hw, layer.out_hw
    th, tw = _tiles(layer)
    x = bottom.data.reshape(layer.num, c, h, wd)
    ys = [top.data.reshape(layer.num, -1, oh, ow) for top in tops]
    if g == 1 and len(tops) == 1 and c * m * 36 <= _CHUNKED_MAX_U and gemm_available():
        _forward_chunked(layer, ww.u[0], heads[0], x, ys[0], th, tw)
        return
    per_image = th * tw
    block = max(1, min(layer.num, _BLOCK_FLOATS // (36 * max(c, m) * per_image)))
    for n0 in range(0, layer.num, block):
        t = min(block, layer.num - n0) * per_image
        v = _scratch("winograd_v", 36 * c * t).reshape(36, t, c)
        p = _scratch("winograd_p", 36 * m * t).reshape(36, t, m)
        winograd_input(x, n0, layer.win.ph, layer.win.pw, th, tw, v)
        if g == 1:
            matmul(v, ww.u[0], out=p)
        else:
            for gi in range(g):
                matmul(v[:, :, gi * cg:(gi + 1) * cg], ww.u[gi],
                       out=p[:, :, gi * mg:(gi + 1) * mg])
        m0 = 0
        for y, (bias, relu_slope) in zip(ys, heads, strict=True):
            winograd_output(p, m0, bias, int(relu_slope is not None),
                            float(relu_slope or 0.0), n0, th, tw, y)
            m0 += y.shape[1]


def _forward_chunked(layer, u, head, x, y, th, tw) -> None:
    """One top through ``winograd_conv``: chunks of rows of tiles, each
    worker of the pool with its own V and P for one chunk."""
    from numba import get_num_threads

    from netdef.kernels.winograd import winograd_conv

    bias, relu_slope = head
    c, m = u.shape[1], u.shape[2]
    rows = max(1, min(th, _CHUNK_FLOATS // (36 * tw * (c + m))))
    workers = min(get_num_threads(), layer.num * -(-th // rows))
    v = _scratch("winograd_v", workers * 36 * rows * tw * c).reshape(workers, 36, rows * tw, c)
    p = _scratch("winograd_p", workers * 36 * rows * tw * m).reshape(workers, 36, rows * tw, m)
    winograd_conv(x, 0, layer.num, layer.win.ph, layer.win.pw, th, tw, rows, u, bias,
                  int(relu_slope is not None), float(relu_slope or 0.0), y, v, p)
