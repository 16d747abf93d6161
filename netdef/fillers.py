"""Weight fillers: Caffe's initialisers, reproducible from a seed.

``fill(shape, filler_param, rng)`` returns a new float32 array. The formulas
are Caffe's (include/caffe/filler.hpp); the random stream is NumPy's, so a
given seed reproduces netdef's weights on every run, not Caffe's.

Fan definitions follow Caffe's Blob accessors: for a blob of shape
(num, channels, ...), ``fan_in = count / num`` and ``fan_out = count / channels``
(integer division; a 1-axis blob has channels = 1). For a convolution weight
(out, in, kh, kw) that is in*kh*kw and out*kh*kw; for an inner-product weight
(out, in) it is in and out.

Only ``gaussian`` supports ``sparse``; as in Caffe the others reject it.
"""
from __future__ import annotations

import math

import numpy as np

from netdef.errors import NetdefError, did_you_mean
from netdef.frontend.schema import pb


def make_rng(seed: int | None = None) -> np.random.Generator:
    """The generator every filler draws from.

    An integer seed >= 0 gives the same weights on every run; None or a
    negative seed (Caffe's ``random_seed: -1`` default) draws fresh entropy.
    """
    if seed is None or seed < 0:
        return np.random.default_rng()
    return np.random.default_rng(seed)


def _fans(shape: tuple[int, ...], count: int) -> tuple[int, int]:
    num = shape[0] if len(shape) >= 1 else 1
    channels = shape[1] if len(shape) >= 2 else 1
    return count // num, count // channels


def _variance_n(shape, count, p) -> float:
    fan_in, fan_out = _fans(shape, count)
    norm = pb.FillerParameter
    if p.variance_norm == norm.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if p.variance_norm == norm.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _uniform(rng, shape, low, high) -> np.ndarray:
    # float32 draws keep a 60M-weight fc layer cheap; scale/shift as Caffe does.
    return (rng.random(shape, dtype=np.float32) * np.float32(high - low)
            + np.float32(low)).astype(np.float32, copy=False)


def _gaussian(rng, shape, mean, std) -> np.ndarray:
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            + np.float32(mean)).astype(np.float32, copy=False)


def _constant(shape, count, p, rng, where):
    if p.value == 0:
        return np.zeros(shape, dtype=np.float32)   # calloc: pages appear on first touch
    return np.full(shape, p.value, dtype=np.float32)


def _uniform_filler(shape, count, p, rng, where):
    if p.min > p.max:
        raise NetdefError(f"uniform filler: min {p.min} > max {p.max}", where=where)
    return _uniform(rng, shape, p.min, p.max)


def _gaussian_filler(shape, count, p, rng, where):
    if p.std <= 0:
        raise NetdefError(f"gaussian filler: std must be > 0, got {p.std}", where=where)
    data = _gaussian(rng, shape, p.mean, p.std)
    if p.sparse >= 0:
        # Each weight survives with probability sparse / num_outputs, so every
        # input keeps `sparse` non-zero outgoing weights on average.
        num_outputs = shape[0] if shape else 1
        keep = p.sparse / num_outputs
        if keep > 1:
            raise NetdefError(f"gaussian filler: sparse {p.sparse} exceeds the "
                              f"{num_outputs} outputs (shape[0])", where=where)
        data *= rng.random(shape, dtype=np.float32) < keep
    return data


def _positive_unitball(shape, count, p, rng, where):
    data = _uniform(rng, shape, 0.0, 1.0)
    num = shape[0] if shape else 1
    rows = data.reshape(num, -1)
    rows /= rows.sum(axis=1, keepdims=True)
    return data


def _xavier(shape, count, p, rng, where):
    scale = math.sqrt(3.0 / _variance_n(shape, count, p))
    return _uniform(rng, shape, -scale, scale)


def _msra(shape, count, p, rng, where):
    std = math.sqrt(2.0 / _variance_n(shape, count, p))
    return _gaussian(rng, shape, 0.0, std)


def _bilinear(shape, count, p, rng, where):
    if len(shape) != 4 or shape[2] != shape[3]:
        raise NetdefError(f"bilinear filler needs a 4-D blob with a square kernel, "
                          f"got shape {tuple(shape)}", where=where)
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    # The same (k, k) interpolation kernel for every (out, in) pair.
    t = 1.0 - np.abs(np.arange(k, dtype=np.float32) / np.float32(f) - np.float32(c))
    return np.broadcast_to(np.outer(t, t).astype(np.float32), shape).copy()


_FILLERS = {
    "constant": _constant,
    "uniform": _uniform_filler,
    "gaussian": _gaussian_filler,
    "positive_unitball": _positive_unitball,
    "xavier": _xavier,
    "msra": _msra,
    "bilinear": _bilinear,
}

KNOWN_FILLERS = tuple(_FILLERS)


def fill(shape, filler: pb.FillerParameter | None, rng: np.random.Generator,
         where: str | None = None) -> np.ndarray:
    """A new float32 array of ``shape`` filled as ``filler`` says.

    ``filler=None`` gives zeros (a constant 0 filler); each layer passes its
    own default when its prototxt gives none. A callable ``filler(shape,
    rng)`` gives its own values (a Python layer's blobs keep what its setup
    wrote). ``where`` (e.g. "layer 'conv1' (Convolution)") prefixes error
    messages.
    """
    shape = tuple(int(d) for d in shape)
    if filler is None:
        return np.zeros(shape, dtype=np.float32)
    if callable(filler):
        return np.asarray(filler(shape, rng), dtype=np.float32).reshape(shape)
    kind = filler.type
    impl = _FILLERS.get(kind)
    if impl is None:
        known = "known fillers: " + ", ".join(KNOWN_FILLERS)
        close = did_you_mean(kind, KNOWN_FILLERS)
        hint = f"{close} {known}" if close else known
        raise NetdefError(f"unknown filler type {kind!r}", where=where, hint=hint)
    if kind != "gaussian" and filler.sparse != -1:
        raise NetdefError(f"{kind} filler does not support 'sparse' (only gaussian does)",
                          where=where)
    if kind == "gaussian" and filler.sparse < -1:
        raise NetdefError(f"gaussian filler: sparse must be >= -1, got {filler.sparse}",
                          where=where)
    count = math.prod(shape)
    if count == 0:
        return np.zeros(shape, dtype=np.float32)
    return impl(shape, count, filler, rng, where)
