"""Helpers for testing nets and layers (shipped so users can test theirs).

``randomize_weights`` gives every parameter blob seeded random values scaled
so that activations stay of order one through deep nets: He-style weights
for conv/dense layers, plausible running statistics for BatchNorm. Fillers
from a deploy prototxt are usually absent (constant 0), which makes a poor
test: every output would be equal.
"""
from __future__ import annotations

import math

import numpy as np


def randomize_weights(net, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        layer_type = next(layer.type for layer in net.layers if layer.name == name)
        fill = _FILLS.get(layer_type, _fill_generic)
        fill(blobs, rng)
    net.random_weights = True
    net.params_changed()


def _he(blobs, rng) -> None:
    w = blobs[0]
    fan_in = w.count // w.shape[0] if w.shape and w.shape[0] else 1
    w.data = rng.standard_normal(w.shape).astype(np.float32) * math.sqrt(2.0 / max(fan_in, 1))
    for b in blobs[1:]:
        b.data = (rng.standard_normal(b.shape) * 0.1).astype(np.float32)


def _deconv(blobs, rng) -> None:
    w = blobs[0]
    fan_in = w.count // w.shape[1] if len(w.shape) > 1 and w.shape[1] else 1
    w.data = rng.standard_normal(w.shape).astype(np.float32) * math.sqrt(1.0 / max(fan_in, 1))
    for b in blobs[1:]:
        b.data = (rng.standard_normal(b.shape) * 0.1).astype(np.float32)


def _batchnorm(blobs, rng) -> None:
    factor = float(rng.uniform(0.5, 2.0))
    mean, var = blobs[0], blobs[1]
    mean.data = (rng.standard_normal(mean.shape) * 0.1 * factor).astype(np.float32)
    var.data = (rng.uniform(0.5, 1.5, var.shape) * factor).astype(np.float32)
    if len(blobs) > 2:
        blobs[2].data = np.full(blobs[2].shape, factor, np.float32)


def _scale(blobs, rng) -> None:
    # Below 1 on average: residual nets add branches up, stage after stage.
    blobs[0].data = rng.uniform(0.2, 0.6, blobs[0].shape).astype(np.float32)
    for b in blobs[1:]:
        b.data = (rng.standard_normal(b.shape) * 0.1).astype(np.float32)


def _fill_generic(blobs, rng) -> None:
    for b in blobs:
        b.data = (rng.standard_normal(b.shape) * 0.1).astype(np.float32)


_FILLS = {
    "Convolution": _he,
    "InnerProduct": _he,
    "Deconvolution": _deconv,
    "BatchNorm": _batchnorm,
    "Scale": _scale,
    "PReLU": lambda blobs, rng: blobs[0].bind(
        data=rng.uniform(0.0, 0.5, blobs[0].shape).astype(np.float32)),
}
