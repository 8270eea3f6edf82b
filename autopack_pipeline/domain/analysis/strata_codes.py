"""Row codes of the strata dimensions (category, complexity, deliverable bucket) that the tier metrics
count Tier 1 by (``metrics._strata``)."""

from __future__ import annotations

import numpy as np

from autopack_pipeline.domain.analysis.arrays import EventArrays
from autopack_pipeline.domain.categories import deliverable_bucket


def deliverable_codes(arrays: EventArrays) -> tuple[np.ndarray, list[str]]:
    """Row codes into the sorted deliverable buckets (``1``, ``2-5``, ``6+``), by ``deliverable_bucket``."""
    column = arrays.deliverable_count
    counts = column.values if column.valid is None else np.where(column.valid, column.values, 0)
    if len(counts) == 0:
        return np.zeros(0, dtype=np.int32), []
    low, high = int(counts.min()), int(counts.max())
    if high - low < 100_000:  # the usual case: a lookup table over the range of counts
        buckets = [deliverable_bucket(n) for n in range(low, high + 1)]
        names = sorted(set(buckets))
        # int8 codes (three buckets): a quarter of int32 codes' memory. Indexed by the counts themselves
        # when none is negative (the entries below the least are never read): no shifted copy of them.
        shift = min(low, 0)
        lookup = np.zeros(high + 1 - shift, dtype=np.int8 if len(names) < 128 else np.int32)
        lookup[low - shift:] = [names.index(b) for b in buckets]
        return lookup[counts if shift == 0 else counts - shift], names
    uniques, codes = np.unique(counts, return_inverse=True)
    buckets = [deliverable_bucket(int(n)) for n in uniques]
    names = sorted(set(buckets))
    lookup = np.array([names.index(b) for b in buckets], dtype=np.int32)
    return lookup[codes], names


def dimension_codes(arrays: EventArrays, dimension: str) -> tuple[np.ndarray, list[str]]:
    """Row codes into the sorted canonical labels of one strata dimension."""
    if dimension == "deliverables":
        return deliverable_codes(arrays)
    named = arrays.canonical_groups
    if dimension == "category":
        return named.category, named.category_names
    return named.complexity, named.complexity_names
