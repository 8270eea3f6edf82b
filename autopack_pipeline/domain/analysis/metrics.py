"""Tier metrics (``metrics.compute_metrics``), strata and per-group Tier-1 figures, from the arrays.

Per-row flags are computed once (:class:`_Basics`) and shared by every subset of rows; the ratio
figures come from order statistics by partition. Strata and groups are ``np.bincount`` over label
codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis.arrays import (
    CHUNK_ROWS,
    EventArrays,
    budget_sent,
    budget_sent_integers,
    kept_slices,
    rows_of_masks,
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
from autopack_pipeline.domain.analysis.strata_codes import dimension_codes
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
    # Per multiplier, every row's count per (category x complexity code, flag pattern), when the strata
    # of every row counted them (:func:`_strata`).
    group_cells: dict[float, np.ndarray] = field(default_factory=dict)

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
            over = np.empty(len(actual), dtype=bool)
            with np.errstate(invalid="ignore"):
                for start in range(0, len(actual), CHUNK_ROWS):  # no 80 MB product of every row (CHUNK_ROWS)
                    end = start + CHUNK_ROWS
                    np.greater(actual[start:end], predicted[start:end] * multiplier, out=over[start:end])
            # Every count known (whole): ``known`` is all True, and the AND a copy of ``over``.
            self._over[multiplier] = over if self.whole else self.known & over
        return self._over[multiplier]

    def ratio_values(self, name: str, rows: np.ndarray | None,
                     tokens: tuple[np.ndarray, np.ndarray] | None = None,
                     out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """(the values the reference sorts for one figure over ``rows`` (a mask or indices), in that
        order; which of those rows have one, None when all do).

        ``waste``: finite predicted/actual; ``budget_waste``: finite budget/actual with both positive;
        ``smape``: 200 * |p - a| / (|p| + |a|) over non-truncated rows with a positive finite scale.
        ``tokens``: ``self.tokens(rows)`` when the caller has them (not changed). ``out``: a float64 array
        of one value per row the values may be computed in, overwritten; the values returned may be it, so
        it must not be used again while they are. Each figure at ten million rows otherwise maps a fresh
        80 MB or two, whose pages the kernel zeroes on first touch.
        Each value is computed for every row and the rows without one dropped after, in one gather (the
        same operations per value as on the kept rows alone, which took three gathers).
        """
        predicted, actual = tokens or self.tokens(rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            if name == "waste":
                values = np.divide(predicted, actual, dtype=np.float64, out=out)
                return _kept(values, np.isfinite(values))
            if name == "budget_waste":
                budget = self.budget(rows)
                values = np.divide(budget, actual, dtype=np.float64, out=out)
                return _kept(values, np.isfinite(values) & (budget > 0) & (actual > 0))
            if self.whole and max(predicted.itemsize, actual.itemsize) <= 4:
                # Non-negative 32-bit integers: |p| + |a| and p - a exactly, as float64 (below 2**33, where
                # float64 holds every integer: the values the integers convert to). A slice at a time, the
                # scale in one small array: a scale per row was 140 MB of fresh pages at ten million events.
                values = np.empty(len(actual)) if out is None else out
                usable = ~_select(self.truncated, rows)
                scale = np.empty(min(CHUNK_ROWS, len(actual)))
                for start in range(0, len(actual), CHUNK_ROWS):
                    end = start + CHUNK_ROWS
                    mine = values[start:end]
                    own = np.add(predicted[start:end], actual[start:end], dtype=np.float64, out=scale[:len(mine)])
                    usable[start:end] &= own > 0
                    np.subtract(predicted[start:end], actual[start:end], dtype=np.float64, out=mine)
                    np.abs(mine, out=mine)
                    mine *= 200.0
                    mine /= own
                return _kept(values, usable)
            if self.whole:
                # Non-negative integers: |p| + |a| exactly, in 64 bits.
                scale = np.add(predicted, actual, dtype=np.int64)
                usable = ~_select(self.truncated, rows) & (scale > 0)
                values = np.abs(np.subtract(predicted, actual, dtype=np.int64)) * 200.0
            else:
                scale = np.abs(predicted) + np.abs(actual)
                usable = ~_select(self.truncated, rows) & np.isfinite(scale) & (scale > 0)
                values = np.abs(predicted - actual)
                values *= 200.0  # 200.0 * |p - a|, then / scale: the reference's order of operations
            values /= scale
            return _kept(values, usable)


def _kept(values: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(``values`` where ``keep``, ``keep``), or (``values``, None) when every one is kept (no copy).
    ``values`` is :meth:`_Basics.ratio_values`' own array: the kept ones are moved to its front a slice at
    a time (CHUNK_ROWS), where a boolean gather of every row was a fresh array (80 MB at 10M rows)."""
    if keep.all():
        return values, None
    at = 0  # where the kept ones go
    for mine in kept_slices(values, keep, CHUNK_ROWS):
        values[at:at + len(mine)] = mine  # at <= the slice's start: nothing not yet read is written over
        at += len(mine)
    return values[:at], keep


def _select(values: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return values if rows is None else values[rows]


def _ratio_figures(base: _Basics, parts: list[np.ndarray | None]) -> dict[str, Any]:
    """Tier-2 figures and SMAPE summaries over the union of the disjoint row masks ``parts``."""
    return _shared_ratio_figures(base, parts, [list(range(len(parts)))])[0]


def _shared_ratio_figures(base: _Basics, parts: list[np.ndarray | None], documents: list[list[int]]
                          ) -> list[dict[str, Any]]:
    """Figures for several documents, each the union of a run of consecutive ``parts`` (disjoint masks).

    The rows are put in one order, each part's ascending and the parts one after the other, and each
    figure's values are computed once over them: a document's values are a slice of those, in the order
    its parts' values concatenated had (its mean, numpy's pairwise sum, depends on the order). Before,
    each part's values were computed apart (a boolean gather of every column per part) and concatenated
    per document. One figure at a time, to bound memory.
    """
    if any(members != list(range(members[0], members[-1] + 1)) for members in documents):
        raise ValueError("a document's parts must be consecutive")
    total = len(base.known)
    if len(parts) == 1:
        rows, ends = parts[0], [total if parts[0] is None else int(np.count_nonzero(parts[0]))]
    else:
        rows, ends = rows_of_masks(parts, total)
    # The token counts gathered once for the three figures: the int32 counts themselves when every one is
    # known (_Basics.whole), else floats.
    tokens = base.tokens(rows)
    # The buffer every figure's values are computed in, in turn (each figure is done with its values before
    # the next one's are computed).
    buffer = np.empty(len(tokens[0]), dtype=np.float64)
    out: list[dict[str, Any]] = [{} for _ in documents]
    # Without copies when every value is a non-negative number (_Basics.whole: no NaN, no -0.0, so equal
    # values have equal bits) and no two documents' parts partly overlap: each document's values are then
    # partitioned in place, the smaller documents first. A partition reorders values within a document's
    # slice only, so a document containing it still holds its own values (the order statistics read the
    # values, not their order), and the means are taken before anything is reordered. Else the largest
    # document last: it reorders the values in place; the others partition a copy.
    in_place = base.whole and _nested(documents)
    if in_place:
        order = sorted(range(len(documents)), key=lambda d: (len(documents[d]), d))
    else:
        last = max(range(len(documents)), key=lambda d: (len(documents[d]), -d))
        order = [d for d in range(len(documents)) if d != last] + [last]
    for name in ("waste", "budget_waste", "smape"):
        values, kept = base.ratio_values(name, rows, tokens, out=buffer)
        bounds = [0] + [end if kept is None else int(np.count_nonzero(kept[:end])) for end in ends]
        del kept
        slices = [values[bounds[members[0]]:bounds[members[-1] + 1]] for members in documents]
        means = ([float(chosen.mean()) if len(chosen) else None for chosen in slices]
                 if in_place and name != "budget_waste" else [None] * len(documents))
        for d in order:
            chosen = slices[d] if in_place or d == last else slices[d].copy()
            doc, mean = out[d], means[d]
            if name == "waste":
                doc["waste_ratio_median"], doc["waste_ratio_mean"], doc["waste_ratio_p90"] = _summary_and_p90(
                    chosen, overwrite=True, mean=mean)
            elif name == "budget_waste":
                doc["budget_waste_p90"] = p90_of(chosen, overwrite=True)
            else:
                doc["smape_median"], doc["smape_mean"] = _summary(chosen, overwrite=True, mean=mean)
            del chosen
        del values, slices
    return out


def _nested(documents: list[list[int]]) -> bool:
    """No two documents (runs of consecutive parts) partly overlap: each pair is disjoint or one holds the other."""
    spans = [(members[0], members[-1]) for members in documents]
    return all(b_end < a_start or a_end < b_start or (a_start <= b_start and b_end <= a_end)
               or (b_start <= a_start and a_end <= b_end)
               for i, (a_start, a_end) in enumerate(spans) for (b_start, b_end) in spans[i + 1:])


def _document(arrays: EventArrays, base: _Basics, rows: np.ndarray | None, multiplier: float, figures: dict[str, Any],
              stratify: bool) -> dict[str, Any]:
    over = base.over(multiplier)

    def count(flags: np.ndarray) -> int:  # of the rows: an AND and a count, not a gather of every flag per subset
        return int(np.count_nonzero(flags if rows is None else flags & rows))

    total = len(base.known) if rows is None else int(np.count_nonzero(rows))
    truncated_count = count(base.truncated)
    # The truncated calls with both counts (a tenth of the calls) as row numbers: two gathers of those rows,
    # not two boolean gathers over every row (the same values in the same order, so the same means).
    bounded = np.flatnonzero(base.truncated & base.known if rows is None else base.truncated & base.known & rows)
    bounded_count = len(bounded)
    tier1 = tier1_block(multiplier, total, count(base.known), count(over), truncated_count, count(base.success))
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
                "predicted_mean": float(base.predicted(bounded).mean()) if bounded_count else None,
                "actual_mean": float(base.actual(bounded).mean()) if bounded_count else None,
                "underestimated_pct": percent(count(over & base.truncated), bounded_count),
            },
        },
        "needs_tuning": needs_tuning(tier1),
    }
    if stratify:
        document["strata"] = _strata(arrays, base, rows, multiplier)
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


def _flag_bits(known: np.ndarray, over: np.ndarray, truncated: np.ndarray, success: np.ndarray) -> np.ndarray:
    # The four Tier-1 flags of a row in one small integer, so one bincount counts them all.
    # Booleans are bytes 0 and 1: read as uint8 in place (views), not converted.
    bits = over.view(np.uint8) << 1
    bits |= known.view(np.uint8)
    bits |= truncated.view(np.uint8) << 2
    bits |= success.view(np.uint8) << 3
    return bits


def _blocks(counts: np.ndarray, names: list, multiplier: float) -> dict[Any, dict[str, Any]]:
    """The Tier-1 block of each code (``names[code]``) from its row counts per flag pattern (``counts[code]``,
    16 patterns of :func:`_flag_bits`), for the codes that have rows."""
    totals = counts.sum(axis=1)
    patterns = np.arange(16)
    flagged = [counts[:, (patterns >> bit) & 1 == 1].sum(axis=1) for bit in range(4)]
    return {
        names[i]: tier1_block(multiplier, int(totals[i]), int(flagged[0][i]), int(flagged[1][i]),
                              int(flagged[2][i]), int(flagged[3][i]))
        for i in range(len(names)) if totals[i] > 0
    }


def _tier1_by_code(codes: np.ndarray, names: list, bits: np.ndarray, multiplier: float) -> dict[Any, dict[str, Any]]:
    """The Tier-1 block of the rows of each code (``names[code]``), for the codes that have rows."""
    size = len(names)
    return _blocks(np.bincount(codes.astype(np.int64) * 16 + bits, minlength=size * 16).reshape(size, 16), names,
                   multiplier)


# Above this many (category, complexity, deliverables, flags) cells, each dimension is counted apart.
_MAX_CELLS = 1 << 20


def _strata(arrays: EventArrays, base: _Basics, rows: np.ndarray | None, multiplier: float
            ) -> dict[str, dict[str, Any]]:
    """Tier 1 per category, complexity and deliverable bucket of the events at ``rows`` (a mask; None: all)."""
    dimensions = [dimension_codes(arrays, dimension) for dimension in STRATA_DIMENSIONS]
    sizes = [len(names) for _codes, names in dimensions]
    bits = _select(_flag_bits(base.known, base.over(multiplier), base.truncated, base.success), rows)
    if math.prod(sizes) * 16 > _MAX_CELLS:
        return {dimension: _tier1_by_code(_select(codes, rows), names, bits, multiplier)
                for dimension, (codes, names) in zip(STRATA_DIMENSIONS, dimensions)}
    # One bincount of every row's (category, complexity, deliverables, flags) cell (each dimension's counts its sums),
    # a slice at a time in bincount's intp (int32 columns were copied to int64 inside it: 0.15-0.22 -> 0.10 s at 10M).
    columns = [_select(codes, rows) for codes, _names in dimensions]
    counts = np.zeros(math.prod(sizes) * 16, dtype=np.intp)
    for start in range(0, len(bits), CHUNK_ROWS):
        cell = columns[0][start:start + CHUNK_ROWS].astype(np.intp)
        for more, size in zip(columns[1:], sizes[1:]):
            cell *= size
            cell += more[start:start + CHUNK_ROWS]
        cell *= 16
        cell += bits[start:start + CHUNK_ROWS]
        counts += np.bincount(cell, minlength=len(counts))
    counts = counts.reshape(*sizes, 16)
    if rows is None:
        # The groups' Tier 1 (_group_tier1) counts the same rows' (category, complexity) cells.
        base.group_cells[multiplier] = counts.sum(axis=2).reshape(sizes[0] * sizes[1], 16)
    return {dimension: _blocks(counts.sum(axis=tuple(a for a in range(3) if a != axis)), names, multiplier)
            for axis, (dimension, (_codes, names)) in enumerate(zip(STRATA_DIMENSIONS, dimensions))}


def group_tier1_arrays(arrays: EventArrays, *, under_multiplier: float = UNDER_TOLERANCE
                       ) -> dict[tuple[str, str], dict[str, Any]]:
    """The Tier-1 block of every canonical (category, complexity) group's events, sorted by group."""
    multiplier = check_under_multiplier(under_multiplier)
    return _group_tier1(arrays, _Basics.of(arrays), multiplier)


def _group_tier1(arrays: EventArrays, base: _Basics, multiplier: float) -> dict[tuple[str, str], dict[str, Any]]:
    named = arrays.canonical_groups
    cat_names, cx_names = named.category_names, named.complexity_names
    pairs = [(c, x) for c in cat_names for x in cx_names]  # code = category * len(cx_names) + complexity
    if multiplier in base.group_cells:  # counted with the strata already
        return _blocks(base.group_cells[multiplier], pairs, multiplier)
    codes = named.category.astype(np.int64) * len(cx_names) + named.complexity
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
