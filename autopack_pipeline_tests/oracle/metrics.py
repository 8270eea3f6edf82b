"""Oracle: tier metrics over an events frame (the product: ``domain.analysis.metrics``).

DESIGN §5; Autopack's V3 analyser, autopack_spec §5.

- Tier 1 (risk, the tuning gate): underestimation, truncation and success rates, each with its
  Wilson 95% interval, because on Autopack-sized data (tens of events) a point rate alone cannot say
  whether a 5% target is met.
- Tier 2 (cost, advisory): waste ratio predicted/actual and budget waste budget/actual.
- Diagnostics: SMAPE over non-truncated events only; truncated events only bound the real output
  from below, so they are summarised apart.

Every figure returned is a plain ``int``, ``float``, ``bool``, ``None``, list or dict, never a numpy
scalar or NaN, so the result goes straight to ``json.dumps`` and to Dagster metadata.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np
import pandas as pd

from autopack_pipeline.domain.analysis.rates import (  # noqa: F401 - re-exported for the tests
    STRATA_DIMENSIONS,
    Z_95,
    budget_waste_within_target,
    check_under_multiplier,
    needs_tuning,
    percent,
    tier1_block,
    wilson_interval,
)
from autopack_pipeline.domain.categories import (
    deliverable_bucket,
    normalise_category,
    normalise_complexity,
)
from autopack_pipeline.domain.targets import (  # noqa: F401 - re-exported for the tests
    BUDGET_WASTE_P90_TARGET,
    TRUNCATION_TARGET_PCT,
    UNDERESTIMATION_TARGET_PCT,
)
from autopack_pipeline.domain.targets import UNDER_TOLERANCE as DEFAULT_UNDER_MULTIPLIER
from autopack_pipeline_tests.oracle.samples import (
    as_events_frame,
    canonical_labels,
    success_mask,
    truncated_mask,
)


def _floats(series: pd.Series) -> np.ndarray:
    """A nullable integer column as a float array, missing values as NaN."""
    return series.to_numpy(dtype=float, na_value=np.nan)


def _underestimated(frame: pd.DataFrame, under_multiplier: float) -> tuple[np.ndarray, np.ndarray]:
    """Masks (rows with both token counts, rows whose actual exceeds predicted * multiplier)."""
    predicted = _floats(frame["predicted_output_tokens"])
    actual = _floats(frame["actual_output_tokens"])
    known = ~np.isnan(predicted) & ~np.isnan(actual)
    with np.errstate(invalid="ignore"):
        over = known & (actual > predicted * under_multiplier)
    return known, over


def tier1_metrics(events: pd.DataFrame, under_multiplier: float = DEFAULT_UNDER_MULTIPLIER) -> dict[str, Any]:
    """Tier-1 rates in percent, each with a ``<name>_ci`` Wilson 95% pair, plus the counts behind them.

    Underestimation counts ``actual > predicted * under_multiplier`` among rows where both token
    counts are known (``underestimation_samples``; every row in an Autopack database). Truncation and
    success are over all ``total_samples`` rows.
    """
    multiplier = check_under_multiplier(under_multiplier)
    frame = as_events_frame(events)
    total = len(frame)
    known, over = _underestimated(frame, multiplier)
    under_n, under_k = int(known.sum()), int(over.sum())
    truncated_k = int(truncated_mask(frame).sum())
    success_k = int(success_mask(frame).sum())
    return tier1_block(multiplier, total, under_n, under_k, truncated_k, success_k)


def group_tier1_metrics(events: pd.DataFrame, under_multiplier: float = DEFAULT_UNDER_MULTIPLIER
                        ) -> dict[tuple[str, str], dict[str, Any]]:
    """The Tier-1 block of each canonical (category, complexity) group's events, sorted by group:
    what the gate reads to open for one group's certain breach."""
    frame = as_events_frame(events)
    keys = list(zip(canonical_labels(frame["category"], normalise_category),
                    canonical_labels(frame["complexity"], normalise_complexity)))
    return {key: tier1_metrics(frame[[k == key for k in keys]], under_multiplier=under_multiplier)
            for key in sorted(set(keys))}

def p90(values: list[float]) -> float | None:
    """Autopack's P90: ``statistics.quantiles(v, n=10)[8]`` from 10 values on, else the maximum."""
    if not values:
        return None
    if len(values) >= 10:
        return float(statistics.quantiles(values, n=10)[8])
    return float(max(values))


def _summary(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(statistics.median(values)), float(math.fsum(values) / len(values))


def budget_sent(frame: pd.DataFrame) -> np.ndarray:
    """The ceiling each call ran under: ``actual_max_tokens``, falling back to ``selected_budget``.

    ``selected_budget`` is the estimator's intent; overrides can raise the ceiling actually sent
    (Autopack's pitfall P5), so the recorded ceiling wins where it exists. Like Autopack's
    ``actual_max_tokens or selected_budget``, a zero ceiling also falls back.
    """
    sent = _floats(frame["actual_max_tokens"])
    selected = _floats(frame["selected_budget"])
    return np.where(np.isnan(sent) | (sent == 0), selected, sent)


def tier2_metrics(events: pd.DataFrame) -> dict[str, float | None]:
    """Tier-2 cost figures; each is ``None`` when no row yields a value.

    Waste ratio is predicted/actual over the finite values (a zero actual gives infinity and is
    left out). Budget waste is :func:`budget_sent` / actual over rows with a positive budget and
    actual: Autopack's writer stores 0 when it did not know the budget, which is not a real ceiling.
    """
    frame = as_events_frame(events)
    predicted = _floats(frame["predicted_output_tokens"])
    actual = _floats(frame["actual_output_tokens"])
    budget = budget_sent(frame)
    with np.errstate(divide="ignore", invalid="ignore"):
        waste = predicted / actual
        budget_waste = budget / actual
    waste_values = waste[np.isfinite(waste)].tolist()
    budget_values = budget_waste[np.isfinite(budget_waste) & (budget > 0) & (actual > 0)].tolist()
    median, mean = _summary(waste_values)
    return {
        "waste_ratio_median": median,
        "waste_ratio_p90": p90(waste_values),
        "waste_ratio_mean": mean,
        "budget_waste_p90": p90(budget_values),
    }


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def diagnostics(events: pd.DataFrame, under_multiplier: float = DEFAULT_UNDER_MULTIPLIER) -> dict[str, Any]:
    """SMAPE over non-truncated events, and truncated events summarised as lower bounds.

    SMAPE % = 200 * |p - a| / (|p| + |a|), skipping rows without both counts or with p = a = 0.
    ``truncated_lower_bound`` holds the truncated rows' count, predicted and actual means, and the
    percent of them already underestimated (actual > predicted * ``under_multiplier``) even though
    their actual is only a floor.
    """
    multiplier = check_under_multiplier(under_multiplier)
    frame = as_events_frame(events)
    truncated = truncated_mask(frame).to_numpy()
    predicted = _floats(frame["predicted_output_tokens"])
    actual = _floats(frame["actual_output_tokens"])
    scale = np.abs(predicted) + np.abs(actual)
    usable = ~truncated & np.isfinite(scale) & (scale > 0)
    smape = 200.0 * np.abs(predicted[usable] - actual[usable]) / scale[usable]
    smape_median, smape_mean = _summary(smape.tolist())

    known, over = _underestimated(frame, multiplier)
    bounded = truncated & known
    return {
        "smape_mean": smape_mean,
        "smape_median": smape_median,
        "non_truncated_count": int((~truncated).sum()),
        "truncated_count": int(truncated.sum()),
        "truncated_lower_bound": {
            "count": int(truncated.sum()),
            "predicted_mean": _mean(predicted[bounded]),
            "actual_mean": _mean(actual[bounded]),
            "underestimated_pct": percent(int((over & truncated).sum()), int(bounded.sum())),
        },
    }


def _labels(frame: pd.DataFrame, dimension: str) -> pd.Series:
    """Stratum label of every row for one dimension, through the canonical normalisers."""
    if dimension == "deliverables":
        # A missing count buckets like zero deliverables, as deliverable_bucket(None) does.
        counts = frame["deliverable_count"].fillna(0).astype("int64")
        return counts.map({n: deliverable_bucket(int(n)) for n in counts.unique()})
    if dimension == "category":
        return canonical_labels(frame["category"], normalise_category)
    return canonical_labels(frame["complexity"], normalise_complexity)


def stratify(events: pd.DataFrame, under_multiplier: float = DEFAULT_UNDER_MULTIPLIER) -> dict[str, dict[str, Any]]:
    """Tier-1 block per category, per complexity and per deliverable bucket (``1``, ``2-5``, ``6+``).

    Values are the canonical spellings, so ``testing`` and ``tests`` land in one stratum.
    """
    multiplier = check_under_multiplier(under_multiplier)
    frame = as_events_frame(events)
    strata: dict[str, dict[str, Any]] = {}
    for dimension in STRATA_DIMENSIONS:
        labels = _labels(frame, dimension)
        strata[dimension] = {
            str(value): tier1_metrics(frame[(labels == value).to_numpy()], multiplier)
            for value in sorted(labels.unique())
        }
    return strata


def compute_metrics(
    events: pd.DataFrame, *, under_multiplier: float = DEFAULT_UNDER_MULTIPLIER, stratify: bool = False
) -> dict[str, Any]:
    """The ``metrics --json`` document of DESIGN §10 for one analysis set of events.

    Keys: ``tier1``, ``tier2``, ``diagnostics``, ``needs_tuning``, and ``strata`` only when
    ``stratify`` is true. The caller chooses the analysis set (all events, or success-only).
    """
    frame = as_events_frame(events)
    tier1 = tier1_metrics(frame, under_multiplier)
    document: dict[str, Any] = {
        "tier1": tier1,
        "tier2": tier2_metrics(frame),
        "diagnostics": diagnostics(frame, under_multiplier),
        "needs_tuning": needs_tuning(tier1),
    }
    if stratify:
        document["strata"] = _stratify(frame, under_multiplier)
    return document


# ``compute_metrics`` takes a keyword named ``stratify``; this alias keeps the function reachable there.
_stratify = stratify


def tier_metrics_document(
    events: pd.DataFrame, clean_samples: int, *, under_multiplier: float = DEFAULT_UNDER_MULTIPLIER
) -> dict[str, Any]:
    """The tier-metrics asset's document: all Builder calls with strata, successful calls only, the
    clean-sample count. The reference that ``domain.analysis.tier_metrics_document_arrays`` equals."""
    frame = as_events_frame(events)
    successful = frame[success_mask(frame).to_numpy()]
    return {
        "all_events": compute_metrics(frame, under_multiplier=under_multiplier, stratify=True),
        "success_only": compute_metrics(successful, under_multiplier=under_multiplier, stratify=False),
        "clean_samples": int(clean_samples),
    }
