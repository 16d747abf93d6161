"""Which layers run backward, and into which bottoms: Caffe's rules.

A pass over the instantiated steps, in three sweeps (as Caffe's Net::Init):

1. Forward: a bottom needs a gradient when the blob it reads needs one
   (``propagate_down``, when written, overrides per bottom); a layer needs
   backward when a bottom does or a parameter learns (``lr_mult`` != 0);
   its tops then need gradients too.
2. Backward from the losses: a layer that no loss depends on needs no
   backward; a layer none of whose tops receives a gradient needs none
   either. A top contributes to the loss when it has a ``loss_weight``
   (loss layers weigh top 0 by 1 unless told otherwise).
3. ``force_backward``: every layer runs backward and every bottom the
   layer can differentiate gets a gradient (a loss's labels never do).

The results live on each Step: ``need_backward``, ``propagate_down`` (per
bottom) and ``loss_weights`` (per top), and on each layer's
``param_propagate_down`` (per parameter blob), so that backward computes
nothing that no one will read.
"""
from __future__ import annotations

from netdef.compile.instantiate import Instance, Step


def loss_weights(step: Step) -> list[float]:
    """Caffe's loss weight of each top: ``loss_weight`` as written, else 1 for
    a loss layer's first top, else 0."""
    written = list(step.node.param.loss_weight)
    n = len(step.tops)
    if written:
        return [float(w) for w in written[:n]] + [0.0] * max(0, n - len(written))
    if step.layer.is_loss and n:
        return [1.0] + [0.0] * (n - 1)
    return [0.0] * n


def topless_loss_weight(step: Step) -> float:
    """A loss layer written without a top still counts (Caffe gives it an
    anonymous top)."""
    if step.tops or not step.layer.is_loss:
        return 0.0
    written = step.node.param.loss_weight
    return float(written[0]) if len(written) else 1.0


def lr_mults(step: Step) -> list[float]:
    specs = step.node.param.param
    layer = step.layer
    out = []
    for j in range(len(layer.blobs)):
        if not layer.learnable[j]:
            out.append(0.0)
        elif j < len(specs) and specs[j].HasField("lr_mult"):
            out.append(float(specs[j].lr_mult))
        else:
            out.append(1.0)
    return out


def mark_backward(inst: Instance, force_backward: bool = False) -> list[str]:
    """Set need_backward / propagate_down / loss_weights on every step of
    ``inst`` and param_propagate_down on every layer. Returns log lines."""
    steps = [s for s in inst.steps if s.ready]
    needs_grad: set[int] = set()                   # ids of blobs that need a diff
    for step in steps:
        layer = step.layer
        written = list(step.node.param.propagate_down)
        down = []
        for j, bottom in enumerate(step.bottoms):
            want = id(bottom) in needs_grad
            if written and j < len(written):
                want = bool(written[j])
            down.append(want)
        params = [m != 0.0 for m in lr_mults(step)]
        layer.param_propagate_down = params
        need = any(down) or any(params)
        step.propagate_down = down
        step.need_backward = need
        step.loss_weights = loss_weights(step)
        if need:
            needs_grad.update(id(t) for t in step.tops)

    under_loss: set[int] = set()
    skip: set[int] = set()                          # blobs whose diff nobody computes
    for step in reversed(steps):
        contributes = topless_loss_weight(step) != 0.0
        skip_down = True
        for top, weight in zip(step.tops, step.loss_weights):
            if weight != 0.0 or id(top) in under_loss:
                contributes = True
            if id(top) not in skip:
                skip_down = False
        if not step.tops:
            skip_down = False
        if not contributes or (step.need_backward and skip_down):
            step.need_backward = False
            step.propagate_down = [False] * len(step.bottoms)
        for j, bottom in enumerate(step.bottoms):
            if contributes:
                under_loss.add(id(bottom))
            if not step.propagate_down[j]:
                skip.add(id(bottom))
        if not step.need_backward:
            step.layer.param_propagate_down = [False] * len(step.layer.blobs)

    if force_backward:
        for step in steps:
            refuse = set(getattr(step.layer, "no_force_backward", ()))
            step.propagate_down = [down or j not in refuse
                                   for j, down in enumerate(step.propagate_down)]
            step.layer.param_propagate_down = [m != 0.0 for m in lr_mults(step)]
            # a source layer without parameters has nothing to differentiate
            step.need_backward = any(step.propagate_down) or any(
                step.layer.param_propagate_down)
    for step in steps:
        if hasattr(step.layer, "needs_backward"):
            step.layer.needs_backward = step.need_backward
    running = [s.name for s in steps if s.need_backward]
    log = [f"backward: {len(running)} of {len(steps)} layers run backward"
           + (" (force_backward)" if force_backward else "")]
    return log
