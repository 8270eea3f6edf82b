"""Per (category, complexity) group: the frontier and what each proposal changes in money and capacity.

Glue between the event arrays and the pure :mod:`~autopack_pipeline.domain.frontier` and
:mod:`~autopack_pipeline.domain.cost`: the frontier reads the group's coverage observations (clean
ratios, truncated calls censored); the cost reads every stored attempt of the group (all are billed).
Two proposals are priced when they exist: the frontier's cheapest (m, b), and the calibration's own
multiplier with each call's current margin (budget / prediction when above the floor, else the
table's buffer margin, as the coverage method's projection reads it). Both keep the floor and the cap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis.arrays import EventArrays, budget_sent, gathers_by_runs, rows_of, truncated_flags
from autopack_pipeline.domain.analysis.coverage_calibration import CoverageGroup
from autopack_pipeline.domain.analysis.samples import rows_by_pair
from autopack_pipeline.domain.coefficients import CoefficientTable
from autopack_pipeline.domain.cost import (
    Spend,
    clamped_budgets,
    compare,
    comparison_line,
    cost_now,
    cost_with_budgets,
    spend_by_model_and_day,
)
from autopack_pipeline.domain.frontier import group_frontier
from autopack_pipeline.domain.prices import PriceTable
from autopack_pipeline.domain.targets import UNDER_TOLERANCE


def output_price_per_row(arrays: EventArrays, prices: PriceTable, rows: np.ndarray | None = None) -> np.ndarray:
    """Each event's output price per million tokens (the default price where the model is unknown), of
    the events at ``rows`` (indices; None: all)."""
    if arrays.model is None:
        return np.full(len(arrays) if rows is None else len(rows), prices.default.output)
    by_code = np.r_[prices.output_prices(arrays.model.labels), prices.default.output]
    return by_code[arrays.model.codes if rows is None else arrays.model.codes[rows]]


def _one_price(arrays: EventArrays, prices: PriceTable) -> float | None:
    """The output price of every event when all of them have the same one (one model, or models priced
    alike), else None. A call's cost is then its tokens x that number, the very products a price per
    row gives, with no price array per group."""
    by_code = np.r_[prices.output_prices(arrays.model.labels), prices.default.output] if arrays.model is not None \
        else np.array([prices.default.output])
    return float(by_code[0]) if (by_code == by_code[0]).all() else None


def spend_of_events(arrays: EventArrays, prices: PriceTable) -> Spend:
    """Billed output spend of every stored attempt, per model and per UTC day."""
    if arrays.model is None:
        codes, labels = np.full(len(arrays), -1), ()
    else:
        codes, labels = arrays.model.codes, arrays.model.labels
    return spend_by_model_and_day(codes, labels, arrays.timestamp_us.values, arrays.actual.values, prices,
                                  known=arrays.actual.notna() & arrays.timestamp_us.notna())


def economics_rows(arrays: EventArrays) -> list[np.ndarray]:
    """Per (category, complexity) pair code, the rows :func:`group_economics` prices (every stored attempt
    with a positive prediction and both counts), ascending. Events alone decide them, so a caller may
    find them before the coverage groups and the calibration are known (``services.calibrating``)."""
    named = arrays.canonical_groups
    usable = arrays.predicted.notna() & arrays.actual.notna() & (arrays.predicted.values > 0)
    return rows_by_pair(usable, named.category, named.complexity, len(named.complexity_names),
                        len(named.category_names) * len(named.complexity_names))


def group_economics(
    arrays: EventArrays,
    groups: list[CoverageGroup],
    coefficients: CoefficientTable,
    prices: PriceTable,
    *,
    calibrated_multipliers: Mapping[tuple[str, str], float] | None = None,
    tolerance: float = UNDER_TOLERANCE,
    pair_rows: list[np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """One entry per coverage group, in the groups' order: its frontier and its cost now vs each proposal.
    ``pair_rows``: :func:`economics_rows` of ``arrays``, when the caller found them already (the list
    is used up: each group's rows are let go once read)."""
    named = arrays.canonical_groups
    cat_names, cx_names = named.category_names, named.complexity_names
    if pair_rows is None:
        pair_rows = economics_rows(arrays)
    one_price = _one_price(arrays, prices)
    codes = [cat_names.index(g.key[0]) * len(cx_names) + cx_names.index(g.key[1]) for g in groups]
    gathered: dict[int, tuple[np.ndarray, ...]] = {}
    out = []
    for index, group in enumerate(groups):
        category, complexity = group.key
        if index not in gathered:
            gathered = _gathered_batch(arrays, pair_rows, codes, index)
        rows, predicted, actual, truncated, sent = gathered.pop(index)
        frontier = group_frontier(group.ratios_ascending, len(group.censored_rows), tolerance=tolerance,
                                  ascending=True)
        price = one_price if one_price is not None else output_price_per_row(arrays, prices, rows)
        sent[np.isnan(sent)] = 0.0  # the group's own slice: a missing budget set to 0 in place
        now = cost_now(actual, sent, truncated, price)
        floor, cap = coefficients.budget_floor(category, complexity), coefficients.budget.cap
        proposals = []
        if frontier.reachable:
            budgets = clamped_budgets(predicted, frontier.multiplier, frontier.margin, floor, cap)
            proposals.append({"label": "frontier", "multiplier": frontier.multiplier, "margin": frontier.margin,
                              **compare(now, cost_with_budgets(actual, budgets, truncated, price))})
        multiplier = (calibrated_multipliers or {}).get(group.key)
        if multiplier is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                margin = np.where(sent > floor, sent / predicted, coefficients.budget.buffer_margin)
            budgets = clamped_budgets(predicted, multiplier, margin, floor, cap)
            proposals.append({"label": "calibration", "multiplier": multiplier, "margin": "current",
                              **compare(now, cost_with_budgets(actual, budgets, truncated, price))})
        for proposal in proposals:
            proposal["summary"] = comparison_line(proposal)
        out.append({
            "category": category,
            "complexity": complexity,
            "frontier": frontier.to_dict(),
            "cost": {"now": now.to_dict(), "floor": floor, "cap": cap, "proposals": proposals,
                     "prices": prices.describe()},
        })
    return out


def economics_line(entry: dict[str, Any]) -> str:
    """One line per group for terminals and sensors' logs: the frontier's point and its cost change."""
    f = entry["frontier"]
    head = f"{entry['category']}/{entry['complexity']}"
    if not f["reachable"]:
        return (f"{head}: frontier out of reach ({f['censored']} of {f['observations']} truncated); "
                f"~{f['observations_needed']} observations needed")
    tier2 = "Tier 2 holds" if f["tier2_holds"] else "Tier 1 wins over Tier 2"
    if f["budget_waste_p90"] is not None:
        tier2 += f", budget waste P90 {f['budget_waste_p90']:.2f}x"
    certified = "certified" if f["certified"] else f"not certified (~{f['observations_needed']} observations needed)"
    cost = next((p["summary"] for p in entry["cost"]["proposals"] if p["label"] == "frontier"), "")
    return f"{head}: Tier 1 at x{f['multiplier']:.3f}, margin {f['margin']:.3f}; {tier2}; {certified}; {cost}"


# Rows gathered together for the groups priced one after the other (about the largest group's): the columns'
# temporaries stay those of about one large group.
_BATCH_ROWS = 1_500_000


def _gathered_batch(arrays: EventArrays, pair_rows: list[np.ndarray], codes: list[int], first: int
                    ) -> dict[int, tuple[np.ndarray, ...]]:
    """Per group from ``first`` on, up to about ``_BATCH_ROWS`` rows (one group at least): (its rows, their
    predictions, actual counts, truncation flags and budgets sent), gathered for the groups together a
    block of each column at a time (``arrays.rows_of`` with runs), where each small group's rows, spread over
    every event, were a cache line each. Each group's rows are let go once read: replaced in ``pair_rows``
    by a new empty array (an empty slice of them would keep them, and the caller's list, held to the end
    of the calibration, with them). The same values as each group's own gathers, in slices."""
    # A column the CPU's cache holds is gathered group by group as fast: one group at a time then, whose
    # temporaries are the smaller (calibrate at a million events).
    limit = _BATCH_ROWS if gathers_by_runs(arrays.predicted.values) else 0
    chosen, total = [], 0
    for index in range(first, len(codes)):
        size = len(pair_rows[codes[index]])
        if chosen and total + size > limit:
            break
        chosen.append(index)
        total += size
    parts = []
    for index in chosen:
        code = codes[index]
        parts.append(pair_rows[code])
        pair_rows[code] = np.empty(0, dtype=parts[-1].dtype)
    bounds = np.r_[0, np.cumsum([len(part) for part in parts])]
    rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
    columns = (arrays.predicted.floats_at(rows, bounds), arrays.actual.floats_at(rows, bounds),
               # the events' truncation flags (computed once for every reader) at the rows
               rows_of(truncated_flags(arrays), rows, runs=bounds), budget_sent(arrays, rows, bounds))
    return {index: (part, *(column[start:end] for column in columns))
            for index, part, start, end in zip(chosen, parts, bounds[:-1], bounds[1:])}
