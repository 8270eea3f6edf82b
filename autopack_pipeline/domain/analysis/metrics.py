"""Tier metrics (``metrics.compute_metrics``), strata and per-group Tier-1 figures, from the arrays.

Per-row flags are computed once (:class:`_Basics`) and shared by every subset of rows; the ratio
figures come from order statistics by partition. Strata and groups are ``np.bincount`` over label
codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis.arrays import (
    EventArrays,
    budget_sent,
    budget_sent_integers,
    success_flags,
    truncated_flags,
)
from autopack_pipeline.domain.analysis.order_statistics import _summary, _summary_and_p90, p90_of
from autopack_pipeline.domain.analysis.rates import (
    STRATA_DIMENSIONS,
    check_under_multiplier,
    needs_tuning,
    percent,
    tier1_block,
)
from autopack_pipeline.domain.categories import deliverable_bucket
from autopack_pipeline.domain.targets import UNDER_TOLERANCE


@dataclass
class _Basics:
    """Per-row flags every metric needs, computed once and shared by every subset of rows.

    Token counts stay int32 in ``arrays``; float copies are made only of the rows a figure reads, and
    none at all when every count is known and non-negative (``whole``): the ratio figures then divide
    the integers themselves (numpy converts each to float64 exactly, so every quotient has the same
    bits) instead of holding float copies of both columns (160 MB at ten million events).
    A figure computed row by row is the same whether the reference computes it over all rows or a
    subset, so subsets reuse these flags instead of recomputing them.
    """

    arrays: EventArrays
    known: np.ndarray  # both token counts known
    truncated: np.ndarray
    success: np.ndarray
    whole: bool = False  # every predicted, actual and budget count known and >= 0: integers stand for floats
    _over: dict[float, np.ndarray] = field(default_factory=dict)

    @classmethod
    def of(cls, arrays: EventArrays) -> _Basics:
        known = arrays.predicted.notna() & arrays.actual.notna()
        columns = (arrays.predicted, arrays.actual, arrays.selected_budget, arrays.actual_max_tokens)
        whole = all(column.valid is None and (len(column.values) == 0 or int(column.values.min()) >= 0)
                    for column in columns)
        return cls(arrays, known, truncated_flags(arrays), success_flags(arrays), whole)

    def predicted(self, rows: np.ndarray | None) -> np.ndarray:
        return self.arrays.predicted.floats_at(rows)

    def actual(self, rows: np.ndarray | None) -> np.ndarray:
        return self.arrays.actual.floats_at(rows)

    def tokens(self, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(predicted, actual) of ``rows`` for :meth:`ratio_values`: integers when ``whole``, else floats
        with NaN where missing."""
        if self.whole:
            return _select(self.arrays.predicted.values, rows), _select(self.arrays.actual.values, rows)
        return self.predicted(rows), self.actual(rows)

    def budget(self, rows: np.ndarray | None) -> np.ndarray:
        if self.whole:  # nothing is missing: the integers themselves, no float copy
            return budget_sent_integers(self.arrays, rows)
        return budget_sent(self.arrays, rows)

    def over(self, multiplier: float) -> np.ndarray:
        if multiplier not in self._over:
            predicted, actual = self.tokens(None)
            with np.errstate(invalid="ignore"):
                self._over[multiplier] = self.known & (actual > predicted * multiplier)
        return self._over[multiplier]

    def ratio_values(self, name: str, rows: np.ndarray | None,
                     tokens: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The values the reference sorts for one figure, over ``rows`` (a mask), in row order.

        ``waste``: finite predicted/actual; ``budget_waste``: finite budget/actual with both positive;
        ``smape``: 200 * |p - a| / (|p| + |a|) over non-truncated rows with a positive finite scale.
        ``tokens``: ``self.tokens(rows)`` when the caller has them (not changed).
        """
        predicted, actual = tokens or self.tokens(rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            if name == "waste":
                values = np.divide(predicted, actual, dtype=np.float64)
                return values[np.isfinite(values)]
            if name == "budget_waste":
                budget = self.budget(rows)
                values = np.divide(budget, actual, dtype=np.float64)
                return values[np.isfinite(values) & (budget > 0) & (actual > 0)]
            if self.whole:
                # Non-negative integers: |p| + |a| exactly, in 64 bits (two int32 counts may pass 2**31).
                scale = np.add(predicted, actual, dtype=np.int64)
                usable = ~_select(self.truncated, rows) & (scale > 0)
                values = np.abs(np.subtract(predicted[usable], actual[usable], dtype=np.int64)) * 200.0
            else:
                scale = np.abs(predicted) + np.abs(actual)
                usable = ~_select(self.truncated, rows) & np.isfinite(scale) & (scale > 0)
                values = np.abs(predicted[usable] - actual[usable])
                values *= 200.0  # 200.0 * |p - a|, then / scale: the reference's order of operations
            values /= scale[usable]
            return values


def _select(values: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return values if rows is None else values[rows]


def _both(mask: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return mask if rows is None else mask & rows


def _ratio_figures(base: _Basics, parts: list[np.ndarray | None]) -> dict[str, Any]:
    """Tier-2 figures and SMAPE summaries over the union of the disjoint row masks ``parts``."""
    return _shared_ratio_figures(base, parts, [list(range(len(parts)))])[0]


def _shared_ratio_figures(base: _Basics, parts: list[np.ndarray | None], documents: list[list[int]]
                          ) -> list[dict[str, Any]]:
    """Figures for several documents, each the union of some of the disjoint ``parts``.

    Each part's values are computed once; a document partitions its own concatenation of them. One
    figure at a time, to bound memory.
    """
    out: list[dict[str, Any]] = [{} for _ in documents]
    # Each part's token counts gathered once for the three figures (converting them per figure was a
    # third of the metrics' time at ten million events), held to the last figure: the int32 counts
    # themselves when every one is known (_Basics.whole), else floats.
    tokens = [base.tokens(part) for part in parts]
    for name in ("waste", "budget_waste", "smape"):
        values = [base.ratio_values(name, part, pair) for part, pair in zip(parts, tokens)]
        uses = [sum(i in members for members in documents) for i in range(len(parts))]
        for doc, members in zip(out, documents):
            for i in members:
                uses[i] -= 1
            if len(members) > 1:
                chosen = np.concatenate([values[i] for i in members])
            else:  # the last document to read a part may reorder it in place
                chosen = values[members[0]] if uses[members[0]] == 0 else values[members[0]].copy()
            if name == "waste":
                doc["waste_ratio_median"], doc["waste_ratio_mean"], doc["waste_ratio_p90"] = _summary_and_p90(
                    chosen, overwrite=True)
            elif name == "budget_waste":
                doc["budget_waste_p90"] = p90_of(chosen, overwrite=True)
            else:
                doc["smape_median"], doc["smape_mean"] = _summary(chosen, overwrite=True)
            del chosen
        del values
    return out


def _document(arrays: EventArrays, base: _Basics, rows: np.ndarray | None, multiplier: float, figures: dict[str, Any],
              stratify: bool) -> dict[str, Any]:
    known, truncated = _select(base.known, rows), _select(base.truncated, rows)
    success = _select(base.success, rows)
    over = _select(base.over(multiplier), rows)
    total = len(known)
    truncated_count = int(truncated.sum())
    bounded = _both(base.truncated & base.known, rows)
    tier1 = _tier1_of(multiplier, known, over, truncated, success)
    document: dict[str, Any] = {
        "tier1": tier1,
        "tier2": {key: figures[key] for key in
                  ("waste_ratio_median", "waste_ratio_p90", "waste_ratio_mean", "budget_waste_p90")},
        "diagnostics": {
            "smape_mean": figures["smape_mean"],
            "smape_median": figures["smape_median"],
            "non_truncated_count": total - truncated_count,
            "truncated_count": truncated_count,
            "truncated_lower_bound": {
                "count": truncated_count,
                "predicted_mean": float(base.predicted(bounded).mean()) if bounded.any() else None,
                "actual_mean": float(base.actual(bounded).mean()) if bounded.any() else None,
                "underestimated_pct": percent(int((over & truncated).sum()), int(bounded.sum())),
            },
        },
        "needs_tuning": needs_tuning(tier1),
    }
    if stratify:
        document["strata"] = _strata(arrays, rows, multiplier, known, over, truncated, success)
    return document


def tier1_arrays(arrays: EventArrays, *, under_multiplier: float = UNDER_TOLERANCE) -> dict[str, Any]:
    """The Tier-1 block of every event alone (``compute_metrics_arrays(arrays)["tier1"]``), without
    the ratio figures and strata: counts over per-row flags, a fraction of the document's cost."""
    multiplier = check_under_multiplier(under_multiplier)
    base = _Basics.of(arrays)
    return _tier1_of(multiplier, base.known, base.over(multiplier), base.truncated, base.success)


def _tier1_of(multiplier: float, known: np.ndarray, over: np.ndarray, truncated: np.ndarray, success: np.ndarray
              ) -> dict[str, Any]:
    return tier1_block(multiplier, len(known), int(known.sum()), int(over.sum()), int(truncated.sum()),
                       int(success.sum()))


def compute_metrics_arrays(
    arrays: EventArrays,
    *,
    rows: np.ndarray | None = None,
    under_multiplier: float = UNDER_TOLERANCE,
    stratify: bool = False,
    basics: _Basics | None = None,
) -> dict[str, Any]:
    """The ``metrics --json`` document (DESIGN §10) of the events at ``rows`` (a boolean mask; None: all).

    Keys: ``tier1`` (rates with Wilson 95% intervals and their counts), ``tier2`` (waste ratio
    predicted/actual, budget waste), ``diagnostics`` (SMAPE over non-truncated events, truncated events
    as lower bounds), ``needs_tuning``, and ``strata`` (Tier 1 per category, complexity and deliverable
    bucket) with ``stratify``. Every figure is a plain ``int``, ``float``, ``bool`` or ``None``.
    """
    multiplier = check_under_multiplier(under_multiplier)
    base = basics or _Basics.of(arrays)
    return _document(arrays, base, rows, multiplier, _ratio_figures(base, [rows]), stratify)


# -- strata and groups ------------------------------------------------------------------------------


def deliverable_codes(arrays: EventArrays) -> tuple[np.ndarray, list[str]]:
    """Row codes into the sorted deliverable buckets (``1``, ``2-5``, ``6+``), by ``deliverable_bucket``."""
    counts = np.where(arrays.deliverable_count.notna(), arrays.deliverable_count.values, 0)
    if len(counts) == 0:
        return np.zeros(0, dtype=np.int32), []
    low, high = int(counts.min()), int(counts.max())
    if high - low < 100_000:  # the usual case: a lookup table over the range of counts
        buckets = [deliverable_bucket(n) for n in range(low, high + 1)]
        names = sorted(set(buckets))
        lookup = np.array([names.index(b) for b in buckets], dtype=np.int32)
        return lookup[counts - low], names
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


def _flag_bits(known: np.ndarray, over: np.ndarray, truncated: np.ndarray, success: np.ndarray) -> np.ndarray:
    # The four Tier-1 flags of a row in one small integer, so one bincount counts them all.
    return known.astype(np.uint8) | (over.astype(np.uint8) << 1) | (truncated.astype(np.uint8) << 2) | (
        success.astype(np.uint8) << 3)


def _tier1_by_code(codes: np.ndarray, names: list, bits: np.ndarray, multiplier: float) -> dict[Any, dict[str, Any]]:
    """The Tier-1 block of the rows of each code (``names[code]``), for the codes that have rows."""
    size = len(names)
    counts = np.bincount(codes.astype(np.int64) * 16 + bits, minlength=size * 16).reshape(size, 16)
    totals = counts.sum(axis=1)
    patterns = np.arange(16)
    flagged = [counts[:, (patterns >> bit) & 1 == 1].sum(axis=1) for bit in range(4)]
    return {
        names[i]: tier1_block(multiplier, int(totals[i]), int(flagged[0][i]), int(flagged[1][i]),
                              int(flagged[2][i]), int(flagged[3][i]))
        for i in range(size) if totals[i] > 0
    }


def _strata(arrays: EventArrays, rows: np.ndarray | None, multiplier: float, known: np.ndarray, over: np.ndarray,
            truncated: np.ndarray, success: np.ndarray) -> dict[str, dict[str, Any]]:
    bits = _flag_bits(known, over, truncated, success)
    return {dimension: _tier1_by_code(_select(codes, rows), names, bits, multiplier)
            for dimension in STRATA_DIMENSIONS for codes, names in [dimension_codes(arrays, dimension)]}


def group_tier1_arrays(arrays: EventArrays, *, under_multiplier: float = UNDER_TOLERANCE
                       ) -> dict[tuple[str, str], dict[str, Any]]:
    """The Tier-1 block of every canonical (category, complexity) group's events, sorted by group."""
    multiplier = check_under_multiplier(under_multiplier)
    return _group_tier1(arrays, _Basics.of(arrays), multiplier)


def _group_tier1(arrays: EventArrays, base: _Basics, multiplier: float) -> dict[tuple[str, str], dict[str, Any]]:
    named = arrays.canonical_groups
    cat_codes, cat_names, cx_codes, cx_names = (named.category, named.category_names, named.complexity,
                                                named.complexity_names)
    pairs = [(c, x) for c in cat_names for x in cx_names]  # code = category * len(cx_names) + complexity
    codes = cat_codes.astype(np.int64) * len(cx_names) + cx_codes
    bits = _flag_bits(base.known, base.over(multiplier), base.truncated, base.success)
    return _tier1_by_code(codes, pairs, bits, multiplier)


def tier_metrics_document_arrays(
    arrays: EventArrays, *, under_multiplier: float = UNDER_TOLERANCE, clean_samples: int,
) -> dict[str, Any]:
    """The tier-metrics asset's document: all events with strata, success-only, and the clean count.

    The successful and the other rows are the two parts both documents are made of.
    """
    multiplier = check_under_multiplier(under_multiplier)
    return _tier_metrics_document(arrays, _Basics.of(arrays), multiplier, clean_samples)


def tier_metrics_with_group_tier1_arrays(
    arrays: EventArrays, *, under_multiplier: float = UNDER_TOLERANCE, clean_samples: int,
) -> tuple[dict[str, Any], dict[tuple[str, str], dict[str, Any]]]:
    """(:func:`tier_metrics_document_arrays`, :func:`group_tier1_arrays`) of the same events, from one
    set of per-row flags: the group blocks count the flags the document counts (the calibration gate
    reads them; computing them apart converted both token columns of every event to floats again)."""
    multiplier = check_under_multiplier(under_multiplier)
    base = _Basics.of(arrays)
    return _tier_metrics_document(arrays, base, multiplier, clean_samples), _group_tier1(arrays, base, multiplier)


def _tier_metrics_document(arrays: EventArrays, base: _Basics, multiplier: float, clean_samples: int
                           ) -> dict[str, Any]:
    every, successful = _shared_ratio_figures(base, [base.success, ~base.success], [[0, 1], [0]])
    return {
        "all_events": _document(arrays, base, None, multiplier, every, stratify=True),
        "success_only": _document(arrays, base, base.success, multiplier, successful, stratify=False),
        "clean_samples": int(clean_samples),
    }
