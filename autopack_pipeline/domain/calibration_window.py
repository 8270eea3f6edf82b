"""Which past events calibration learns from: the recent coefficient versions, shorter after a drift.

Every event records the coefficient version that predicted it. Calibration re-expresses all of them
under the version in force (``domain.reprediction``), so versions are comparable; but the world
they measured may have moved. Reading all history lets pre-drift calls pull a post-drift figure
back, round after round. So the window is:

- the events of the ``versions`` most recent coefficient versions that have events (versions ordered
  by their first event; events from before the column count as one version, the oldest); 0 = all;
- when the newest version's error ``log(actual / predicted in force)`` differs from the rest of the
  window's (:func:`error_moved`), the older versions' events are kept *re-expressed* in the newest
  world (:func:`measured_shift`): each older version's outputs and ceilings are multiplied by the
  shift of its group's median log error to the newest's (the pooled shift where a group has too few
  events on a side), so the location follows the newest version while the tail's shape is still
  estimated from every version in the window (after a drift, one round's ~550 calls alone set
  margins from a few extreme calls). Each version is measured against the newest directly, never
  through the one between, and nothing re-expressed is stored: the next calibration measures again
  from the stored events, so shifts never compound. A version whose shift cannot be measured (no
  group with enough events on both sides) is dropped, as all older versions were before.

The drift test is a stratified rank test: per (category, complexity) group with enough events on
both sides, a Mann-Whitney z of newest against older, combined over groups by Stouffer's sum (a
global drift, the model writing longer everywhere, is found with the power of all groups together,
where a per-group test on ~75 calls would miss a 30% shift); a single group moving alone is found by
its own test at a Bonferroni-corrected level. Truncated calls only bound their ratio from below, and
older versions had other budgets, so both sides of a group are censored at the lowest ceiling either
side hit (a value above it counts as tied at it): censoring then cannot pass for drift.

The shift is a difference of medians, which truncated calls do not move as long as the ceilings they
hit lie above the median; a side where one does not has no known median, and its group takes the
pooled shift. Scaling a truncated call's ceiling with its output keeps it censored at the same place
relative to the prediction, so the re-expressed call is still a lower bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
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
class VersionShift:
    """How an older version's events were re-expressed in the newest version's world (log factors)."""

    version: str | None
    events: int
    pooled: float  # the groups' shifts averaged, weighted as their precision (n_new n_old / (n_new + n_old))
    groups: dict[str, float]  # groups measured on their own; the others take ``pooled``

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "events": self.events, "pooled_factor": math.exp(self.pooled),
                "group_factors": {g: math.exp(v) for g, v in self.groups.items()}}


@dataclass(frozen=True)
class CalibrationWindow:
    rows: np.ndarray  # boolean mask over the events
    versions: list[str | None]  # in the window, oldest first
    dropped_versions: list[str | None]
    drift: DriftTest | None = None
    reason: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    # Per event, the log factor its output and ceiling are re-expressed by (0: as stored); None: none is.
    log_shift: np.ndarray | None = None
    shifts: list[VersionShift] = field(default_factory=list)

    def events_of(self, arrays: Any) -> Any:
        """The window's events of ``arrays`` (EventArrays), older versions' outputs and ceilings re-expressed."""
        if self.log_shift is None and self.rows.all():  # a window of every event: the arrays as they are, no copy
            return arrays
        kept = arrays.take(self.rows)
        if self.log_shift is None:
            return kept
        factor = np.exp(self.log_shift[self.rows])

        def scaled(column: Any) -> Any:  # token counts stay integers, as stored
            return dataclasses.replace(column, values=np.rint(column.values * factor).astype(column.values.dtype))

        return dataclasses.replace(kept, actual=scaled(kept.actual), selected_budget=scaled(kept.selected_budget),
                                   actual_max_tokens=scaled(kept.actual_max_tokens))

    def as_dict(self) -> dict[str, Any]:
        return {"versions": self.versions, "dropped_versions": self.dropped_versions, "events": int(self.rows.sum()),
                "events_dropped": int((~self.rows).sum()), "reason": self.reason,
                "drift": None if self.drift is None else {"moved": self.drift.moved, "summary": self.drift.summary()},
                "re_expressed": [shift.as_dict() for shift in self.shifts]}


def _censored_at_common_ceiling(newest: tuple[np.ndarray, np.ndarray], older: tuple[np.ndarray, np.ndarray]
                                ) -> tuple[np.ndarray, np.ndarray]:
    """Both sides' values with everything above the lowest censoring point tied at it."""
    bounds = [v[c] for v, c in (newest, older) if c.any()]
    if not bounds:
        return newest[0], older[0]
    ceiling = min(float(b.min()) for b in bounds)
    return np.minimum(newest[0], ceiling), np.minimum(older[0], ceiling)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks (``scipy.stats.rankdata``'s
    default). Not scipy's: importing ``scipy.stats`` took 1.1 s of a `calibrate` of 1.3 s on a database with two
    coefficient versions, every round of the loop after the first."""
    order = np.argsort(values, kind="stable")
    ascending = values[order]
    starts = np.flatnonzero(np.r_[True, ascending[1:] != ascending[:-1]])  # each distinct value's first place
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + 1 + ends) / 2, ends - starts)
    return ranks


def _rank_z(newest: np.ndarray, older: np.ndarray) -> float:
    """Mann-Whitney z of ``newest`` against ``older`` (positive: newest larger), tie-corrected."""
    n1, n2 = len(newest), len(older)
    ranks = _average_ranks(np.r_[newest, older])
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    _, ties = np.unique(ranks, return_counts=True)
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - (ties ** 3 - ties).sum() / (n * (n - 1)))
    return 0.0 if variance <= 0 else float((u - n1 * n2 / 2) / math.sqrt(variance))


def _first_seen(codes: np.ndarray) -> list[int]:
    """The distinct codes of ``codes``, in the order they first appear."""
    distinct, first = np.unique(codes, return_index=True)
    return distinct[np.argsort(first, kind="stable")].tolist()


def error_moved(groups: np.ndarray, log_ratio: np.ndarray, censored: np.ndarray, newest: np.ndarray,
                older: np.ndarray, *, alpha: float = DRIFT_ALPHA, min_events: int = MIN_EVENTS_PER_SIDE,
                group_names: Sequence[str] | None = None) -> DriftTest:
    """Whether the error of the ``newest`` rows differs from the ``older`` rows' (see the module docstring).

    ``log_ratio`` is log(actual / predicted in force), NaN where unusable; ``censored`` marks truncated
    calls (their value is the log of the ceiling ratio, a lower bound). ``groups`` holds each row's
    group label, or, with ``group_names``, its integer code into them.
    """
    usable = np.isfinite(log_ratio)
    if group_names is None:  # labels: number them in the order they first appear
        group_names = list(dict.fromkeys(np.asarray(groups, dtype=object)[usable].tolist()))
        lookup = {name: i for i, name in enumerate(group_names)}
        groups = np.array([lookup.get(label, -1) for label in np.asarray(groups, dtype=object).tolist()],
                          dtype=np.int64)
    groups = np.where(usable, groups, -1)
    zs, labels = [], []
    for code in _first_seen(groups[usable]):
        rows = groups == code
        a, b = rows & newest, rows & older
        if a.sum() < min_events or b.sum() < min_events:
            continue
        x, y = _censored_at_common_ceiling((log_ratio[a], censored[a]), (log_ratio[b], censored[b]))
        zs.append(_rank_z(x, y))
        labels.append(group_names[code])
    if not zs:
        return DriftTest(False, None, 0)
    z = np.asarray(zs)
    combined = float(z.sum() / math.sqrt(len(z)))
    p = np.array([_two_sided_p(value) for value in zs])
    worst = int(np.argmin(p))
    moved = bool(_two_sided_p(combined) < alpha or p[worst] < alpha / len(z))
    return DriftTest(moved, combined, len(z), str(labels[worst]), float(p[worst]))


def _two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z: ``erfc(|z| / sqrt 2)``, from the standard library (see
    :func:`_average_ranks` on scipy's import)."""
    return math.erfc(abs(z) / math.sqrt(2))


def _median_if_known(values: np.ndarray, censored: np.ndarray) -> float | None:
    """The median of ``values`` whose ``censored`` entries are lower bounds, or None when one of those
    bounds is not above it (that call may lie on either side)."""
    median = float(np.median(np.where(censored, np.inf, values)))
    if not math.isfinite(median) or (censored.any() and float(values[censored].min()) <= median):
        return None
    return median


def measured_shift(groups: np.ndarray, log_ratio: np.ndarray, censored: np.ndarray, newest: np.ndarray,
                   older: np.ndarray, *,
                   min_events: int = MIN_EVENTS_PER_SIDE) -> tuple[float, dict[str, float]] | None:
    """(pooled, per group) shift of the median log error from the ``older`` rows to the ``newest``;
    None when no group has ``min_events`` usable events with a known median on both sides."""
    usable = np.isfinite(log_ratio)
    own: dict[str, float] = {}
    weights: list[float] = []
    for label in dict.fromkeys(np.asarray(groups, dtype=object)[usable & (newest | older)].tolist()):
        rows = usable & (groups == label)
        a, b = rows & newest, rows & older
        n_new, n_old = int(a.sum()), int(b.sum())
        if n_new < min_events or n_old < min_events:
            continue
        new_median = _median_if_known(log_ratio[a], censored[a])
        old_median = _median_if_known(log_ratio[b], censored[b])
        if new_median is None or old_median is None:
            continue
        own[str(label)] = new_median - old_median
        weights.append(n_new * n_old / (n_new + n_old))
    if not own:
        return None
    return float(np.average(list(own.values()), weights=weights)), own


def choose_window(versions: Sequence[str | None], order: np.ndarray, groups: np.ndarray, log_ratio: np.ndarray,
                  censored: np.ndarray, *, keep_versions: int = DEFAULT_WINDOW_VERSIONS) -> CalibrationWindow:
    """The rows calibration reads (see the module docstring). ``order`` ranks the events in time (event
    ids); ``keep_versions`` 0 keeps every version."""
    names = list(dict.fromkeys(versions))
    lookup = {name: i for i, name in enumerate(names)}
    codes = np.array([lookup[v] for v in versions], dtype=np.int64)
    return window_of_codes(codes, names, order, groups, log_ratio, censored, keep_versions=keep_versions)


def window_of_codes(version_codes: np.ndarray, version_names: Sequence[str | None], order: np.ndarray,
                    groups: np.ndarray, log_ratio: np.ndarray, censored: np.ndarray, *,
                    keep_versions: int = DEFAULT_WINDOW_VERSIONS,
                    group_names: Sequence[str] | None = None) -> CalibrationWindow:
    """:func:`choose_window` with each row's version as a code into ``version_names`` (and, with
    ``group_names``, its group as a code into them): whole columns, no Python value per row."""
    return _window(version_codes, version_names, order, lambda: (groups, log_ratio, censored, group_names),
                   keep_versions=keep_versions)


def _window(version_codes: np.ndarray, version_names: Sequence[str | None],
            order: np.ndarray | Callable[[], np.ndarray],
            errors: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray, Sequence[str] | None]], *,
            keep_versions: int) -> CalibrationWindow:
    """:func:`window_of_codes`, its groups, log ratios, censoring and group names asked of ``errors`` only
    when the window keeps two versions or more: only the drift test between them reads them. ``order``:
    the events' order in time, or a function giving it, asked only when there are versions to rank."""
    codes = np.asarray(version_codes, dtype=np.int64)
    # Every event of one version (an Autopack database, which keeps none, has only None): nothing to rank
    # or leave out, where the sort, the search and the gathers of every event cost ~25 ms at a million.
    single = bool(len(codes)) and int(codes.min()) == int(codes.max())
    present = [int(codes[0])] if single else _first_seen(codes)
    first = np.full(len(version_names), math.inf)
    if len(present) > 1:  # the versions' first events order them
        np.minimum.at(first, codes, np.asarray(order() if callable(order) else order, dtype=float))
    # Events from before the column (None) are the oldest; the others by their first event (ties: the
    # version seen first).
    ranked_codes = sorted(present, key=lambda c: (version_names[c] is not None, first[c]))
    ranked = [version_names[c] for c in ranked_codes]
    kept_codes = ranked_codes if keep_versions <= 0 else ranked_codes[-keep_versions:]
    kept = [version_names[c] for c in kept_codes]
    rows = np.ones(len(codes), dtype=bool) if single else np.isin(codes, kept_codes)
    dropped = [v for v in ranked if v not in kept]
    if len(kept) < 2:
        return CalibrationWindow(rows, kept, dropped, None, f"{len(kept)} version(s) with events: all kept")
    newest = codes == kept_codes[-1]
    groups, log_ratio, censored, group_names = errors()
    drift = error_moved(np.asarray(groups), np.asarray(log_ratio, dtype=float), np.asarray(censored, dtype=bool),
                        newest, rows & ~newest, group_names=group_names)
    if drift.moved:
        code_of = {version_names[c]: c for c in kept_codes}
        labels = np.asarray(groups, dtype=object)
        if group_names is not None:  # the shifts are reported per group name
            named = np.asarray([*group_names, None], dtype=object)
            labels = named[np.where(np.asarray(groups) >= 0, groups, len(group_names))]
        return _re_expressed_window(kept, dropped, lambda chosen: np.isin(codes, [code_of[v] for v in chosen]),
                                    newest, drift, labels, np.asarray(log_ratio, dtype=float),
                                    np.asarray(censored, dtype=bool))
    return CalibrationWindow(rows, kept, dropped, drift, f"the last {len(kept)} versions with events")


def _re_expressed_window(kept: list[str | None], dropped: list[str | None], rows_of: Any, newest: np.ndarray,
                         drift: DriftTest, groups: np.ndarray, log_ratio: np.ndarray,
                         censored: np.ndarray) -> CalibrationWindow:
    """After a drift: the newest version's events, and each older version's re-expressed by its own
    shift to the newest (measured against the newest directly: no chain of shifts to compound)."""
    rows, log_shift, shifts, gone = newest.copy(), np.zeros(len(newest)), [], []
    for version in kept[:-1]:
        mine = rows_of([version])
        measured = measured_shift(groups, log_ratio, censored, newest, mine)
        if measured is None:
            gone.append(version)
            continue
        pooled, own = measured
        log_shift[mine] = [own.get(str(g), pooled) for g in groups[mine].tolist()]
        rows |= mine
        shifts.append(VersionShift(version, int(mine.sum()), pooled, own))
    versions = [v for v in kept if v not in gone]
    if not shifts:
        return CalibrationWindow(newest, versions, dropped + gone, drift,
                                 f"the error moved under {kept[-1]}: only its events are kept")
    factors = "; ".join(f"{s.version}: {len(s.groups)} group(s) by their own medians, "
                        f"x{math.exp(min(s.groups.values())):.3f} to x{math.exp(max(s.groups.values())):.3f}, "
                        f"the others x{math.exp(s.pooled):.3f} (pooled)" for s in shifts)
    return CalibrationWindow(rows, versions, dropped + gone, drift,
                             f"the error moved under {kept[-1]}: older events re-expressed in its world by the "
                             f"measured shift ({factors})", log_shift=log_shift, shifts=shifts)


def window_of_events(arrays: Any, inputs: Any, *, keep_versions: int = DEFAULT_WINDOW_VERSIONS) -> CalibrationWindow:
    """:func:`choose_window` over ``arrays`` (EventArrays, predictions already in force) and ``inputs``
    (``reprediction.PredictionInputs``: the ``coefficients_version`` of each stored event)."""
    from autopack_pipeline.domain.analysis.arrays import budget_sent, truncated_flags
    from autopack_pipeline.domain.categories import normalise_category, normalise_complexity

    ids = arrays.event_id
    # Events without a version (or without stored inputs) share the last code: None.
    version_names = [*inputs.versions.values, None]
    if inputs.versions.values:
        codes = inputs.version_codes(inputs.positions(ids)).astype(np.int64)
        codes[codes < 0] = len(version_names) - 1
    else:  # no version stored (an Autopack database has no column for it): every event's is None, found or not
        codes = np.zeros(len(arrays), dtype=np.int64)

    def order() -> np.ndarray:  # the events' order in time, read only when versions are to be ranked
        return np.where(ids.notna(), ids.values, np.arange(len(arrays))).astype(float)

    def errors() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        # Only a window of two versions or more tests for drift: a database of one version (or of none, as
        # Autopack's, without the column) skips these columns, 80 ms and ~80 MB of temporaries at 1M events.
        cat_codes, cat_names = arrays.category.canonical(normalise_category)
        cx_codes, cx_names = arrays.complexity.canonical(normalise_complexity)
        groups = cat_codes.astype(np.int64) * len(cx_names) + cx_codes
        group_names = [f"{cat}/{cx}" for cat in cat_names for cx in cx_names]
        predicted, actual = arrays.predicted.floats(), arrays.actual.floats()
        censored = truncated_flags(arrays)
        # A truncated call's value is its lower bound: the larger of the ceiling it hit and its output.
        value = np.where(censored, np.fmax(budget_sent(arrays, None), actual), actual)
        with np.errstate(divide="ignore", invalid="ignore"):
            log_ratio = np.where((predicted > 0) & (value > 0), np.log(value / predicted), np.nan)
        return groups, log_ratio, censored, group_names

    return _window(codes, version_names, order, errors, keep_versions=keep_versions)


def window_line(window: dict[str, Any]) -> str:
    """One line for a person: what calibration read (``CalibrationWindow.as_dict()``)."""
    drift = window.get("drift")
    tested = f"; {drift['summary']}" if drift else ""
    return (f"Calibration window: {window['events']} events of coefficient version(s) "
            f"{', '.join(str(v) for v in window['versions'])} ({window['reason']}); "
            f"{window['events_dropped']} older events left out{tested}")
