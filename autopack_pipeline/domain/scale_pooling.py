"""Each group's upper spread, partly pooled with the other groups' before the budget margins read it.

A pooled margin is ``exp(location + scale x q)`` (``domain.pooled_margin``): the group's scale (its
median-to-90th-percentile distance, from ~150 calls of a window) multiplies the one pooled bound ``q``.
That scale is an estimate, and the group with the widest estimate is the one whose budgets carry the
round's top tenth of budget / actual (length world 11 and 61, round 4: tests/medium, 0.63, 39-45% of
that tenth). Part of a wide estimate is the draw: so each group's log scale is moved ``weight`` of the
way to the groups' average log scale (weighted by their calls) before scores and bound are read,
every cross-fitting fold's scale by the same factor, so a group's scores stay on one scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from autopack_pipeline.domain.group_shape import GroupShape

# How far each group's log scale moves towards the groups' average (0: its own, 1: the average).
SCALE_POOLING_WEIGHT = 0.5


def scales_pooled(shapes: Sequence[GroupShape], weight: float = SCALE_POOLING_WEIGHT) -> list[GroupShape]:
    """``shapes`` with each scale moved ``weight`` of the way, in logs, to their call-weighted average."""
    if len(shapes) < 2 or weight == 0:
        return list(shapes)
    logs = np.log([shape.scale for shape in shapes])
    centre = float(np.average(logs, weights=[shape.observations for shape in shapes]))
    return [shape.rescaled(math.exp(weight * (centre - log))) for shape, log in zip(shapes, logs)]
