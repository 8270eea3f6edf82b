"""PostgreSQL's id gaps: ids missing below the high-water mark, asked for again on every refresh for
``GAP_RETENTION_SECONDS`` (a transaction may commit an id below one already seen)."""

from __future__ import annotations

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
    found = _distinct_ascending(ids)
    ranges: list[list] = []
    for lo, hi, seen in asked:  # re-asked gaps: keep the ids still missing
        inside = found[np.searchsorted(found, lo, side="left"):np.searchsorted(found, hi, side="right")]
        ranges += [[first, last, seen] for first, last in _holes(np.r_[lo - 1, inside, hi + 1])]
    fresh = found[np.searchsorted(found, manifest["high_water_event_id"], side="right"):]
    now = _now()
    ranges += [[first, last, now] for first, last in _holes(np.r_[manifest["high_water_event_id"], fresh])]
    manifest["gaps"] = ranges[-MAX_GAP_RANGES:]


def _distinct_ascending(ids: np.ndarray) -> np.ndarray:
    """``np.unique(ids)``, by a sort and a comparison of neighbours: numpy 2.4's ``np.unique`` looks values up in a
    hash table first, which took 0.9 s for a million distinct ids (3.8 s for three million) where this takes
    0.01-0.07 s; the ids come in ascending batches, which the stable sort (timsort) merges."""
    ordered = np.sort(ids, kind="stable")
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered


def _holes(edges: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) of each run of ids missing between neighbours of the ascending ``edges``, found in numpy:
    a loop over every id took a second per million ids read from PostgreSQL."""
    at = np.flatnonzero(np.diff(edges) > 1)
    return list(zip((edges[at] + 1).tolist(), (edges[at + 1] - 1).tolist(), strict=True))
