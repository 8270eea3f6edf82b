"""Drift of the estimator's error, per (category, complexity) group: PSI, two-sample KS, CUSUM.

The quantity watched is ``l = log(actual / predicted)``: zero when the estimate was exact, positive
when the estimate was too small. A group is compared between a *recent* window (the last 7 days by
default) and a *reference* window (everything before it), and only when both windows hold enough
events for the statistics to mean something; other groups are listed as skipped, with their counts.

- PSI over quantile bins of the reference ``l``: how much the shape of the error moved.
  The 0.1 / 0.25 bands are convention, not theory, so the threshold is a parameter.
- Two-sample Kolmogorov-Smirnov on ``l`` (scipy), flagged only when the p-value is small *and* the
  statistic is large enough to matter: on large windows the test rejects on tiny shifts.
- A one-sided Bernoulli CUSUM over the recent events in time order, on the underestimation
  indicator ``actual > predicted * 1.1``: it accumulates the log-likelihood ratio of "the rate has
  doubled" against the reference rate and signals when the sum passes ``h``.

Pure functions on the events' arrays; drifted groups also become :class:`Insight` objects for task generation.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.analysis.samples import stable_order
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
    cusum_h: float = 5.0  # decision interval, in log-likelihood units
    under_multiplier: float = UNDER_TOLERANCE

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


PSI_EPSILON = 1e-4
# The reference underestimation rate is kept inside this range so the CUSUM's likelihood ratio
# stays finite when the reference window never (or always) underestimated.
_CUSUM_P0_RANGE = (0.01, 0.45)


def population_stability_index(reference: np.ndarray, recent: np.ndarray, bins: int = 10) -> float:
    """PSI of ``recent`` against ``reference``, on bins cut at the reference's quantiles.

    Repeated reference values can merge quantile edges, so fewer bins may be used; empty bins are
    smoothed with a small epsilon so the logarithm stays finite.
    """
    reference = np.asarray(reference, dtype=float)
    recent = np.asarray(recent, dtype=float)
    if reference.size == 0 or recent.size == 0:
        raise ValueError("PSI needs values in both windows")
    inner_edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1))[1:-1])
    expected = np.bincount(np.searchsorted(inner_edges, reference, side="right"), minlength=inner_edges.size + 1)
    actual = np.bincount(np.searchsorted(inner_edges, recent, side="right"), minlength=inner_edges.size + 1)
    e = np.maximum(expected / reference.size, PSI_EPSILON)
    a = np.maximum(actual / recent.size, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_two_sample(reference: np.ndarray, recent: np.ndarray) -> tuple[float, float]:
    """Kolmogorov-Smirnov statistic and two-sided p-value."""
    from scipy import stats  # here, not at import: scipy.stats costs a second to load, and only KS needs it

    result = stats.ks_2samp(np.asarray(reference, dtype=float), np.asarray(recent, dtype=float))
    return float(result.statistic), float(result.pvalue)


@dataclass(frozen=True)
class CusumResult:
    p0: float  # in-control underestimation rate (from the reference window)
    p1: float  # out-of-control rate the CUSUM is tuned to detect
    max_statistic: float
    final_statistic: float
    alarm_index: int | None  # position in the recent sequence of the first crossing of h


def bernoulli_cusum(indicators: np.ndarray, p0: float, h: float, p1: float | None = None) -> CusumResult:
    """Upper Bernoulli CUSUM: ``S_t = max(0, S_{t-1} + x_t log(p1/p0) + (1-x_t) log((1-p1)/(1-p0)))``.

    ``p0`` is clamped to [0.01, 0.45]; ``p1`` defaults to twice ``p0`` (at least five points more).
    """
    p0 = min(max(float(p0), _CUSUM_P0_RANGE[0]), _CUSUM_P0_RANGE[1])
    p1 = float(p1) if p1 is not None else min(0.95, max(2.0 * p0, p0 + 0.05))
    if not 0.0 < p0 < p1 < 1.0:
        raise ValueError(f"need 0 < p0 < p1 < 1, got p0={p0}, p1={p1}")
    up, down = math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0))
    s = peak = 0.0
    alarm: int | None = None
    for index, x in enumerate(np.asarray(indicators, dtype=bool)):
        s = max(0.0, s + (up if x else down))
        peak = max(peak, s)
        if alarm is None and s > h:
            alarm = index
    return CusumResult(p0=p0, p1=p1, max_statistic=peak, final_statistic=s, alarm_index=alarm)


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

    def drifted(self, signal: str | None = None) -> list[GroupDrift]:
        """Groups with any signal, or with the named one (``psi``, ``ks``, ``cusum``)."""
        return [g for g in self.groups if (signal in g.signals if signal else g.drifted)]

    def summary(self) -> str:
        if not self.groups:
            return (
                f"no group has {self.thresholds.min_events_per_window} events in both the reference window and the "
                f"last {self.thresholds.recent_days:g} days ({len(self.skipped)} groups skipped)"
            )
        drifted = self.drifted()
        names = ", ".join(f"{g.subject} ({'+'.join(g.signals)})" for g in drifted) or "none"
        return f"{len(self.groups)} groups compared, {len(drifted)} drifted: {names}"


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _microseconds(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def detect_drift(
    arrays: EventArrays, *, now: datetime | None = None, thresholds: DriftThresholds | None = None
) -> DriftReport:
    """Compare each (category, complexity) group's recent window with its reference window.

    Events need positive predicted and actual token counts and a timestamp; events dated after
    ``now`` (clock skew) are ignored.
    """
    thresholds = thresholds or DriftThresholds()
    now = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    recent_start = now - timedelta(days=thresholds.recent_days)
    predicted, actual = arrays.predicted.floats(), arrays.actual.floats()
    stamps = arrays.timestamp_us.values
    with np.errstate(invalid="ignore"):
        usable = (predicted > 0) & (actual > 0) & arrays.timestamp_us.notna() & (stamps <= _microseconds(now))
    rows = np.flatnonzero(usable)
    log_ratio = np.log(actual[rows] / predicted[rows])
    underestimated = np.exp(log_ratio) > thresholds.under_multiplier
    stamps, event_ids = stamps[rows], arrays.event_id.values[rows]
    in_recent = stamps >= _microseconds(recent_start)
    cat_codes, cat_names = arrays.category.canonical(normalise_category)
    cx_codes, cx_names = arrays.complexity.canonical(normalise_complexity)
    pair = cat_codes[rows].astype(np.int64) * len(cx_names) + cx_codes[rows]
    order = stable_order(pair)  # by group, row order kept within each (a radix sort: the codes are small)
    starts = np.flatnonzero(np.r_[True, pair[order][1:] != pair[order][:-1]]) if len(order) else order

    groups: list[GroupDrift] = []
    skipped: dict[str, tuple[int, int]] = {}
    for start, end in itertools.pairwise([*starts, len(order)]):
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
        reference_rate = float(underestimated[reference].mean())
        cusum = bernoulli_cusum(underestimated[recent], reference_rate, thresholds.cusum_h)
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
                recent_under_rate=float(underestimated[recent].mean()),
                psi_drift=psi > thresholds.psi_threshold,
                ks_drift=ks_pvalue < thresholds.ks_alpha and ks_statistic >= thresholds.ks_min_statistic,
                cusum_alarm=cusum.alarm_index is not None,
            )
        )
    return DriftReport(
        thresholds=thresholds,
        now=now,
        recent_start=recent_start,
        events_considered=len(rows),
        groups=groups,
        skipped=skipped,
    )


def drift_insights(report: DriftReport) -> list[Insight]:
    """One insight per drifted group. More agreeing signals, more confidence.

    Re-estimating a group's coefficients is a judgement call, so every drift task waits for a person.
    """
    t = report.thresholds
    insights = []
    for g in report.drifted():
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
                    f"underestimation CUSUM peak {g.cusum.max_statistic:.2f} (h {t.cusum_h}); underestimation "
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
                    "thresholds": {"psi": t.psi_threshold, "ks_alpha": t.ks_alpha, "cusum_h": t.cusum_h},
                },
            )
        )
    return insights
