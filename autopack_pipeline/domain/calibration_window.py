"""Which past events calibration learns from: the recent coefficient versions, shorter after a drift.

Every event records the coefficient version that predicted it. Calibration re-expresses all of them
under the version in force (``domain.reprediction``), so versions are comparable; but the world
they measured may have moved. Reading all history lets pre-drift calls pull a post-drift figure
back, round after round. So the window is:

- the events of the ``versions`` most recent coefficient versions that have events (versions ordered
  by their first event; events from before the column count as one version, the oldest); 0 = all;
- shortened to the newest version's events alone when its error ``log(actual / predicted in force)``
  differs from the rest of the window's (:func:`error_moved`).

The drift test is a stratified rank test: per (category, complexity) group with enough events on
both sides, a Mann-Whitney z of newest against older, combined over groups by Stouffer's sum (a
global drift, the model writing longer everywhere, is found with the power of all groups together,
where a per-group test on ~75 calls would miss a 30% shift); a single group moving alone is found by
its own test at a Bonferroni-corrected level. Truncated calls only bound their ratio from below, and
older versions had other budgets, so both sides of a group are censored at the lowest ceiling either
side hit (a value above it counts as tied at it): censoring then cannot pass for drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_WINDOW_VERSIONS = 2
DRIFT_ALPHA = 0.01  # two-sided, for the combined test and (Bonferroni-split) for the per-group ones
MIN_EVENTS_PER_SIDE = 20  # per group and side, for a group to enter the test


@dataclass(frozen=True)
class DriftTest:
    moved: bool
    combined_z: float | None
    groups_tested: int
    worst_group: str | None = None
    worst_p: float | None = None

    def summary(self) -> str:
        if self.groups_tested == 0:
            return "no group had enough events on both sides to test"
        z = "n/a" if self.combined_z is None else f"{self.combined_z:+.2f}"
        return (f"stratified rank test over {self.groups_tested} group(s): combined z {z}; "
                f"smallest group p {self.worst_p:.2g} ({self.worst_group})")


@dataclass(frozen=True)
class CalibrationWindow:
    rows: np.ndarray  # boolean mask over the events
    versions: list[str | None]  # in the window, oldest first
    dropped_versions: list[str | None]
    drift: DriftTest | None = None
    reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"versions": self.versions, "dropped_versions": self.dropped_versions, "events": int(self.rows.sum()),
                "events_dropped": int((~self.rows).sum()), "reason": self.reason,
                "drift": None if self.drift is None else {"moved": self.drift.moved, "summary": self.drift.summary()}}


def _censored_at_common_ceiling(newest: tuple[np.ndarray, np.ndarray], older: tuple[np.ndarray, np.ndarray]
                                ) -> tuple[np.ndarray, np.ndarray]:
    """Both sides' values with everything above the lowest censoring point tied at it."""
    bounds = [v[c] for v, c in (newest, older) if c.any()]
    if not bounds:
        return newest[0], older[0]
    ceiling = min(float(b.min()) for b in bounds)
    return np.minimum(newest[0], ceiling), np.minimum(older[0], ceiling)


def _rank_z(newest: np.ndarray, older: np.ndarray) -> float:
    """Mann-Whitney z of ``newest`` against ``older`` (positive: newest larger), tie-corrected."""
    from scipy.stats import rankdata  # scipy loads only when a window has two versions to compare

    n1, n2 = len(newest), len(older)
    ranks = rankdata(np.r_[newest, older])
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    _, ties = np.unique(ranks, return_counts=True)
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - (ties ** 3 - ties).sum() / (n * (n - 1)))
    return 0.0 if variance <= 0 else float((u - n1 * n2 / 2) / math.sqrt(variance))


def _codes(values: Any) -> tuple[np.ndarray, list[Any]]:
    """Integer codes of ``values`` (labels, None included) in order of first appearance, and the
    labels they stand for: one pass in Python, then every comparison is between integers."""
    lookup: dict[Any, int] = {}
    items = values.tolist() if isinstance(values, np.ndarray) else values
    codes = np.fromiter((lookup.setdefault(v, len(lookup)) for v in items), dtype=np.int64, count=len(items))
    return codes, list(lookup)


def error_moved(groups: np.ndarray, log_ratio: np.ndarray, censored: np.ndarray, newest: np.ndarray,
                older: np.ndarray, *, alpha: float = DRIFT_ALPHA, min_events: int = MIN_EVENTS_PER_SIDE) -> DriftTest:
    """Whether the error of the ``newest`` rows differs from the ``older`` rows' (see the module docstring).

    ``log_ratio`` is log(actual / predicted in force), NaN where unusable; ``censored`` marks truncated
    calls (their value is the log of the ceiling ratio, a lower bound).
    """
    from scipy.stats import norm

    usable = np.isfinite(log_ratio)
    codes, names = _codes(groups)
    # The groups in order of their first usable row (the order Stouffer's sum and a tie for the
    # worst group are read in); each group's rows by its integer code, not by comparing strings.
    present, first_row = np.unique(codes[usable], return_index=True)
    zs, labels = [], []
    for code in present[np.argsort(first_row)].tolist():
        label = names[code]
        rows = usable & (codes == code)
        a, b = rows & newest, rows & older
        if a.sum() < min_events or b.sum() < min_events:
            continue
        x, y = _censored_at_common_ceiling((log_ratio[a], censored[a]), (log_ratio[b], censored[b]))
        zs.append(_rank_z(x, y))
        labels.append(label)
    if not zs:
        return DriftTest(False, None, 0)
    z = np.asarray(zs)
    combined = float(z.sum() / math.sqrt(len(z)))
    p = 2 * norm.sf(np.abs(z))
    worst = int(np.argmin(p))
    moved = bool(2 * norm.sf(abs(combined)) < alpha or p[worst] < alpha / len(z))
    return DriftTest(moved, combined, len(z), str(labels[worst]), float(p[worst]))


def choose_window(versions: Sequence[str | None], order: np.ndarray, groups: np.ndarray, log_ratio: np.ndarray,
                  censored: np.ndarray, *, keep_versions: int = DEFAULT_WINDOW_VERSIONS) -> CalibrationWindow:
    """The rows calibration reads (see the module docstring). ``order`` ranks the events in time (event
    ids); ``keep_versions`` 0 keeps every version."""
    codes, names = _codes(versions)
    order = np.asarray(order, dtype=float)
    earliest = np.full(len(names), math.inf)
    np.minimum.at(earliest, codes, order)
    first = dict(zip(names, earliest.tolist()))  # in order of first appearance, as the sort's ties keep
    # Events from before the column (None) are the oldest; the others by their first event.
    ranked = sorted(first, key=lambda v: (v is not None, first[v]))
    kept = ranked if keep_versions <= 0 else ranked[-keep_versions:]

    def rows_of(chosen: list[str | None]) -> np.ndarray:
        return np.isin(codes, [names.index(v) for v in chosen])

    rows = rows_of(kept)
    dropped = [v for v in ranked if v not in kept]
    if len(kept) < 2:
        return CalibrationWindow(rows, kept, dropped, None, f"{len(kept)} version(s) with events: all kept")
    newest = rows_of(kept[-1:])
    drift = error_moved(groups, np.asarray(log_ratio, dtype=float),
                        np.asarray(censored, dtype=bool), newest, rows & ~newest)
    if drift.moved:
        return CalibrationWindow(newest, kept[-1:], dropped + kept[:-1], drift,
                                 f"the error moved under {kept[-1]}: only its events are kept")
    return CalibrationWindow(rows, kept, dropped, drift, f"the last {len(kept)} versions with events")


def window_of_events(arrays: Any, inputs: Any, *, keep_versions: int = DEFAULT_WINDOW_VERSIONS) -> CalibrationWindow:
    """:func:`choose_window` over ``arrays`` (EventArrays, predictions already in force) and ``inputs``
    (``reprediction.PredictionInputs``: the ``coefficients_version`` of each stored event)."""
    from autopack_pipeline.domain.analysis.arrays import budget_sent, truncated_flags
    from autopack_pipeline.domain.categories import normalise_category, normalise_complexity

    ids = arrays.event_id
    known = ids.notna()
    versions = [inputs.version_at(int(position)) for position in inputs.positions(ids)]
    order = np.where(known, ids.values, np.arange(len(arrays))).astype(float)
    cat_codes, cat_names = arrays.category.canonical(normalise_category)
    cx_codes, cx_names = arrays.complexity.canonical(normalise_complexity)
    names = np.array([f"{c}/{x}" for c in cat_names for x in cx_names], dtype=object)
    groups = names[cat_codes.astype(np.int64) * len(cx_names) + cx_codes]  # one label object per group, shared
    predicted, actual = arrays.predicted.floats(), arrays.actual.floats()
    censored = truncated_flags(arrays)
    # A truncated call's value is its lower bound: the larger of the ceiling it hit and its output.
    value = np.where(censored, np.fmax(budget_sent(arrays, None), actual), actual)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_ratio = np.where((predicted > 0) & (value > 0), np.log(value / predicted), np.nan)
    return choose_window(versions, order, groups, log_ratio, censored, keep_versions=keep_versions)


def window_line(window: dict[str, Any]) -> str:
    """One line for a person: what calibration read (``CalibrationWindow.as_dict()``)."""
    drift = window.get("drift")
    tested = f"; {drift['summary']}" if drift else ""
    return (f"Calibration window: {window['events']} events of coefficient version(s) "
            f"{', '.join(str(v) for v in window['versions'])} ({window['reason']}); "
            f"{window['events_dropped']} older events left out{tested}")
