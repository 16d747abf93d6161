"""Structure layers: move, copy, join, split, reshape and reduce blobs.

Concat, Slice, Split, Flatten, Reshape, Crop, Tile, Silence and Parameter
change where numbers live, not their values; Eltwise and Reduction combine
values elementwise or along axes; Softmax and ArgMax turn scores into
probabilities or indices. Shape rules and their error messages follow
Caffe's, with every bottom's shape in the message.
"""
from __future__ import annotations

import math

import numpy as np

from netdef.layers.base import Layer, register, shape_text
from netdef.frontend.schema import pb


def _same_buffer(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` start at the same address (a view bound by the
    memory planner, or Blob.share_data): copying would be a no-op."""
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


def _copy_unless_shared(src: np.ndarray, dst: np.ndarray) -> None:
    if not _same_buffer(src, dst):
        dst[...] = src.reshape(dst.shape)


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


@register("Silence")
class Silence(Layer):
    """Consume blobs so they are not net outputs; no tops, no work."""

    num_bottoms = (1, None)
    num_tops = 0
    kind = "structure"

    def reshape(self, bottoms, tops):
        pass

    def forward(self, bottoms, tops):
        pass


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


_ELTWISE = pb.EltwiseParameter


@register("Eltwise")
class Eltwise(Layer):
    """Combine same-shaped bottoms elementwise: PROD, SUM (default; optional
    ``coeff`` per bottom) or MAX (keeps the arg-max ``mask`` for backward).

    Caffe breaks a tie between the first two bottoms towards bottom 1 and
    later ties towards the earlier bottom; the kernels reproduce that.
    """

    num_bottoms = (2, None)
    num_tops = 1
    kind = "elementwise"

    def setup(self, bottoms, tops):
        p = self.param.eltwise_param
        self.operation = p.operation
        coeff = list(p.coeff)
        if coeff and self.operation != _ELTWISE.SUM:
            raise self.config_error("eltwise_param.coeff is only allowed with operation SUM")
        if coeff and len(coeff) != len(bottoms):
            raise self.config_error(f"{len(coeff)} coeff values for {len(bottoms)} bottoms; "
                                    "give one per bottom")
        self.coeff = [float(c) for c in coeff] or [1.0] * len(bottoms)
        self.mask = None

    def reshape(self, bottoms, tops):
        first = bottoms[0].shape
        self.require(all(b.shape == first for b in bottoms), "all bottoms must have the same shape")
        tops[0].reshape(first)

    def forward(self, bottoms, tops):
        from netdef.kernels import elementwise as k

        out = tops[0].data
        flat = [np.ascontiguousarray(b.data).reshape(-1) for b in bottoms]
        dst = out.reshape(-1)
        if self.operation == _ELTWISE.SUM:
            # scale input 0 first: in place, top is bottom 0
            np.multiply(flat[0], np.float32(self.coeff[0]), out=dst)
            for x, c in zip(flat[1:], self.coeff[1:], strict=True):
                k.eltwise_sum(dst, x, c)
        elif self.operation == _ELTWISE.PROD:
            dst[...] = flat[0]
            for x in flat[1:]:
                k.eltwise_prod(dst, x)
        else:
            self.mask = np.empty(dst.size, np.int64)
            k.eltwise_max_pair(flat[0], flat[1], dst, self.mask)
            for i, x in enumerate(flat[2:], start=2):
                k.eltwise_max(dst, x, self.mask, i)


_REDUCTION = pb.ReductionParameter


@register("Reduction")
class Reduction(Layer):
    """Reduce axes ``axis`` .. last to one number: SUM, ASUM (sum of |x|),
    SUMSQ (sum of x^2) or MEAN, times ``coeff``. The top's shape is the
    bottom's first ``axis`` dims (axis 0, the default: a scalar, shape ())."""

    num_bottoms = 1
    num_tops = 1
    kind = "elementwise"

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.axis = self.canonical_axis(self.param.reduction_param.axis, len(shape))
        tops[0].reshape(shape[:self.axis])

    def forward(self, bottoms, tops):
        p = self.param.reduction_param
        x = bottoms[0].data
        rows = x.reshape(math.prod(x.shape[:self.axis]), -1).astype(np.float64)
        if p.operation == _REDUCTION.ASUM:
            rows = np.abs(rows)
        elif p.operation == _REDUCTION.SUMSQ:
            rows = rows * rows
        result = rows.sum(axis=1)
        if p.operation == _REDUCTION.MEAN:
            result /= max(rows.shape[1], 1)
        tops[0].data[...] = (result * p.coeff).reshape(tops[0].shape)


@register("Softmax")
class Softmax(Layer):
    """y = exp(x - max) / sum(exp(x - max)) along ``axis`` (softmax_param.axis, default 1)."""

    num_bottoms = 1
    num_tops = 1
    kind = "softmax"

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        self.axis = self.canonical_axis(self.param.softmax_param.axis, len(shape))
        tops[0].reshape(shape)

    def forward(self, bottoms, tops):
        softmax_forward(bottoms[0].data, tops[0].data, self.axis)


def softmax_forward(x: np.ndarray, out: np.ndarray, axis: int) -> None:
    """Softmax of ``x`` along ``axis`` into ``out`` (may be ``x``); shared with the losses."""
    from netdef.kernels.softmax import softmax

    shape = x.shape
    x3 = np.ascontiguousarray(x).reshape(math.prod(shape[:axis]), shape[axis], -1)
    if out.flags.c_contiguous:
        softmax(x3, out.reshape(x3.shape))
    else:
        tmp = np.empty(x3.shape, np.float32)
        softmax(x3, tmp)
        out[...] = tmp.reshape(shape)


@register("ArgMax")
class ArgMax(Layer):
    """Indices of the ``top_k`` largest values (ties: the larger index first, as Caffe).

    Without ``axis``: per item of axis 0, over all its other values; the top
    is (N, 1, top_k) -- (N, 2, top_k) with ``out_max_val`` (indices, then
    values) -- padded with 1s to the bottom's rank, Caffe's exact shape.
    With ``axis``: that axis becomes top_k; ``out_max_val`` then outputs the
    values instead of the indices.
    """

    num_bottoms = 1
    num_tops = 1
    kind = "output"

    def setup(self, bottoms, tops):
        p = self.param.argmax_param
        self.top_k, self.out_max_val = int(p.top_k), bool(p.out_max_val)
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise self.config_error("argmax_param.top_k must be at least 1")

    def reshape(self, bottoms, tops):
        shape = bottoms[0].shape
        if self.has_axis:
            self.axis = self.canonical_axis(self.param.argmax_param.axis, len(shape))
            self.require(self.top_k <= shape[self.axis],
                         f"top_k ({self.top_k}) is larger than axis {self.axis} (size "
                         f"{shape[self.axis]})")
            top = list(shape)
            top[self.axis] = self.top_k
        else:
            per_item = math.prod(shape[1:])
            self.require(self.top_k <= per_item, f"top_k ({self.top_k}) is larger than the "
                                                 f"{per_item} values per item")
            top = [1] * max(len(shape), 3)
            top[0], top[1], top[2] = shape[0], 2 if self.out_max_val else 1, self.top_k
        tops[0].reshape(top)

    def forward(self, bottoms, tops):
        x = bottoms[0].data
        if self.has_axis:
            idx, val = _top_k_last(np.moveaxis(x, self.axis, -1), self.top_k)
            result = val if self.out_max_val else idx
            tops[0].data[...] = np.moveaxis(result, -1, self.axis)
            return
        n = x.shape[0]
        idx, val = _top_k_last(x.reshape(n, -1), self.top_k)
        out = tops[0].data.reshape(n, -1)
        out[:, :self.top_k] = idx
        if self.out_max_val:
            out[:, self.top_k:] = val


def _top_k_last(x: np.ndarray, k: int):
    """Indices and values of the k largest entries along the last axis, largest
    first, ties broken towards the larger index (Caffe's pair ordering)."""
    dim = x.shape[-1]
    rev = x[..., ::-1]
    order = np.argsort(-rev, axis=-1, kind="stable")[..., :k]
    return dim - 1 - order, np.take_along_axis(rev, order, axis=-1)
