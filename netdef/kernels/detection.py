"""Greedy non-maximum suppression for DetectionOutput, as the SSD fork does it.

Dtypes: boxes float32 (P, 4) C-contiguous [xmin, ymin, xmax, ymax]
(normalised coordinates); order and keep int64 1-D; nms_threshold and eta
Python floats. The IoU is computed in float32, as the fork's float code
does, so boxes at exactly the threshold are kept or dropped the same way.
"""
from __future__ import annotations

import numpy as np

from netdef.kernels._jit import helper, kernel


@helper
def _area(x0, y0, x1, y1):
    # An inverted box (xmax < xmin or ymax < ymin) has no area, as in the fork.
    if x1 < x0 or y1 < y0:
        return np.float32(0.0)
    return (x1 - x0) * (y1 - y0)


@kernel
def nms_keep(boxes, order, nms_threshold, eta, keep):
    """Write the kept indices of ``order`` (candidates, best first) into ``keep``.

    A candidate is kept when its IoU with every box kept before it is at
    most the threshold; after each keep the threshold is multiplied by
    ``eta`` while it is above 0.5 (the fork's adaptive NMS; eta 1 leaves it
    alone). Returns how many were kept (the first entries of ``keep``).
    """
    threshold = np.float32(nms_threshold)
    factor = np.float32(eta)
    count = 0
    for t in range(order.shape[0]):
        i = order[t]
        ax0, ay0, ax1, ay1 = boxes[i, 0], boxes[i, 1], boxes[i, 2], boxes[i, 3]
        area_a = _area(ax0, ay0, ax1, ay1)
        ok = True
        for k in range(count):
            j = keep[k]
            bx0, by0, bx1, by1 = boxes[j, 0], boxes[j, 1], boxes[j, 2], boxes[j, 3]
            inter = _area(max(ax0, bx0), max(ay0, by0), min(ax1, bx1), min(ay1, by1))
            if inter > 0:
                overlap = inter / (area_a + _area(bx0, by0, bx1, by1) - inter)
                if overlap > threshold:
                    ok = False
                    break
        if ok:
            keep[count] = i
            count += 1
            if factor < 1 and threshold > 0.5:
                threshold *= factor
    return count
