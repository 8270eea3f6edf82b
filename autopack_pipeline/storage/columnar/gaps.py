"""PostgreSQL's id gaps: ids missing below the high-water mark, asked for again on every refresh for
``GAP_RETENTION_SECONDS`` (a transaction may commit an id below one already seen)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np

from autopack_pipeline.storage.columnar.encoding import GAP_RETENTION_SECONDS, MAX_GAP_RANGES


def _now() -> float:
    return time.time()


def live_gaps(manifest: dict[str, Any]) -> list[list]:
    now = _now()
    return [g for g in manifest.get("gaps", []) if now - g[2] < GAP_RETENTION_SECONDS]


def update_gaps(manifest: dict[str, Any], ids: np.ndarray, asked: list[list], top: int, dialect: str) -> None:
    """The gaps after a refresh that found ``ids`` (re-asking ``asked``): the ids still missing in the gaps
    asked again, and the new holes below the new mark."""
    if dialect == "sqlite":
        manifest["gaps"] = []
        return
    found = np.unique(ids)
    ranges: list[list] = []
    for lo, hi, seen in asked:  # re-asked gaps: keep the ids still missing
        inside = found[(found >= lo) & (found <= hi)]
        edges = np.r_[lo - 1, inside, hi + 1]
        for a, b in itertools.pairwise(edges):
            if b - a > 1:
                ranges.append([int(a + 1), int(b - 1), seen])
    fresh = found[found > manifest["high_water_event_id"]]
    edges = np.r_[manifest["high_water_event_id"], fresh]
    now = _now()
    for a, b in itertools.pairwise(edges):
        if b - a > 1:
            ranges.append([int(a + 1), int(b - 1), now])
    manifest["gaps"] = ranges[-MAX_GAP_RANGES:]
