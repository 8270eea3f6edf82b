"""Oracle: clean samples over a pandas frame (the product: ``domain.analysis.samples``).

Autopack's first baseline was computed on failed calls with ~120-token outputs and told people to cut
coefficients by 80% (its pitfall P2); truncated rows only give a lower bound on the real output (P3);
tiny outputs are parser failures (P4); and retries put several rows under one phase (P11). A clean
sample is therefore: ``success`` and not truncated and ``actual_output_tokens >= 50`` with both token
counts known, and, unless dedup is turned off, one row per ``(run_id, phase_id)``.

Every excluded row is counted under exactly one reason, so a report can say what it kept and dropped
and the numbers add up to the rows it was given.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from autopack_pipeline.domain.analysis.samples import EXCLUSION_REASONS
from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.domain.targets import MIN_ACTUAL_TOKENS
from autopack_pipeline.storage.frames import as_events_frame

DEFAULT_MIN_ACTUAL_TOKENS = MIN_ACTUAL_TOKENS

# Ordering used to pick the one row kept per phase: the highest attempt wins, ties go to the newest
# event id, then the latest timestamp. A missing attempt number sorts below any recorded one.
_DEDUP_ORDER = ["attempt", "event_id", "timestamp"]


def truncated_mask(events: pd.DataFrame) -> pd.Series:
    """Boolean mask of truncated rows, trusting ``truncated`` (DESIGN §5).

    ``is_truncated_output`` only fills in where ``truncated`` itself is missing: rows written before
    that later column existed carry ``False`` there even when the call was truncated.
    """
    frame = as_events_frame(events)
    return frame["truncated"].fillna(frame["is_truncated_output"]).fillna(False).astype(bool)


def success_mask(events: pd.DataFrame) -> pd.Series:
    """Boolean mask of successful Builder calls; an unknown outcome does not count as success."""
    return as_events_frame(events)["success"].fillna(False).astype(bool)


def _exclusion_reasons(frame: pd.DataFrame, *, dedup: bool, min_actual: int) -> pd.Series:
    """One entry per row of ``frame``: the reason it is excluded, or ``None`` when it is kept."""
    reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    missing = frame["predicted_output_tokens"].isna() | frame["actual_output_tokens"].isna()
    tests = [
        ("failed", ~success_mask(frame)),
        ("truncated", truncated_mask(frame)),
        ("missing_tokens", missing),
        # Missing actuals were caught above; fill them so the comparison stays a plain bool.
        ("below_min_actual", frame["actual_output_tokens"].fillna(min_actual).astype("int64") < min_actual),
    ]
    for reason, failed in tests:
        reasons[reasons.isna() & failed.to_numpy()] = reason

    if dedup:
        # Only rows that passed every other test compete for their phase's one slot, so a phase whose
        # latest attempt was truncated still contributes its latest clean attempt.
        candidates = frame[reasons.isna()]
        # Rows without a run or phase id cannot be matched to a phase; each stands alone.
        keyed = candidates[candidates["run_id"].notna() & candidates["phase_id"].notna()]
        ordered = keyed.sort_values(_DEDUP_ORDER, na_position="first", kind="mergesort")
        duplicates = ordered.duplicated(subset=["run_id", "phase_id"], keep="last")
        reasons[duplicates[duplicates].index] = "duplicate_attempt"
    return reasons


# Stands in for a missing label while mapping, since dict lookups on pandas' NA are unreliable.
_MISSING_LABEL = "\x00missing"


def canonical_labels(series: pd.Series, normaliser: Callable[[str | None], str]) -> pd.Series:
    """``normaliser`` applied to a label column, once per distinct value (cheap on millions of rows).

    Missing labels reach the normaliser as ``None``, so they get its documented default.
    """
    filled = series.astype("string").fillna(_MISSING_LABEL)
    mapping = {value: normaliser(None if value == _MISSING_LABEL else value) for value in filled.unique()}
    return filled.map(mapping).astype("string")


def clean_samples(
    events: pd.DataFrame, *, dedup: bool = True, min_actual: int = DEFAULT_MIN_ACTUAL_TOKENS
) -> pd.DataFrame:
    """The clean samples of ``events``, with category and complexity in their canonical spelling.

    Keeps rows that succeeded, were not truncated, have both token counts and at least
    ``min_actual`` actual output tokens. With ``dedup`` only the last clean attempt of each
    ``(run_id, phase_id)`` stays (highest ``attempt``, then ``event_id``, then ``timestamp``);
    without it every attempt counts, as in Autopack's own script. Returns an events-shaped frame with
    a fresh index, in the input's row order.
    """
    frame = as_events_frame(events)
    kept = frame[_exclusion_reasons(frame, dedup=dedup, min_actual=min_actual).isna()].copy()
    kept["category"] = canonical_labels(kept["category"], normalise_category)
    kept["complexity"] = canonical_labels(kept["complexity"], normalise_complexity)
    return kept.reset_index(drop=True)


def sample_exclusions(
    events: pd.DataFrame, *, dedup: bool = True, min_actual: int = DEFAULT_MIN_ACTUAL_TOKENS
) -> dict[str, int]:
    """Count the rows :func:`clean_samples` drops, by reason.

    Keys are :data:`EXCLUSION_REASONS`, always all present. Each dropped row is counted once, under
    the first reason it meets, so ``sum(values) + len(clean_samples(...)) == len(events)``.
    """
    frame = as_events_frame(events)
    counts = _exclusion_reasons(frame, dedup=dedup, min_actual=min_actual).value_counts()
    return {reason: int(counts.get(reason, 0)) for reason in EXCLUSION_REASONS}


def truncation_flag_disagreements(events: pd.DataFrame) -> int:
    """Rows whose ``truncated`` and ``is_truncated_output`` flags are both known and differ.

    A data-quality finding rather than an error: the metrics trust ``truncated``.
    """
    frame = as_events_frame(events)
    both = frame["truncated"].notna() & frame["is_truncated_output"].notna()
    differ = frame["truncated"].fillna(False) != frame["is_truncated_output"].fillna(False)
    return int((both & differ).sum())
