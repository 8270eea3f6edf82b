"""Drift of the estimator's error, per (category, complexity) group: PSI, two-sample KS, CUSUM.

The quantity watched is ``l = log(actual / predicted)``: zero when the estimate was exact, positive
when the estimate was too small. A group is compared between a *recent* window (the last 7 days by
default) and a *reference* window (everything before it), and only when both windows hold enough
events for the statistics to mean something; other groups are listed as skipped, with their counts.
Each phase counts once, by its last attempt (the clean samples' rule): a truncated call's retry
repeats its phase's error, and two events would make runs the CUSUM reads as a rising rate.

- PSI over quantile bins of the reference ``l``: how much the shape of the error moved.
  The 0.1 / 0.25 bands are convention, not theory, so the threshold is a parameter.
- Two-sample Kolmogorov-Smirnov on ``l`` (scipy), flagged only when the p-value is small *and* the
  statistic is large enough to matter: on large windows the test rejects on tiny shifts.
- A one-sided Bernoulli CUSUM over the recent events in time order, on the underestimation
  indicator ``actual > predicted * 1.1``: it accumulates the log-likelihood ratio of "the odds of
  underestimation have doubled" against the reference rate and signals when the sum passes ``h``.
  A doubling of the odds is a doubling of the rate while the rate is small, and still a shift that
  can happen when the reference underestimated most of the time. ``h`` grows with the recent
  window (:func:`cusum_decision_interval`): with nothing changed, the chance of an alarm anywhere in
  it stays below 1%, however many events it holds.

Pure functions on the events' arrays; drifted groups also become :class:`Insight` objects for task generation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.analysis.samples import duplicate_attempts, stable_order
from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.domain.insights import Insight
from autopack_pipeline.domain.targets import UNDER_TOLERANCE
from autopack_pipeline.domain.windows import SHORT_WINDOW_DAYS


@dataclass(frozen=True)
class DriftThresholds:
    """Every knob of the drift checks; reported next to the observed values."""

    recent_days: float = SHORT_WINDOW_DAYS  # the rolling 7-day window of the metrics
    min_events_per_window: int = 30
    psi_bins: int = 10
    psi_threshold: float = 0.25  # "significant shift" by convention; 0.1-0.25 is "moderate"
    ks_alpha: float = 0.01
    ks_min_statistic: float = 0.1  # effect size the KS statistic must also reach
    cusum_h: float = 5.0  # the least decision interval, in log-likelihood units
    cusum_odds_ratio: float = 2.0  # the shift the CUSUM is tuned to: the odds of underestimation doubled
    cusum_false_alarm: float = 0.01  # at most this chance of an alarm in a recent window where nothing changed
    under_multiplier: float = UNDER_TOLERANCE

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PSI_EPSILON = 1e-4
# The in-control rate is kept inside this range so the CUSUM's likelihood ratio stays finite when the
# reference window never (or always) underestimated.
_CUSUM_P0_RANGE = (0.001, 0.999)


def population_stability_index(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """PSI of ``recent`` against ``reference``, on bins cut at the reference's quantiles.

    Repeated reference values can merge quantile edges, so fewer bins may be used; empty bins are
    smoothed with a small epsilon so the logarithm stays finite.
    """
    reference = np.sort(np.asarray(reference, dtype=float))
    recent = np.sort(np.asarray(recent, dtype=float))
    if reference.size == 0 or recent.size == 0:
        raise ValueError("PSI needs values in both windows")
    inner_edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1))[1:-1])
    expected, actual = _bin_counts(reference, inner_edges), _bin_counts(recent, inner_edges)
    e = np.maximum(expected / reference.size, PSI_EPSILON)
    a = np.maximum(actual / recent.size, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def _bin_counts(ordered: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """How many of the sorted ``ordered`` values have 0, 1, ... ``len(edges)`` of the sorted ``edges`` at or
    below them: the differences of where the edges fall among the values. Sorting the values first and
    searching the few edges costs less than searching every value among the edges (a quarter of the
    drift's PSI time at ten million events)."""
    return np.diff(np.searchsorted(ordered, edges, side="left"), prepend=0, append=ordered.size)


def ks_two_sample(reference: np.ndarray, recent: np.ndarray) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic and two-sided p-value."""
    from scipy import stats  # here, not at import: scipy.stats costs a second to load, and only KS needs it

    result = stats.ks_2samp(np.asarray(reference, dtype=float), np.asarray(recent, dtype=float))
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True)
class CusumResult:
    p0: float  # in-control underestimation rate (from the reference window)
    p1: float  # out-of-control rate the CUSUM is tuned to detect
    h: float  # the decision interval it was compared with
    max_statistic: float
    final_statistic: float
    alarm_index: int | None  # position in the recent sequence of the first crossing of h


def shifted_rate(p0: float, odds_ratio: float = 2.0) -> float:
    """The rate whose odds are ``odds_ratio`` times those of ``p0``."""
    odds = odds_ratio * p0 / (1.0 - p0)
    return odds / (1.0 + odds)


def cusum_decision_interval(n: int, p1: float, false_alarm: float, least: float = 0.0) -> float:
    """The ``h`` at which an upper Bernoulli CUSUM tuned to ``p1`` alarms with probability at most
    ``false_alarm`` over ``n`` in-control events (never below ``least``).

    The sum leaves zero only on an underestimated event (expected ``n * p0`` times in ``n`` events),
    to ``log(p1/p0)``. From there ``exp(S)`` is a martingale while the rate is ``p0``, so by Ville's
    inequality that excursion reaches ``h`` with probability at most ``exp(log(p1/p0) - h)``. Over
    every excursion: at most ``n * p1 * exp(-h)``, which is ``false_alarm`` at this ``h``. A fixed
    ``h`` instead alarms almost surely on a long enough window: on a ten-million-event history whose
    rates had not changed, ``h = 5`` alarmed in 10 of the 16 groups it could judge, after 112 to 5,503
    recent events (the other 19 underestimated more than 45% of the time, the most the earlier tuning,
    a doubled rate, could take, and all alarmed within 109).
    """
    return max(least, math.log(max(n, 1) * p1 / false_alarm))


def bernoulli_cusum(indicators: np.ndarray, p0: float, h: float, p1: float | None = None) -> CusumResult:
    """Upper Bernoulli CUSUM: ``S_t = max(0, S_{t-1} + x_t log(p1/p0) + (1-x_t) log((1-p1)/(1-p0)))``.

    ``p0`` is clamped to [0.001, 0.999]; ``p1`` defaults to the rate of twice ``p0``'s odds.
    """
    p0 = min(max(float(p0), _CUSUM_P0_RANGE[0]), _CUSUM_P0_RANGE[1])
    p1 = float(p1) if p1 is not None else shifted_rate(p0)
    if not 0.0 < p0 < p1 < 1.0:
        raise ValueError(f"need 0 < p0 < p1 < 1, got p0={p0}, p1={p1}")
    up, down = math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0))
    # The recursion in closed form (Lindley's): S_t is the cumulative sum less its lowest point so far
    # (zero included), so the whole window is a few array passes instead of a Python step per event.
    total = np.cumsum(np.where(np.asarray(indicators, dtype=bool), up, down))
    statistic = total - np.minimum(np.minimum.accumulate(total), 0.0) if total.size else total
    crossed = np.flatnonzero(statistic > h)
    return CusumResult(p0=p0, p1=p1, h=float(h), max_statistic=float(statistic.max(initial=0.0)),
                       final_statistic=float(statistic[-1]) if statistic.size else 0.0,
                       alarm_index=int(crossed[0]) if crossed.size else None)


@dataclass(frozen=True)
class GroupDrift:
    category: str
    complexity: str
    n_reference: int
    n_recent: int
    psi: float
    ks_statistic: float
    ks_pvalue: float
    cusum: CusumResult
    reference_under_rate: float
    recent_under_rate: float
    psi_drift: bool
    ks_drift: bool
    cusum_alarm: bool
    # The shift is what a calibration applied inside the recent window does: the shape moved (PSI, KS),
    # underestimation fell and the CUSUM stayed quiet. Still a signal; no task.
    calibration_effect: bool = False

    @property
    def subject(self) -> str:
        return f"{self.category}/{self.complexity}"

    @property
    def signals(self) -> list[str]:
        return [name for name, hit in (("psi", self.psi_drift), ("ks", self.ks_drift), ("cusum", self.cusum_alarm)) if hit]

    @property
    def drifted(self) -> bool:
        return bool(self.signals)


@dataclass(frozen=True)
class DriftReport:
    thresholds: DriftThresholds
    now: datetime
    recent_start: datetime
    events_considered: int
    groups: list[GroupDrift] = field(default_factory=list)
    skipped: dict[str, tuple[int, int]] = field(default_factory=dict)  # subject -> (n_reference, n_recent)
    calibrated_at: datetime | None = None  # the coefficients in force were applied then, inside the recent window
    # The coefficients in force were applied then, before the recent window: the reference starts there.
    reference_start: datetime | None = None
    # Why the coefficients in force could not be read (then no calibration is known to explain a shift).
    coefficients_unread: str | None = None

    def drifted(self, signal: str | None = None) -> list[GroupDrift]:
        """Groups with any signal, or with the named one (``psi``, ``ks``, ``cusum``)."""
        return [g for g in self.groups if (signal in g.signals if signal else g.drifted)]

    def summary(self) -> str:
        if not self.groups:
            since = "" if self.reference_start is None else (
                f" (since the coefficients in force were applied, {self.reference_start:%Y-%m-%d %H:%M} UTC)")
            return (
                f"no group has {self.thresholds.min_events_per_window} events in both the reference window{since} "
                f"and the last {self.thresholds.recent_days:g} days ({len(self.skipped)} groups skipped)"
            )
        drifted = self.drifted()
        names = ", ".join(f"{g.subject} ({'+'.join(g.signals)})" for g in drifted) or "none"
        return f"{len(self.groups)} groups compared, {len(drifted)} drifted: {names}" + self.calibration_note()

    def calibration_note(self) -> str:
        """What a calibration applied inside the recent window explains, or why none could be known, or nothing."""
        if self.coefficients_unread is not None:
            return (f"; the coefficients in force could not be read ({self.coefficients_unread}): a shift that "
                    "applying a calibration made cannot be told from drift")
        explained = [g.subject for g in self.groups if g.calibration_effect]
        if not explained:
            return ""
        return (f"; {', '.join(explained)}: underestimation fell after the coefficients in force were applied "
                f"({self.calibrated_at:%Y-%m-%d %H:%M} UTC, inside the window), the calibration's effect (no task)")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _microseconds(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def detect_drift(
    arrays: EventArrays, *, now: datetime | None = None, thresholds: DriftThresholds | None = None,
    calibrated_at: datetime | None = None,
) -> DriftReport:
    """Compare each (category, complexity) group's recent window with its reference window.

    Events need positive predicted and actual token counts and a timestamp; events dated after
    ``now`` (clock skew) are ignored; of the rest, each phase's last attempt is kept. ``calibrated_at``:
    when the coefficients in force were applied. Before the recent window, the reference starts there,
    so both windows hold the error of the same coefficients; inside it, a group whose error moved with
    its underestimation down and no CUSUM alarm is marked as the calibration's effect.
    """
    thresholds = thresholds or DriftThresholds()
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    recent_start = now - timedelta(days=thresholds.recent_days)
    # An apply before the recent window starts the reference; one inside it may explain a shift; one after
    # now (a clock ahead) tells nothing.
    reference_start = calibrated_at if calibrated_at is not None and calibrated_at < recent_start else None
    applied_in_window = calibrated_at if calibrated_at is not None and recent_start <= calibrated_at <= now else None
    predicted, actual = arrays.predicted.floats(), arrays.actual.floats()
    stamps = arrays.timestamp_us.values
    with np.errstate(invalid="ignore"):
        usable = (predicted > 0) & (actual > 0) & arrays.timestamp_us.notna() & (stamps <= _microseconds(now))
    if reference_start is not None:
        usable &= stamps >= _microseconds(reference_start)
    usable[duplicate_attempts(arrays, usable)] = False
    rows = np.flatnonzero(usable)
    actual, predicted = actual[rows], predicted[rows]
    log_ratio = np.log(actual / predicted)
    underestimated = actual > predicted * thresholds.under_multiplier  # as the Tier-1 metrics count it
    del actual, predicted
    stamps, event_ids = stamps[rows], arrays.event_id.values[rows]
    in_recent = stamps >= _microseconds(recent_start)
    cat_codes, cat_names = arrays.category.canonical(normalise_category)
    cx_codes, cx_names = arrays.complexity.canonical(normalise_complexity)
    pair = cat_codes[rows].astype(np.int64) * len(cx_names) + cx_codes[rows]
    order = stable_order(pair)  # by group, row order kept within each (a radix sort: the codes are small)
    sizes = np.bincount(pair)  # the groups' sizes, in the order the sort put the groups
    sizes = sizes[sizes > 0]
    ends = np.cumsum(sizes)

    groups: list[GroupDrift] = []
    skipped: dict[str, tuple[int, int]] = {}
    for start, end in zip((ends - sizes).tolist(), ends.tolist(), strict=True):
        members = order[start:end]
        category, complexity = divmod(int(pair[members[0]]), len(cx_names))
        category, complexity = cat_names[category], cx_names[complexity]
        reference, recent = members[~in_recent[members]], members[in_recent[members]]
        subject = f"{category}/{complexity}"
        if min(len(reference), len(recent)) < thresholds.min_events_per_window:
            skipped[subject] = (len(reference), len(recent))
            continue
        # The CUSUM reads the recent events in time order (ties: event id, then row order).
        recent = recent[np.lexsort((recent, event_ids[recent], stamps[recent]))]
        ref_l, rec_l = log_ratio[reference], log_ratio[recent]
        psi = population_stability_index(ref_l, rec_l, thresholds.psi_bins)
        ks_statistic, ks_pvalue = ks_two_sample(ref_l, rec_l)
        under_reference = int(np.count_nonzero(underestimated[reference]))
        reference_rate = under_reference / len(reference)
        # Half an event away from 0 and 1: a reference that never (or always) underestimated still
        # leaves the odds something to double.
        p0 = (under_reference + 0.5) / (len(reference) + 1)
        p1 = shifted_rate(p0, thresholds.cusum_odds_ratio)
        h = cusum_decision_interval(len(recent), p1, thresholds.cusum_false_alarm, thresholds.cusum_h)
        cusum = bernoulli_cusum(underestimated[recent], p0, h, p1)
        recent_rate = float(underestimated[recent].mean())
        psi_drift = psi > thresholds.psi_threshold
        ks_drift = ks_pvalue < thresholds.ks_alpha and ks_statistic >= thresholds.ks_min_statistic
        cusum_alarm = cusum.alarm_index is not None
        groups.append(
            GroupDrift(
                category=str(category),
                complexity=str(complexity),
                n_reference=len(reference),
                n_recent=len(recent),
                psi=psi,
                ks_statistic=ks_statistic,
                ks_pvalue=ks_pvalue,
                cusum=cusum,
                reference_under_rate=reference_rate,
                recent_under_rate=recent_rate,
                psi_drift=psi_drift,
                ks_drift=ks_drift,
                cusum_alarm=cusum_alarm,
                calibration_effect=(applied_in_window is not None and (psi_drift or ks_drift) and not cusum_alarm
                                    and recent_rate < reference_rate),
            )
        )
    return DriftReport(
        thresholds=thresholds,
        now=now,
        recent_start=recent_start,
        events_considered=len(rows),
        groups=groups,
        skipped=skipped,
        calibrated_at=applied_in_window,
        reference_start=reference_start,
    )


def drift_insights(report: DriftReport) -> list[Insight]:
    """One insight per drifted group. More agreeing signals, more confidence.

    Re-estimating a group's coefficients is a judgement call, so every drift task waits for a person.
    A shift that is a calibration's effect (:attr:`GroupDrift.calibration_effect`) asks nothing of anyone.
    """
    t = report.thresholds
    insights = []
    for g in report.drifted():
        if g.calibration_effect:
            continue
        n_signals = len(g.signals)
        direction = "more often underestimated" if g.recent_under_rate > g.reference_under_rate else "shifted"
        insights.append(
            Insight(
                kind="drift",
                subject=g.subject,
                title=f"Estimator error drifted for {g.subject} ({', '.join(g.signals)})",
                detail=(
                    f"Over the last {t.recent_days:g} days ({g.n_recent} events) against the {g.n_reference} events "
                    f"before, log(actual/predicted) moved: PSI {g.psi:.3f} (threshold {t.psi_threshold}), "
                    f"KS D={g.ks_statistic:.3f} p={g.ks_pvalue:.2g} (alpha {t.ks_alpha}, min D {t.ks_min_statistic}), "
                    f"underestimation CUSUM peak {g.cusum.max_statistic:.2f} (h {g.cusum.h:.2f}); underestimation "
                    f"{100 * g.reference_under_rate:.1f}% -> {100 * g.recent_under_rate:.1f}%, {direction}. "
                    "Check what changed (model, prompts, phase mix) before recalibrating this group."
                ),
                confidence={1: 0.7, 2: 0.8}.get(n_signals, 0.9),
                severity=7 if n_signals == 3 else 6,
                task_kind="investigate_estimator",
                requires_approval=True,
                effort="M",
                evidence={
                    "category": g.category,
                    "complexity": g.complexity,
                    "signals": g.signals,
                    "psi": round(g.psi, 4),
                    "ks_statistic": round(g.ks_statistic, 4),
                    "ks_pvalue": g.ks_pvalue,
                    "cusum_max": round(g.cusum.max_statistic, 3),
                    "n_reference": g.n_reference,
                    "n_recent": g.n_recent,
                    "thresholds": {"psi": t.psi_threshold, "ks_alpha": t.ks_alpha, "cusum_h": round(g.cusum.h, 3)},
                },
            )
        )
    return insights
