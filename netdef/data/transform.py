"""Caffe's DataTransformer: ``transform_param`` applied to C x H x W items.

Per item, in Caffe's order of random draws: a coin for ``mirror`` (flipped
in every phase, as Caffe does, when ``mirror: true``), then the crop window
(``crop_size``: random in TRAIN, centred in TEST, ``(H - crop) // 2``).
The output is ``(x - mean) * scale`` over the window, read right to left
when mirrored:

    out[c, y, x'] = (item[c, oy + y, ox + x] - mean[c, oy + y, ox + x]) * scale

with x' = crop - 1 - x when mirrored. ``mean_file`` (a ``.binaryproto`` or
``.npy``) must have the item's full (C, H, W) shape and is cropped at the
same window; ``mean_value`` is one value for every channel or one per
channel. ``force_color``/``force_gray`` choose how encoded images are
decoded (``color``), not this arithmetic.

The mean file is read on first use, so shape-only tools (summary, check)
work where it is absent.
"""
from __future__ import annotations

import numpy as np

from netdef.errors import InputError


class DataTransformer:
    """``DataTransformer(transform_param, phase, rng)``; ``t(item)`` transforms
    one item, ``t.transform_batch(items, rng, out)`` a batch of equal-shaped
    items. ``search_path`` (directories) is where a relative ``mean_file``
    is looked for after the current directory; ``who`` prefixes messages
    (e.g. "layer 'data' (Data)")."""

    def __init__(self, param=None, phase="TEST", rng=None, *, search_path=None,
                 who: str | None = None):
        from netdef.frontend.schema import pb, phase_value

        param = param if param is not None else pb.TransformationParameter()
        self.phase = phase_value(phase)
        self.train = self.phase == pb.TRAIN
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.who = f"{who}: " if who else ""
        self.search_path = search_path
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        self.crop_size = int(param.crop_size)
        self.mean_file = param.mean_file if param.HasField("mean_file") else None
        if self.mean_file and len(param.mean_value):
            raise InputError(f"{self.who}transform_param sets both mean_file and mean_value; "
                             "give one of them", where=self.mean_file)
        if param.force_color and param.force_gray:
            raise InputError(f"{self.who}transform_param sets both force_color and force_gray; "
                             "give one of them")
        # How encoded images are decoded: 3 channels, 1, or as stored.
        self.color = True if param.force_color else False if param.force_gray else None
        self._mean_image = None
        self.mean_values = np.array(param.mean_value, dtype=np.float32) if \
            len(param.mean_value) else None

    # ---- shapes ---------------------------------------------------------
    def output_shape(self, shape) -> tuple[int, ...]:
        """The transformed shape of a (C, H, W) or (N, C, H, W) shape."""
        shape = tuple(int(d) for d in shape)
        if not self.crop_size:
            return shape
        return shape[:-2] + (self.crop_size, self.crop_size)

    def check_shape(self, shape) -> None:
        """Raise InputError unless items of (C, H, W) ``shape`` can be
        transformed (crop size, number of mean values; the mean file is
        checked when it is read)."""
        c, h, w = (int(d) for d in shape)
        if self.crop_size and (self.crop_size > h or self.crop_size > w):
            raise InputError(f"{self.who}crop_size {self.crop_size} is larger than the data "
                             f"item {h}x{w}")
        if self.mean_values is not None and self.mean_values.size not in (1, c):
            raise InputError(f"{self.who}transform_param has {self.mean_values.size} "
                             f"mean_value entries for {c} channels",
                             hint="give one value or one per channel")

    @property
    def mean_image(self) -> np.ndarray | None:
        """The (C, H, W) mean of ``mean_file``, read on first use."""
        if self.mean_file and self._mean_image is None:
            from netdef.data.paths import find_file
            from netdef.io.binaryproto import read_mean

            path = find_file(self.mean_file, self.search_path) or self.mean_file
            try:
                self._mean_image = read_mean(path)
            except InputError as e:
                raise InputError(f"{self.who}mean_file: {e.message}", where=e.where,
                                 hint=e.hint) from None
        return self._mean_image

    def _mean_for(self, shape):
        shape = tuple(shape)
        if self.mean_file:
            mean = self.mean_image
            if mean.shape != shape:
                raise InputError(f"{self.who}the mean has shape {mean.shape} but the data items "
                                 f"are {shape}; Caffe needs them equal", where=self.mean_file)
            return mean
        if self.mean_values is None:
            return None
        c = shape[0]
        self.check_shape(shape)
        return np.broadcast_to(self.mean_values, (c,)).reshape(c, 1, 1).copy()

    # ---- transforming ------------------------------------------------------
    def __call__(self, item) -> np.ndarray:
        """Transform one C x H x W item (uint8 or float) to float32."""
        x = np.asarray(item)
        if x.ndim != 3:
            raise InputError(f"{self.who}a data item must be C x H x W, got shape {x.shape}")
        return self.transform_batch([x])[0]

    def transform_batch(self, items, rng=None, out=None) -> np.ndarray:
        """Transform items of one (C, H, W) shape into ``out`` (N, C', H', W')
        float32 (allocated when None), drawing from ``rng`` (default: ours)."""
        rng = self.rng if rng is None else rng
        items = items if isinstance(items, (list, tuple)) else list(np.asarray(items))
        shape = tuple(np.shape(items[0]))
        self.check_shape(shape)
        mean = self._mean_for(shape)
        pixelwise = mean is not None and mean.shape[1:] != (1, 1)
        _, h, w = shape
        size = self.crop_size
        out_shape = (len(items), *self.output_shape(shape))
        if out is None:
            out = np.empty(out_shape, np.float32)
        scale = np.float32(self.scale)
        if not self.mirror and not (size and self.train):
            # No random draw: one window for the whole batch, a few array ops.
            for i, x in enumerate(items):
                if np.shape(x) != shape:
                    raise InputError(f"{self.who}data item {i} has shape {np.shape(x)}, item "
                                     f"0 has {shape}; a batch needs one shape")
            window = (slice(None),)
            if size:
                oy, ox = (h - size) // 2, (w - size) // 2
                window = (slice(None), slice(oy, oy + size), slice(ox, ox + size))
            self._apply(np.stack(items)[(slice(None),) + window],
                        mean[window] if pixelwise else mean, scale, out)
            return out
        for i, x in enumerate(items):
            if np.shape(x) != shape:
                raise InputError(f"{self.who}data item {i} has shape {np.shape(x)}, item 0 "
                                 f"has {shape}; a batch needs one shape")
            mirrored = self.mirror and bool(rng.integers(2))
            window = (slice(None),)
            if size:
                if self.train:
                    oy, ox = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
                else:
                    oy, ox = (h - size) // 2, (w - size) // 2
                window = (slice(None), slice(oy, oy + size), slice(ox, ox + size))
            src = x[window]
            m = mean[window] if pixelwise else mean
            if mirrored:
                src = src[:, :, ::-1]
                m = m[:, :, ::-1] if pixelwise else m
            self._apply(src, m, scale, out[i])
        return out

    @staticmethod
    def _apply(src, mean, scale, dst) -> None:
        """dst = (src - mean) * scale, in float32, in as few passes as it takes."""
        if mean is not None:
            np.subtract(src, mean, out=dst, dtype=np.float32)
            if scale != 1:
                dst *= scale
        elif scale != 1:
            np.multiply(src, scale, out=dst, dtype=np.float32)
        else:
            dst[...] = src
