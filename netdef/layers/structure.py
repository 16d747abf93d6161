"""Structure layers: move, copy, join, split and reshape blobs.

Concat, Slice, Split, Flatten, Reshape, Crop, Tile, Silence, Parameter and
ShuffleChannel change where numbers live, not their values (Eltwise and
Reduction are in layers/combine.py, Softmax and ArgMax in
layers/softmax.py). Shape rules and their error messages follow Caffe's,
with every bottom's shape in the message.

Backward follows Caffe's rules: the data movers move the top diffs back
(Split adds up its tops' diffs, Crop fills zeros outside its window;
Silence's bottoms and Crop's reference bottom get zero gradients);
Parameter adds the top diff to its blob's diff; ShuffleChannel undoes its
shuffle. Views (Split, Flatten, Reshape, a single-bottom Concat or
single-top Slice) copy nothing when the net has already made the diffs
one array.
"""
from __future__ import annotations

import math

import numpy as np

from netdef.layers.base import Layer, register, shape_text


def _same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` start at the same address (a view bound by the
    memory planner, or Blob.share_data): copying would be a no-op."""
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


def _copy_unless_shared(src: np.ndarray, dst: np.ndarray) -> None:
    if not _same_buffer(src, dst):
        dst[...] = src.reshape(dst.shape)


def _no_gradient(layer: Layer, propagate_down) -> None:
    """Backward of a layer Caffe does not differentiate: an error only when a
    gradient is asked for."""
    if any(propagate_down):
        asked = [i for i, down in enumerate(propagate_down) if down]
        raise layer.config_error(
            f"is not differentiable (as in Caffe), but backward was asked for the "
            f"gradient of bottom {', '.join(map(str, asked))}; bottoms: {layer.bottoms_text()}",
            hint="give the layer propagate_down: false, or do not feed its top to a loss")


def _axis_param(layer: Layer, param, legacy: str, ndim: int) -> int:
    """Concat's and Slice's axis: ``axis`` (may be negative) or the legacy
    non-negative ``legacy`` field; giving both is an error, as in Caffe."""
    if param.HasField(legacy):
        if param.HasField("axis"):
            raise layer.config_error(f"give either axis or {legacy}, not both")
        return layer.canonical_axis(getattr(param, legacy), ndim, legacy)
    return layer.canonical_axis(param.axis, ndim)


class _NotInPlace(Layer):
    """A layer whose tops must be new blobs (Caffe refuses in-place for these)."""

    def check_not_in_place(self, bottoms, tops) -> None:
        if any(t is b for t in tops for b in bottoms):
            raise self.config_error("cannot run in place; give its top a new name")


@register("Concat")
class Concat(Layer):
    """Join bottoms along ``axis`` (concat_param.axis, default 1; legacy concat_dim).

    Every other dimension must match.
    """

    num_bottoms = (1, None)
    num_tops = 1
    kind = "structure"

    def reshape(self, bottoms, tops):
        first = bottoms[0].shape
        self.axis = _axis_param(self, self.param.concat_param, "concat_dim", len(first))
        for b in bottoms[1:]:
            same = len(b.shape) == len(first) and all(
                d == e for i, (d, e) in enumerate(zip(b.shape, first, strict=True)) if i != self.axis)
            self.require(same, f"all bottoms must have the same shape except along axis "
                               f"{self.axis}")
        shape = list(first)
        shape[self.axis] = sum(b.shape[self.axis] for b in bottoms)
        tops[0].reshape(shape)

    def forward(self, bottoms, tops):
        if len(bottoms) == 1:
            _copy_unless_shared(bottoms[0].data, tops[0].data)
            return
        np.concatenate([b.data for b in bottoms], axis=self.axis, out=tops[0].data)

    def backward(self, tops, propagate_down, bottoms):
        """Each bottom's diff is its part of the top diff along the axis."""
        dy = tops[0].diff
        if len(bottoms) == 1:
            if propagate_down[0]:
                _copy_unless_shared(dy, bottoms[0].diff)
            return
        lead = (slice(None),) * self.axis
        lo = 0
        for bottom, down in zip(bottoms, propagate_down, strict=True):
            hi = lo + bottom.shape[self.axis]
            if down:
                bottom.diff[...] = dy[lead + (slice(lo, hi),)]
            lo = hi


@register("Slice")
class Slice(Layer):
    """Cut the bottom along ``axis`` (slice_param.axis, default 1; legacy slice_dim)
    at ``slice_point``s (one fewer than the tops), or into equal parts."""

    num_bottoms = 1
    num_tops = (1, None)
    kind = "structure"

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        p = self.param.slice_param
        self.axis = _axis_param(self, p, "slice_dim", len(shape))
        dim, n = shape[self.axis], len(tops)
        points = list(p.slice_point)
        if points:
            if len(points) != n - 1:
                raise self.config_error(f"{len(points)} slice_point(s) for {n} tops; "
                                        "give one fewer slice_point than tops")
            bounds = [0, *points, dim]
            for lo, hi in zip(bounds, bounds[1:], strict=False):
                self.require(hi > lo, f"slice points {points} do not cut axis {self.axis} "
                                      f"(size {dim}) into non-empty increasing parts")
        else:
            self.require(dim % n == 0, f"axis {self.axis} (size {dim}) cannot be split "
                                       f"into {n} equal parts")
            bounds = [i * dim // n for i in range(n + 1)]
        self.bounds = bounds
        for top, lo, hi in zip(tops, bounds, bounds[1:], strict=False):
            top.reshape(shape[:self.axis] + (hi - lo,) + shape[self.axis + 1:])

    def forward(self, bottoms, tops):
        x = bottoms[0].data
        lead = (slice(None),) * self.axis
        for top, lo, hi in zip(tops, self.bounds, self.bounds[1:], strict=False):
            top.data[...] = x[lead + (slice(lo, hi),)]

    def backward(self, tops, propagate_down, bottoms):
        """The bottom diff is the tops' diffs put back side by side."""
        if not propagate_down[0]:
            return
        dx = bottoms[0].diff
        if len(tops) == 1:
            _copy_unless_shared(tops[0].diff, dx)
            return
        lead = (slice(None),) * self.axis
        for top, lo, hi in zip(tops, self.bounds, self.bounds[1:], strict=False):
            dx[lead + (slice(lo, hi),)] = top.diff


@register("Split")
class Split(_NotInPlace):
    """Give a blob to several consumers: every top has the bottom's shape.

    Inserted by the graph for blobs read by several layers (each reader
    then gets its own gradient in backward). The tops alias the bottom's
    memory (``shares_data``: the memory planner binds them to the bottom's
    buffer, so forward copies nothing); unbound tops get a copy.
    """

    num_bottoms = 1
    num_tops = (1, None)
    kind = "structure"
    shares_data = True

    def reshape(self, bottoms, tops):
        self.check_not_in_place(bottoms, tops)
        for top in tops:
            top.reshape(bottoms[0].shape)

    def forward(self, bottoms, tops):
        for top in tops:
            _copy_unless_shared(bottoms[0].data, top.data)

    def backward(self, tops, propagate_down, bottoms):
        """bottom diff = the sum of every top's diff (each top has its own diff).

        Also correct when the net makes one top's diff the bottom's own
        array: that top's diff is then the starting sum.
        """
        if not propagate_down[0]:
            return
        dx = bottoms[0].diff
        diffs = [t.diff for t in tops]
        shared = [d for d in diffs if _same_buffer(d, dx)]
        if shared:
            for d in diffs:
                if d is not shared[0]:
                    dx += d
            return
        if len(diffs) == 1:
            dx[...] = diffs[0]
            return
        np.add(diffs[0], diffs[1], out=dx)
        for d in diffs[2:]:
            dx += d


@register("Flatten")
class Flatten(_NotInPlace):
    """Merge axes ``axis`` .. ``end_axis`` (flatten_param, defaults 1 and -1) into one.

    (N, C, H, W) -> (N, C*H*W) by default. The top aliases the bottom's
    memory when bound by the planner (``shares_data``), else it is a copy.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "structure"
    shares_data = True

    def reshape(self, bottoms, tops):
        self.check_not_in_place(bottoms, tops)
        shape = bottoms[0].shape
        p = self.param.flatten_param
        start = self.canonical_axis(p.axis, len(shape))
        end = self.canonical_axis(p.end_axis, len(shape), "end_axis")
        self.require(start <= end, f"flatten_param.end_axis ({p.end_axis}) comes before "
                                   f"axis ({p.axis})")
        tops[0].reshape(shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:])

    def forward(self, bottoms, tops):
        _copy_unless_shared(bottoms[0].data, tops[0].data)

    def backward(self, tops, propagate_down, bottoms):
        """The top diff, reshaped (nothing to do when the net aliases the diffs)."""
        if propagate_down[0]:
            _copy_unless_shared(tops[0].diff, bottoms[0].diff)


@register("Reshape")
class Reshape(_NotInPlace):
    """Reinterpret the bottom with reshape_param.shape, Caffe's rules:

    * ``0`` copies the bottom's dimension at the same position,
    * ``-1`` (at most once) is inferred so the element count is unchanged,
    * ``axis``/``num_axes`` restrict the replaced range to bottom axes
      [axis, axis + num_axes) (num_axes -1: through the last axis; a
      negative axis counts from the end, -1 meaning "after the last").

    The top aliases the bottom's memory when bound by the planner.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "structure"
    shares_data = True

    def setup(self, bottoms, tops):
        dims = list(self.param.reshape_param.shape.dim)
        self.copy_axes = [i for i, d in enumerate(dims) if d == 0]
        inferred = [i for i, d in enumerate(dims) if d == -1]
        if len(inferred) > 1:
            raise self.config_error(f"new shape {shape_text(dims)} has more than one -1; "
                                    "at most one dimension can be inferred")
        bad = [d for d in dims if d < -1]
        if bad:
            raise self.config_error(f"new shape {shape_text(dims)} has a negative dimension "
                                    f"{bad[0]} (only 0 = copy and -1 = infer are special)")
        self.dims = dims
        self.inferred = inferred[0] if inferred else None

    def reshape(self, bottoms, tops):
        self.check_not_in_place(bottoms, tops)
        shape = bottoms[0].shape
        p = self.param.reshape_param
        start = p.axis if p.axis >= 0 else len(shape) + p.axis + 1
        self.require(0 <= start <= len(shape), f"reshape_param.axis {p.axis} is out of range")
        if p.num_axes < -1:
            raise self.config_error(f"reshape_param.num_axes must be >= -1, got {p.num_axes}")
        end = len(shape) if p.num_axes == -1 else start + p.num_axes
        self.require(end <= len(shape), f"reshape_param.axis {p.axis} + num_axes "
                                        f"{p.num_axes} goes past the bottom's last axis")
        new = list(self.dims)
        for i in self.copy_axes:
            self.require(i < end - start, f"new shape {shape_text(self.dims)} has a 0 at "
                                          f"position {i} but there is no bottom axis to copy")
            new[i] = shape[start + i]
        count = math.prod(shape)
        if self.inferred is not None:
            known = math.prod(shape[:start]) * math.prod(shape[end:]) * math.prod(
                d for i, d in enumerate(new) if i != self.inferred)
            self.require(known > 0 and count % known == 0,
                         f"the bottom's count ({count}) is not divisible by the product of "
                         f"the given dimensions ({known}) of new shape {shape_text(self.dims)}")
            new[self.inferred] = count // known
        top_shape = shape[:start] + tuple(new) + shape[end:]
        self.require(math.prod(top_shape) == count,
                     f"new shape {shape_text(top_shape)} has {math.prod(top_shape)} elements, "
                     f"the bottom {shape_text(shape)} has {count}")
        tops[0].reshape(top_shape)

    def forward(self, bottoms, tops):
        _copy_unless_shared(bottoms[0].data, tops[0].data)

    def backward(self, tops, propagate_down, bottoms):
        """The top diff, reshaped (nothing to do when the net aliases the diffs)."""
        if propagate_down[0]:
            _copy_unless_shared(tops[0].diff, bottoms[0].diff)


@register("Crop")
class Crop(Layer):
    """Crop bottom 0 to the shape of bottom 1 from ``axis`` on (crop_param.axis,
    default 2), starting at ``offset`` (one value for all cropped axes, one per
    cropped axis, or none = 0)."""

    num_bottoms = 2
    num_tops = 1
    kind = "structure"

    def reshape(self, bottoms, tops):
        big, ref = bottoms[0].shape, bottoms[1].shape
        self.require(len(big) == len(ref), "both bottoms must have the same number of axes")
        p = self.param.crop_param
        start = self.canonical_axis(p.axis, len(big))
        offsets = list(p.offset)
        self.require(len(offsets) <= 1 or start + len(offsets) == len(big),
                     f"{len(offsets)} crop offsets for {len(big) - start} cropped axes "
                     f"({start} .. {len(big) - 1}); give one, or one per cropped axis")
        self.slices = []
        shape = []
        for i in range(len(big)):
            if i < start:
                lo, size = 0, big[i]
            else:
                lo = offsets[0] if len(offsets) == 1 else (offsets[i - start] if offsets else 0)
                size = ref[i]
                self.require(lo + size <= big[i], f"cropping axis {i} to {size} at offset {lo} "
                                                  f"goes past its size {big[i]}")
            self.slices.append(slice(lo, lo + size))
            shape.append(size)
        tops[0].reshape(shape)

    def forward(self, bottoms, tops):
        tops[0].data[...] = bottoms[0].data[tuple(self.slices)]

    def backward(self, tops, propagate_down, bottoms):
        """Bottom 0: the top diff inside the crop window, 0 outside. Bottom 1
        only gives a shape, so its gradient is 0 (written when asked for)."""
        if propagate_down[0]:
            dx = bottoms[0].diff
            dx[...] = 0.0
            dx[tuple(self.slices)] = tops[0].diff
        if propagate_down[1]:
            bottoms[1].diff[...] = 0.0


@register("Tile")
class Tile(Layer):
    """Repeat the bottom ``tiles`` times along ``axis`` (tile_param; tiles required)."""

    num_bottoms = 1
    num_tops = 1
    kind = "structure"

    def setup(self, bottoms, tops):
        p = self.param.tile_param
        if not p.HasField("tiles") or p.tiles <= 0:
            raise self.config_error("tile_param.tiles must be given and positive")
        self.tiles = p.tiles

    def reshape(self, bottoms, tops):
        shape = list(bottoms[0].shape)
        self.axis = self.canonical_axis(self.param.tile_param.axis, len(shape))
        shape[self.axis] *= self.tiles
        tops[0].reshape(shape)

    def forward(self, bottoms, tops):
        reps = [1] * bottoms[0].ndim
        reps[self.axis] = self.tiles
        tops[0].data[...] = np.tile(bottoms[0].data, reps)

    def backward(self, tops, propagate_down, bottoms):
        """Each bottom element gets the sum of the diffs of its ``tiles`` copies.

        The top is (outer, tiles, inner) with inner the bottom's count from
        ``axis`` on (every copy of that block, one after the other)."""
        if not propagate_down[0]:
            return
        shape = bottoms[0].shape
        outer, inner = math.prod(shape[:self.axis]), math.prod(shape[self.axis:])
        dy = tops[0].diff.reshape(outer, self.tiles, inner)
        np.sum(dy, axis=1, out=bottoms[0].diff.reshape(outer, inner))


@register("Silence")
class Silence(Layer):
    """Consume blobs so they are not net outputs; no tops, no forward work;
    backward gives zero gradients where asked."""

    num_bottoms = (1, None)
    num_tops = 0
    kind = "structure"

    def reshape(self, bottoms, tops):
        pass

    def forward(self, bottoms, tops):
        pass

    def backward(self, tops, propagate_down, bottoms):
        """Nothing depends on the bottoms here: their gradient is 0."""
        for bottom, down in zip(bottoms, propagate_down, strict=True):
            if down:
                bottom.diff[...] = 0.0


@register("Parameter")
class Parameter(Layer):
    """A learnable blob of parameter_param.shape, output as the top (no filler:
    the values come from weights or the solver)."""

    num_bottoms = 0
    num_tops = 1
    kind = "structure"

    def setup(self, bottoms, tops):
        self.add_param(tuple(self.param.parameter_param.shape.dim))

    def reshape(self, bottoms, tops):
        tops[0].reshape(self.blobs[0].shape)

    def forward(self, bottoms, tops):
        _copy_unless_shared(self.blobs[0].data, tops[0].data)

    def backward(self, tops, propagate_down, bottoms):
        """The blob's diff accumulates the top diff (parameter diffs add up).
        A top diff that the net made the blob's own diff is already there."""
        blob = self.blobs[0]
        if self.param_propagate_down[0] and not _same_buffer(tops[0].diff, blob.diff):
            blob.diff[...] += tops[0].diff.reshape(blob.shape)


@register("ShuffleChannel")
class ShuffleChannel(Layer):
    """ShuffleNet's channel shuffle (the ShuffleNet fork's layer): the C
    channels, read as ``group`` rows of C/group, are written column by
    column, so top channel j*group + i is bottom channel i*(C/group) + j.

    shuffle_channel_param { group } (default 1: a copy); C must be a
    multiple of group. Backward applies the inverse shuffle to the top
    diff. May run in place (it then shuffles a copy).
    """

    num_bottoms = 1
    num_tops = 1

    def setup(self, bottoms, tops):
        self.group = self.param.shuffle_channel_param.group
        if self.group <= 0:
            raise self.config_error(f"group must be positive, got {self.group}")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.require(len(shape) >= 2, "expects a bottom with a channel axis (N, C, ...)")
        self.require(shape[1] % self.group == 0,
                     f"{shape[1]} channels are not divisible by group {self.group}")
        tops[0].reshape(shape)

    def _grouped(self, a: np.ndarray, rows: int) -> np.ndarray:
        """``a`` viewed as (N, rows, C/rows, spatial)."""
        return a.reshape(a.shape[0], rows, a.shape[1] // rows, -1)

    def _shuffle(self, src: np.ndarray, dst: np.ndarray, rows: int) -> None:
        if _same_buffer(src, dst):
            src = src.copy()
        out = dst.reshape(dst.shape[0], dst.shape[1] // rows, rows, -1)
        out[...] = self._grouped(src, rows).transpose(0, 2, 1, 3)

    def forward(self, bottoms, tops):
        self._shuffle(bottoms[0].data, tops[0].data, self.group)

    def backward(self, tops, propagate_down, bottoms):
        if propagate_down[0]:
            # the inverse shuffle: the same move with C/group rows
            self._shuffle(tops[0].diff, bottoms[0].diff, tops[0].shape[1] // self.group)
