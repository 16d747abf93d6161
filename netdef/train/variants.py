"""The SGD variants: each is the SGD pipeline with its own ``compute_update``.

``local_rate`` is rate * lr_mult; ``diff`` arrives normalized and
regularized and leaves holding the step that ``data -= diff`` applies.
``self.history`` holds ``history_per_param`` arrays per parameter (all
first arrays, then all second ones), which is also their order in a
solverstate (Caffe's). delta, momentum, momentum2 and rms_decay are the
solver fields of the same names.
"""
from __future__ import annotations

import math

import numpy as np

from netdef.errors import NetdefError
from netdef.train.base import register_solver
from netdef.train.sgd import F32, SGDSolver


@register_solver("Nesterov")
class NesterovSolver(SGDSolver):
    """Nesterov's accelerated gradient, Caffe's form:
    h' = momentum * h + local_rate * diff;  step = (1 + momentum) * h' - momentum * h."""

    def compute_update(self, i, info, local_rate):
        h, diff = self.history[i], info.blob.diff
        m = F32(self.param.momentum)
        old = self.scratch(h.shape)
        old[...] = h
        diff *= local_rate
        h *= m
        h += diff
        np.multiply(h, F32(1) + m, out=diff)
        old *= m
        diff -= old


class _NoMomentum(SGDSolver):
    def check_param(self):
        if self.param.momentum != 0:
            raise NetdefError(f"momentum cannot be used with {self.type} (got "
                              f"{self.param.momentum:g})", where=self.config.where("momentum"),
                              hint="remove momentum, or use type: \"SGD\" or \"Nesterov\"")


@register_solver("AdaGrad")
class AdaGradSolver(_NoMomentum):
    """AdaGrad: h += diff^2;  step = local_rate * diff / (sqrt(h) + delta)."""

    def compute_update(self, i, info, local_rate):
        h, diff = self.history[i], info.blob.diff
        tmp = self.scratch(h.shape)
        np.multiply(diff, diff, out=tmp)
        h += tmp
        np.sqrt(h, out=tmp)
        tmp += F32(self.param.delta)
        diff /= tmp
        diff *= local_rate


@register_solver("RMSProp")
class RMSPropSolver(_NoMomentum):
    """RMSProp: h = rms_decay * h + (1 - rms_decay) * diff^2;
    step = local_rate * diff / (sqrt(h) + delta)."""

    def check_param(self):
        super().check_param()
        decay = self.param.rms_decay
        if not 0 <= decay <= 1:
            raise NetdefError(f"rms_decay must lie in [0, 1], got {decay:g}",
                              where=self.config.where("rms_decay"))

    def compute_update(self, i, info, local_rate):
        h, diff = self.history[i], info.blob.diff
        decay = F32(self.param.rms_decay)
        tmp = self.scratch(h.shape)
        np.multiply(diff, diff, out=tmp)
        tmp *= F32(1) - decay
        h *= decay
        h += tmp
        np.sqrt(h, out=tmp)
        tmp += F32(self.param.delta)
        diff /= tmp
        diff *= local_rate


@register_solver("AdaDelta")
class AdaDeltaSolver(SGDSolver):
    """AdaDelta (momentum is the decay rate): with g = diff,
    h1 = m * h1 + (1 - m) * g^2;  s = g * sqrt((h2 + delta) / (h1 + delta));
    h2 = m * h2 + (1 - m) * s^2;  step = local_rate * s  (base_lr is usually 1)."""

    history_per_param = 2

    def compute_update(self, i, info, local_rate):
        n = len(self.params)
        h1, h2, diff = self.history[i], self.history[n + i], info.blob.diff
        m, delta = F32(self.param.momentum), F32(self.param.delta)
        update, temp = self.scratch(h1.shape, 0), self.scratch(h1.shape, 1)
        np.multiply(diff, diff, out=update)
        update *= F32(1) - m
        h1 *= m
        h1 += update
        np.add(h2, delta, out=update)
        np.add(h1, delta, out=temp)
        update /= temp
        np.sqrt(update, out=update)
        diff *= update
        np.multiply(diff, diff, out=update)
        update *= F32(1) - m
        h2 *= m
        h2 += update
        diff *= local_rate


@register_solver("Adam")
class AdamSolver(SGDSolver):
    """Adam (momentum = beta1, momentum2 = beta2, delta = epsilon), Caffe's
    bias correction folded into the rate: with t = iter + 1,
    m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g^2;
    step = local_rate * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + delta)."""

    history_per_param = 2

    def compute_update(self, i, info, local_rate):
        n = len(self.params)
        m, v, diff = self.history[i], self.history[n + i], info.blob.diff
        b1, b2 = self.param.momentum, self.param.momentum2
        t = self.iter + 1
        correction = F32(math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t))
        tmp = self.scratch(m.shape)
        np.multiply(diff, F32(1) - F32(b1), out=tmp)
        m *= F32(b1)
        m += tmp
        np.multiply(diff, diff, out=tmp)
        tmp *= F32(1) - F32(b2)
        v *= F32(b2)
        v += tmp
        np.sqrt(v, out=tmp)
        tmp += F32(self.param.delta)
        np.divide(m, tmp, out=diff)
        diff *= local_rate * correction
