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
    "DepthwiseConvolution": _he,
    "ConvolutionDepthwise": _he,
    "InnerProduct": _he,
    "Deconvolution": _deconv,
    "BatchNorm": _batchnorm,
    "Scale": _scale,
    "PReLU": lambda blobs, rng: blobs[0].bind(
        data=rng.uniform(0.0, 0.5, blobs[0].shape).astype(np.float32)),
}


# ---------------------------------------------------------------------------
# Gradient checking (Caffe's GradientChecker, in NumPy)
# ---------------------------------------------------------------------------

class GradientCheckError(AssertionError):
    """A computed gradient disagrees with the finite-difference estimate."""


class GradientChecker:
    """Compare a layer's (or net's) backward with central finite differences.

    The objective is Caffe's: ``L = 1/2 * sum(top^2)`` over the checked tops
    (so every top diff is the top's data), or one element ``L = top[i]``
    when ``top_index``/``top_element`` name it. For each checked element x:
    estimate ``(L(x + h) - L(x - h)) / 2h`` and require

        |computed - estimate| <= threshold * max(|computed|, |estimate|, 1)

    Elements whose inputs sit within ``kink_range`` of ``kink`` are skipped
    (ReLU at 0, max pooling ties): the function is not differentiable there.
    The objective is summed in float64 from the float32 tops, so the only
    rounding is the layer's own. Parameter blobs are checked too (their
    diffs are accumulated by backward: the checker zeroes them first).

    ``seed`` makes stochastic layers (Dropout, stochastic pooling) repeat
    their random draws: the checker reseeds ``layer.rng`` before every
    forward pass when the layer has one.
    """

    def __init__(self, stepsize: float = 1e-2, threshold: float = 1e-3, *,
                 kink: float = 0.0, kink_range: float = -1.0, seed: int = 1701,
                 max_elements: int | None = 400):
        self.stepsize = stepsize
        self.threshold = threshold
        self.kink = kink
        self.kink_range = kink_range
        self.seed = seed
        # Large blobs are sampled (seeded) instead of checked exhaustively.
        self.max_elements = max_elements

    # ---- layer mode -------------------------------------------------------
    def check_layer(self, layer, bottoms, tops, check_bottoms=None, *,
                    top_index: int | None = None, top_element: int | None = None,
                    check_params: bool = True) -> int:
        """Check every bottom in ``check_bottoms`` (default: all) and the
        parameter blobs against finite differences. ``bottoms``/``tops`` are
        the layer's wired Blobs (set up and reshaped). Returns the number of
        elements checked; raises GradientCheckError on the first mismatch."""
        if check_bottoms is None:
            check_bottoms = range(len(bottoms))
        check_bottoms = list(check_bottoms)
        propagate = [i in check_bottoms for i in range(len(bottoms))]
        if hasattr(layer, "param_propagate_down"):
            layer.param_propagate_down = [check_params] * len(layer.blobs)
        targets = [(f"bottom {i} '{bottoms[i].name}'", bottoms[i]) for i in check_bottoms]
        if check_params:
            targets += [(f"param {j}", blob) for j, blob in enumerate(layer.blobs)
                        if not hasattr(layer, "learnable") or layer.learnable[j]]

        def objective() -> float:
            self._reseed(layer)
            layer.forward(bottoms, tops)
            return self._loss(tops, top_index, top_element)

        def gradients() -> None:
            for blob in layer.blobs:
                blob.diff[...] = 0.0
            for i in check_bottoms:
                bottoms[i].diff[...] = 0.0
            objective()
            self._seed_top_diffs(tops, top_index, top_element)
            layer.backward(tops, propagate, bottoms)

        return self._compare(targets, objective, gradients, inputs=bottoms)

    # ---- net mode ---------------------------------------------------------
    def check_net(self, net, blob_names, *, params=True,
                  max_elements: int | None = None) -> int:
        """Check d(loss)/d(blob) of ``net`` for the named input blobs and the
        parameters (all with ``params=True``, or those of the layers named
        in a list; ``max_elements`` samples each blob) by finite differences of ``net.forward()``'s
        total loss. The net must have a loss; its data must stay fixed
        between calls (feed its inputs: ``net.forward(data=..., label=...)``
        once before). Random layers are reseeded before every pass."""
        targets = [(f"blob '{n}'", net.blobs[n]) for n in blob_names]
        if params:
            chosen = net.params if params is True else {n: net.params[n] for n in params}
            for name, blobs in chosen.items():
                for j, blob in enumerate(blobs):
                    targets.append((f"layer '{name}' param {j}", blob))
        saved = self.max_elements
        if max_elements is not None:
            self.max_elements = max_elements
        try:
            def objective() -> float:
                net.reseed(self.seed)        # the same Dropout masks every pass
                return float(net.forward_loss())

            def gradients() -> None:
                net.reseed(self.seed)
                net.forward_backward(clear=True)

            return self._compare(targets, objective, gradients,
                                 inputs=[net.blobs[n] for n in blob_names])
        finally:
            self.max_elements = saved

    # ---- internals ----------------------------------------------------------
    def _reseed(self, layer) -> None:
        if hasattr(layer, "rng"):
            layer.rng = np.random.default_rng(self.seed)

    @staticmethod
    def _loss(tops, top_index, top_element) -> float:
        if top_index is not None:
            flat = tops[top_index].data.reshape(-1)
            if top_element is None:
                return 0.5 * float(np.dot(flat.astype(np.float64), flat))
            return float(flat[top_element])
        return 0.5 * sum(float(np.dot(t.data.reshape(-1).astype(np.float64),
                                      t.data.reshape(-1))) for t in tops)

    @staticmethod
    def _seed_top_diffs(tops, top_index, top_element) -> None:
        for k, top in enumerate(tops):
            if top_index is None:
                top.diff[...] = top.data
            elif k != top_index:
                top.diff[...] = 0.0
            elif top_element is None:
                top.diff[...] = top.data
            else:
                top.diff[...] = 0.0
                top.diff.reshape(-1)[top_element] = 1.0

    def _sample(self, count: int, rng) -> np.ndarray:
        if self.max_elements is None or count <= self.max_elements:
            return np.arange(count)
        return np.sort(rng.choice(count, self.max_elements, replace=False))

    def _compare(self, targets, objective, gradients, inputs) -> int:
        gradients()
        computed = [blob.diff.copy() for _, blob in targets]
        input_values = [b.data.copy() for b in inputs]
        rng = np.random.default_rng(self.seed)
        h = self.stepsize
        checked = 0
        for (what, blob), grad in zip(targets, computed):
            flat = blob.data.reshape(-1)
            for i in self._sample(flat.size, rng):
                if self._at_kink(inputs, input_values, blob, i):
                    continue
                original = flat[i]
                flat[i] = original + h
                plus = objective()
                flat[i] = original - h
                minus = objective()
                flat[i] = original
                estimate = (plus - minus) / (2.0 * h)
                value = float(grad.reshape(-1)[i])
                scale = max(abs(value), abs(estimate), 1.0)
                if abs(value - estimate) > self.threshold * scale:
                    raise GradientCheckError(
                        f"{what}, element {i} (index {tuple(int(k) for k in np.unravel_index(i, blob.shape))}): "
                        f"backward gives {value:.6g}, finite differences {estimate:.6g} "
                        f"(step {h}, tolerance {self.threshold * scale:.3g})")
                checked += 1
        objective()     # leave the tops as computed from the unperturbed inputs
        return checked

    def _at_kink(self, inputs, values, blob, i) -> bool:
        if self.kink_range < 0:
            return False
        for b, v in zip(inputs, values):
            if b is blob:
                return abs(float(v.reshape(-1)[i]) - self.kink) < self.kink_range
        return False
