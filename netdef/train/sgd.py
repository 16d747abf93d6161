"""SGD and the update pipeline every variant shares (Caffe's SGDSolver).

``apply_update`` runs, once per iteration:

    rate = lr_policy(iter)
    clip_gradients      scale every diff by clip / ||all diffs||_2 when above clip
    per parameter:
      normalize         diff /= iter_size (the diffs of iter_size passes were summed)
      regularize        diff += weight_decay * decay_mult * (data | sign(data))  (L2 | L1)
      compute_update    the rule: SGD's  h = momentum * h + rate * lr_mult * diff;  diff = h
    update              data -= diff

Variants (netdef.train.variants) override ``compute_update`` (and, when
they keep more state, ``history_per_param``). Arithmetic is float32 with
float32 scalars, as Caffe's float solver; scratch space is one buffer the
size of the largest parameter, reused, so a step allocates nothing.
"""
from __future__ import annotations

import math

import numpy as np

from netdef.train.base import Solver, register_solver

F32 = np.float32


@register_solver("SGD")
class SGDSolver(Solver):
    """Stochastic gradient descent with momentum (Caffe's SGDSolver)."""

    _scratch: list | None = None

    def apply_update(self) -> None:
        p = self.param
        rate = self.get_learning_rate()
        self.rate = rate
        if p.display and self.iter % p.display == 0:
            self.log(f"Iteration {self.iter}, lr = {rate:g}")
        self.clip_gradients()
        for i, info in enumerate(self.params):
            self.normalize(info)
            self.regularize(info)
            self.compute_update(i, info, F32(rate) * F32(info.lr_mult))
        for info in self.params:
            np.subtract(info.blob.data, info.blob.diff, out=info.blob.data)

    # ---- the pipeline ------------------------------------------------------
    def clip_gradients(self) -> None:
        clip = self.param.clip_gradients
        if clip < 0:
            return
        sumsq = 0.0
        for info in self.params:
            d = info.blob.diff.ravel()
            sumsq += float(np.dot(d, d))
        norm = math.sqrt(sumsq)
        if norm > clip:
            scale = F32(clip / norm)
            self.log(f"Gradient clipping: scaling down gradients (L2 norm {norm:g} > {clip:g}) "
                     f"by scale factor {scale:g}")
            for info in self.params:
                info.blob.diff *= scale

    def normalize(self, info) -> None:
        if self.param.iter_size != 1:
            info.blob.diff *= F32(1.0) / F32(self.param.iter_size)

    def regularize(self, info) -> None:
        decay = F32(self.param.weight_decay) * F32(info.decay_mult)
        if not decay:
            return
        data, diff = info.blob.data, info.blob.diff
        tmp = self.scratch(data.shape)
        if self.param.regularization_type == "L2":
            np.multiply(data, decay, out=tmp)
        else:                                   # "L1" (checked when the solver is read)
            np.sign(data, out=tmp)
            tmp *= decay
        diff += tmp

    def compute_update(self, i: int, info, local_rate) -> None:
        """history = momentum * history + local_rate * diff; diff = history."""
        h, diff = self.history[i], info.blob.diff
        diff *= local_rate
        h *= F32(self.param.momentum)
        h += diff
        diff[...] = h

    # ---- helpers ---------------------------------------------------------------
    def scratch(self, shape, k: int = 0) -> np.ndarray:
        """Scratch buffer ``k`` viewed with ``shape`` (contents undefined)."""
        if self._scratch is None:
            size = max((info.blob.count for info in self.params), default=0)
            self._scratch = [np.empty(size, F32) for _ in range(2)]
        return self._scratch[k][:math.prod(shape)].reshape(shape)
