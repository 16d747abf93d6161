"""Inference-only fusion: fold BatchNorm/Scale into the convolution before
them and apply a following ReLU while the convolution's output is hot.

    conv -> BatchNorm(global stats) -> Scale -> ReLU

becomes one step computing relu(W' * x + b') with, per output channel c,
a[c] x + b[c] being the composed per-channel affine map of the BatchNorm
and Scale layers, W' = a W and b' = a bias + b. The user's parameters are
untouched: the folded copies live in the plan, which is rebuilt whenever
weights are loaded (``Net.copy_from``) or ``Net.reshape`` is called.

The same pass merges a few steps that read each other's output while it
is in cache: sums into the affine chain after them, Winograd layers of one
bottom into one input transform, and a 1x1 expansion into the depthwise
convolution that reads it (PointwiseDepthwise).

Only plans for TEST-phase nets fuse (training needs BatchNorm's batch
statistics), and never across a blob the caller wants to read. Set
NETDEF_NO_FUSE=1 to switch fusion off when bisecting a numerical difference.
"""
from __future__ import annotations

import copy
import os

import numpy as np

from netdef.blob import Blob
from netdef.compile.instantiate import Step
from netdef.frontend.graph import Node
from netdef.frontend.schema import pb


# Layer types whose output channels take a per-channel affine map into their
# weights: Convolution and the fork spellings of depthwise convolution.
_FOLDABLE = frozenset({"Convolution", "DepthwiseConvolution", "ConvolutionDepthwise"})
# Layer types that may start a chain of their own when no convolution
# precedes them (a pre-activation ResNet's BN, Scale, ReLU after each sum).
_AFFINE = frozenset({"BatchNorm", "Scale"})


class FusedConvolution:
    """A Convolution run with folded weights, optionally followed by ReLU,
    and as Winograd F(4x4, 3x3) when its geometry allows (layers/winograd.py)."""

    shares_data = False
    kind = "conv"

    def __init__(self, conv, weight: np.ndarray, bias: np.ndarray, relu_slope, names):
        from netdef.layers import winograd

        self.conv = copy.copy(conv)           # shares geometry and column buffer
        self.conv.blobs = [Blob(weight.shape), Blob(bias.shape)]
        self.conv.blobs[0].data = weight
        self.conv.blobs[1].data = bias
        self.conv.bias_term = True
        self.relu_slope = relu_slope
        self.name = "+".join(names)
        self.type = "Convolution"
        self.blobs = []
        self.winograd = (winograd.WinogradWeights(weight, conv.group)
                         if conv.type == "Convolution" and winograd.eligible(conv) else None)
        if conv.type == "Convolution":
            # Convolution applies the ReLU with the bias, in one pass
            self.conv.relu_slope = relu_slope
        self.band = 0
        self.pointwise = None
        if self.winograd is None and conv.type == "Convolution":
            from numba import get_num_threads

            from netdef.layers.vision import column_bands, pointwise_blocks

            self.band = column_bands(self.conv)
            self.pointwise = pointwise_blocks(self.conv, get_num_threads())

    def forward(self, bottoms, tops):
        if self.pointwise is not None:
            from netdef.layers.vision import forward_pointwise

            forward_pointwise(self.conv, self.pointwise, self.relu_slope, bottoms, tops)
            return
        if self.band:
            from netdef.layers.vision import forward_bands

            forward_bands(self.conv, self.band, self.relu_slope, bottoms, tops)
            return
        if self.winograd is not None:
            from netdef.layers import winograd

            winograd.forward(self.conv, self.winograd, self.conv.blobs[1].data,
                             self.relu_slope, bottoms, tops)
            return
        if getattr(self.conv, "depthwise", False):
            from netdef.layers import depthwise

            # the depthwise kernel applies the ReLU to each plane it has just written
            depthwise.forward(self.conv, bottoms, tops, self.relu_slope)
            return
        self.conv.forward(bottoms, tops)
        if self.relu_slope is not None and self.conv.relu_slope is None:
            from netdef.kernels.elementwise import relu

            for top in tops:
                flat = top.data.reshape(-1)     # the kernel takes 1-D arrays
                relu(flat, self.relu_slope, flat)


class FusedAffine:
    """A chain of inference BatchNorm/Scale layers, optionally ending in a
    ReLU, that follows no convolution to fold into: one pass of
    x -> relu(a x + b) per channel (kernels.normalization.channel_affine_relu)
    instead of one pass, and several small numpy calls, per layer. The
    face detector has six: its input's BatchNorm + Scale, and BatchNorm +
    Scale + ReLU after each residual sum."""

    shares_data = False
    kind = "norm"

    def __init__(self, a: np.ndarray, b: np.ndarray, relu_slope, names, type_: str):
        self.scale = a.astype(np.float32)
        self.shift = b.astype(np.float32)
        self.relu = 0 if relu_slope is None else 1
        self.slope = np.float32(0.0 if relu_slope is None else relu_slope)
        self.name = "+".join(names)
        self.type = type_             # the first layer's
        self.blobs = []

    def forward(self, bottoms, tops):
        from netdef.kernels.normalization import channel_affine_relu

        x, y = bottoms[0].data, tops[0].data
        view = (x.shape[0], x.shape[1], -1)
        channel_affine_relu(x.reshape(view), self.scale, self.shift, self.relu, self.slope,
                            y.reshape(view))


class FusedSumAffine(FusedAffine):
    """An Eltwise SUM of two bottoms and the BatchNorm/Scale(/ReLU) chain
    that alone reads it, as one pass: x0, x1 -> relu(a (c0 x0 + c1 x1) + b)
    per channel (kernels.normalization.channel_sum_affine_relu), instead of
    writing the sum and reading it back. A pre-activation ResNet (the face
    detector) has one after each residual block; ResNet-50's sum + ReLU is
    one too."""

    kind = "elementwise"

    def __init__(self, coeff, a, b, relu_slope, names, type_: str):
        super().__init__(a, b, relu_slope, names, type_)
        self.coeff = tuple(float(c) for c in coeff)

    def forward(self, bottoms, tops):
        from netdef.kernels.normalization import channel_sum_affine_relu

        x0, x1, y = bottoms[0].data, bottoms[1].data, tops[0].data
        view = (x0.shape[0], x0.shape[1], -1)
        channel_sum_affine_relu(x0.reshape(view), self.coeff[0], x1.reshape(view),
                                self.coeff[1], self.scale, self.shift, self.relu, self.slope,
                                y.reshape(view))


def _sum_of_two(step: Step):
    """The coefficients of an Eltwise SUM of two same-shape bottoms with
    an axis of channels, else None."""
    layer = step.layer
    if (layer.type != "Eltwise" or len(step.bottoms) != 2 or len(step.tops) != 1
            or getattr(layer, "operation", None) != pb.EltwiseParameter.SUM
            or step.bottoms[0].shape != step.bottoms[1].shape
            or len(step.bottoms[0].shape) < 2):
        return None
    return layer.coeff


def _affine_of(step: Step, channels: int):
    """(a, b) per channel if ``step`` is a foldable BatchNorm/Scale, else None."""
    layer = step.layer
    if len(step.bottoms) != 1 or len(step.tops) != 1:
        return None
    if layer.type == "BatchNorm":
        if not getattr(layer, "use_global_stats", False) or layer.channels != channels:
            return None
        mean, var = layer.blobs[0].data.ravel(), layer.blobs[1].data.ravel()
        factor = float(layer.blobs[2].data.ravel()[0])
        factor = 0.0 if factor == 0 else 1.0 / factor
        inv_std = 1.0 / np.sqrt(var.astype(np.float64) * factor + layer.eps)
        return inv_std, -mean.astype(np.float64) * factor * inv_std
    if layer.type == "Scale" and len(layer.blobs) >= 1:
        gamma = layer.blobs[0].data
        if gamma.shape != (channels,) or layer.param.scale_param.axis not in (1, -3):
            return None
        beta = layer.blobs[1].data if layer.bias_term else np.zeros(channels)
        return gamma.astype(np.float64), beta.astype(np.float64)
    return None


def _follow_chain(steps, i, channels, a, b, readers, protected):
    """Extend the chain that starts with steps[i] by the BatchNorm/Scale
    steps after it, each reading only the previous one's top (and nobody
    else reading that), composing their per-channel maps into x -> a x + b,
    and then by one ReLU. Returns (chain, last top, index after the
    chain, a, b, the ReLU's negative slope or None)."""
    chain, top, j, relu_slope = [steps[i]], steps[i].tops[0], i + 1, None
    while j < len(steps):
        nxt = steps[j]
        if (len(nxt.bottoms) != 1 or nxt.bottoms[0] is not top
                or readers.get((id(top), j - 1)) != 1 or top.name in protected):
            break
        if nxt.layer.type == "ReLU":
            relu_slope = float(nxt.layer.param.relu_param.negative_slope)
            chain.append(nxt)
            top = nxt.tops[0]
            j += 1
            break
        affine = _affine_of(nxt, channels)
        if affine is None:
            break
        a, b = affine[0] * a, affine[0] * b + affine[1]
        chain.append(nxt)
        top = nxt.tops[0]
        j += 1
    return chain, top, j, a, b, relu_slope


def fuse_for_inference(steps: list[Step], protected: set[str], log: list[str]) -> list[Step]:
    """Return a new schedule with conv/BN/Scale/ReLU chains folded."""
    if os.environ.get("NETDEF_NO_FUSE") == "1":
        log.append("fuse: off (NETDEF_NO_FUSE=1)")
        return steps
    # Readers per blob *version*: an in-place chain rewrites one Blob object,
    # so what matters is who reads what a given step wrote.
    writer: dict[int, int] = {}
    readers: dict[tuple[int, int], int] = {}
    for k, step in enumerate(steps):
        for b in step.bottoms:
            key = (id(b), writer.get(id(b), -1))
            readers[key] = readers.get(key, 0) + 1
        for t in step.tops:
            writer[id(t)] = k
    out: list[Step] = []
    i, folded, relus, winograds, affines, sums = 0, 0, 0, 0, 0, 0
    while i < len(steps):
        step = steps[i]
        coeff = _sum_of_two(step)
        if coeff is not None:
            channels = step.bottoms[0].shape[1]
            chain, top, j, a, b, relu_slope = _follow_chain(
                steps, i, channels, np.ones(channels), np.zeros(channels), readers, protected)
            if len(chain) > 1:
                fused = FusedSumAffine(coeff, a, b, relu_slope, [s.name for s in chain],
                                       step.node.type)
                node = Node(fused.name, fused.type, list(step.node.bottoms), [top.name],
                            step.node.param, step.node.where)
                out.append(Step(node, fused, list(step.bottoms), [top]))
                sums += 1
                affines += len(chain) - 1
                i = j
                continue
        if step.layer.type in _AFFINE and len(step.bottoms[0].shape) >= 2:
            channels = step.bottoms[0].shape[1]
            affine = _affine_of(step, channels)
            if affine is not None:
                a, b = affine
                chain, top, j, a, b, relu_slope = _follow_chain(steps, i, channels, a, b,
                                                                readers, protected)
                fused = FusedAffine(a, b, relu_slope, [s.name for s in chain], step.node.type)
                node = Node(fused.name, fused.type, list(step.node.bottoms), [top.name],
                            step.node.param, step.node.where)
                out.append(Step(node, fused, list(step.bottoms), [top]))
                affines += len(chain)
                i = j
                continue
        if (step.layer.type not in _FOLDABLE or len(step.tops) != 1
                or len(step.bottoms) != 1):
            out.append(step)
            i += 1
            continue
        conv = step.layer
        channels = conv.num_output
        chain, top, j, a, b, relu_slope = _follow_chain(
            steps, i, channels, np.ones(channels), np.zeros(channels), readers, protected)
        if len(chain) == 1:
            out.append(_as_fast_convolution(step) or step)
            winograds += getattr(out[-1].layer, "winograd", None) is not None
            i += 1
            continue
        w = conv.blobs[0].data.astype(np.float64)
        bias = conv.blobs[1].data.astype(np.float64) if conv.bias_term else np.zeros(channels)
        weight = (w * a.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
        new_bias = (bias * a + b).astype(np.float32)
        names = [s.name for s in chain]
        fused = FusedConvolution(conv, weight, new_bias, relu_slope, names)
        node = Node(fused.name, "Convolution", list(step.node.bottoms), [top.name],
                    step.node.param, step.node.where)
        out.append(Step(node, fused, list(step.bottoms), [top]))
        winograds += fused.winograd is not None
        folded += sum(s.layer.type != "ReLU" for s in chain[1:])
        relus += relu_slope is not None
        i = j
    out, shared = _share_winograd_inputs(out)
    out, pairs = _pair_pointwise_depthwise(out, protected)
    log.append(f"fuse: folded {folded} BatchNorm/Scale layers into convolutions, "
               f"{relus} ReLUs applied in the convolution step, "
               f"{winograds} 3x3 convolutions run as Winograd F(4x4, 3x3)"
               + (f" ({shared} of them sharing another's input transform)" if shared else "")
               + f", {affines} other BatchNorm/Scale/ReLU layers run as one-pass affine maps"
               + (f", {sums} Eltwise sums with the layers after them" if sums else "")
               + (f", {pairs} 1x1 convolutions run with the depthwise one after them"
                  if pairs else ""))
    return out


class WinogradHeads:
    """Winograd convolutions of one bottom with the same geometry, run as
    one step: SSD's box and class heads read each feature map twice, and
    the input transform is the larger part of their cost. Each keeps its
    own top, bias and ReLU."""

    shares_data = False
    kind = "conv"
    type = "Convolution"

    def __init__(self, members: list[FusedConvolution]):
        from netdef.layers import winograd

        self.members = members
        self.conv = members[0].conv
        self.name = "&".join(m.name for m in members)
        self.blobs = []
        # ungrouped: the members' transformed weights stack along M
        self.weights = winograd.WinogradWeights.stacked([m.winograd for m in members])
        self.heads = [(m.conv.blobs[1].data, m.relu_slope) for m in members]

    def forward(self, bottoms, tops):
        from netdef.layers import winograd

        winograd.forward_heads(self.conv, self.weights, self.heads, bottoms[0], tops)


def _share_winograd_inputs(steps: list[Step]) -> tuple[list[Step], int]:
    """Merge Winograd steps that read the same single bottom with the same
    window (ungrouped) into one WinogradHeads step, at the first one's place:
    its inputs exist there, and the others' tops are only written earlier."""
    # a Split's tops are its bottom's data (forward copies nothing)
    source: dict[int, int] = {}
    for step in steps:
        if step.layer.type == "Split":
            root = source.get(id(step.bottoms[0]), id(step.bottoms[0]))
            for top in step.tops:
                source[id(top)] = root
    groups: dict[tuple, list[int]] = {}
    for k, step in enumerate(steps):
        layer = step.layer
        if (isinstance(layer, FusedConvolution) and layer.winograd is not None
                and layer.conv.group == 1 and len(step.bottoms) == 1):
            key = (source.get(id(step.bottoms[0]), id(step.bottoms[0])), layer.conv.win)
            groups.setdefault(key, []).append(k)
    merged: dict[int, Step] = {}
    dropped: set[int] = set()
    for (root, _), members in groups.items():
        if len(members) < 2:
            continue
        # moving the later ones up is only sound if nothing in between
        # writes the shared input in place
        if any(source.get(id(t), id(t)) == root
               for k in range(members[0] + 1, members[-1]) for t in steps[k].tops):
            continue
        first = steps[members[0]]
        heads = WinogradHeads([steps[k].layer for k in members])
        tops = [steps[k].tops[0] for k in members]
        node = Node(heads.name, "Convolution", list(first.node.bottoms),
                    [t.name for t in tops], first.node.param, first.node.where)
        merged[members[0]] = Step(node, heads, list(first.bottoms), tops)
        dropped.update(members[1:])
    out = [merged.get(k, step) for k, step in enumerate(steps) if k not in dropped]
    return out, sum(len(h.layer.members) for h in merged.values()) - len(merged)


class PointwiseDepthwise:
    """A 1x1 expansion and the depthwise convolution that is its only reader,
    run as one step (layers.depthwise.forward_after_pointwise): MobileNet
    v2's expand + dwise pairs, each with its folded BatchNorm/Scale/ReLU.
    The 1x1's own top is not written."""

    shares_data = False
    kind = "conv"
    type = "Convolution"

    def __init__(self, pointwise: FusedConvolution, depthwise: FusedConvolution, band: int):
        self.pointwise, self.depthwise, self.band = pointwise, depthwise, band
        self.conv = depthwise.conv
        self.name = pointwise.name + "+" + depthwise.name
        self.blobs = []

    def forward(self, bottoms, tops):
        from netdef.layers.depthwise import forward_after_pointwise

        first, second = self.pointwise, self.depthwise
        forward_after_pointwise(first.conv, first.relu_slope, second.conv, second.relu_slope,
                                self.band, bottoms[0], tops[0])


# A pair runs as one step on planes up to 64x64 (MobileNet v2 from 56x56 on)
# whose 1x1 convolution expands the channels at least 4 times. Measured on
# v2's shapes, one step against two, 2 threads: 144x56x56 0.32 -> 0.24 ms
# (stride 1) and 0.32 -> 0.21 (stride 2), 384x28x28 0.37 -> 0.34, 960x7x7
# 0.24 -> 0.16. On 112x112 planes each band's SGEMM re-reads an input too
# large for the cache (96x112x112: 0.55 -> 0.70 ms), and without the
# expansion the 1x1's SGEMM dominates and loses more in narrow bands than
# the pair saves (MobileNet v1's 128 -> 128 on 56x56 with stride 2: 0.72 -> 1.00).
# With a stride, pairs start at 28x28: v2's 576x14x14 stride-2 pair measured
# even with two steps alone (0.16 ms) and 1.6-2.1% slower in the net.
_PAIR_MAX_PLANE = 64 * 64
_PAIR_MIN_STRIDED_PLANE = 28 * 28
_PAIR_MIN_EXPANSION = 4


def _pair_fits(pointwise, depthwise) -> bool:
    """Whether the shapes of a 1x1 layer and the depthwise one after it are
    those on which one PointwiseDepthwise step measured faster than two."""
    plane = pointwise.in_hw[0] * pointwise.in_hw[1]
    strided = depthwise.win.sh > 1 or depthwise.win.sw > 1
    return (plane <= _PAIR_MAX_PLANE and (not strided or plane >= _PAIR_MIN_STRIDED_PLANE)
            and pointwise.num_output >= _PAIR_MIN_EXPANSION * pointwise.channels)


def _pair_pointwise_depthwise(steps: list[Step], protected: set[str]) -> tuple[list[Step], int]:
    """Merge each pointwise FusedConvolution step whose top only the next
    step reads, a depthwise FusedConvolution with one filter per channel,
    into a PointwiseDepthwise step where ``_pair_fits``."""
    from numba import get_num_threads

    from netdef.layers.depthwise import pair_band

    reads: dict[int, int] = {}
    writes: dict[int, int] = {}
    for step in steps:
        for b in step.bottoms:
            reads[id(b)] = reads.get(id(b), 0) + 1
        for t in step.tops:
            writes[id(t)] = writes.get(id(t), 0) + 1
    out: list[Step] = []
    pairs, k = 0, 0
    while k < len(steps):
        step = steps[k]
        nxt = steps[k + 1] if k + 1 < len(steps) else None
        first, second = step.layer, nxt.layer if nxt is not None else None
        if (isinstance(first, FusedConvolution) and first.pointwise is not None
                and isinstance(second, FusedConvolution)
                and getattr(second.conv, "depthwise", False)
                and second.conv.num_output == second.conv.channels
                and len(step.bottoms) == len(nxt.bottoms) == len(nxt.tops) == 1
                and nxt.bottoms[0] is step.tops[0]
                and reads[id(step.tops[0])] == 1 and writes[id(step.tops[0])] == 1
                and step.tops[0].name not in protected
                and nxt.tops[0] is not step.bottoms[0]
                and _pair_fits(first.conv, second.conv)):
            pair = PointwiseDepthwise(first, second, pair_band(first.conv, get_num_threads()))
            node = Node(pair.name, "Convolution", list(step.node.bottoms),
                        [t.name for t in nxt.tops], step.node.param, step.node.where)
            out.append(Step(node, pair, list(step.bottoms), list(nxt.tops)))
            pairs += 1
            k += 2
            continue
        out.append(step)
        k += 1
    return out, pairs


def _as_fast_convolution(step: Step) -> Step | None:
    """A lone Convolution as a FusedConvolution step (same name and blobs)
    when that runs it faster: as Winograd, or in bands of output rows."""
    from netdef.layers import winograd
    from netdef.layers.vision import column_bands

    conv = step.layer
    if conv.type != "Convolution" or not (winograd.eligible(conv) or column_bands(conv)):
        return None
    bias = (conv.blobs[1].data if conv.bias_term
            else np.zeros(conv.num_output, np.float32))
    fused = FusedConvolution(conv, conv.blobs[0].data, bias, None, [step.name])
    return Step(step.node, fused, list(step.bottoms), list(step.tops))
