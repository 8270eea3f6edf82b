"""The analysis window, the clean samples and the tier metrics of an events set, as typed values.

The Dagster assets, the CLI and the composition in :mod:`~autopack_pipeline.services.pipeline`
read these; the numbers come from ``domain.analysis``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from autopack_pipeline.domain.analysis import (
    CleanSamples,
    EventArrays,
    GateDecision,
    SampleGroups,
    calibration_gate_arrays,
    clean_sample_rows,
    sample_groups,
    tier_metrics_document_arrays,
    tier_metrics_with_group_tier1_arrays,
)
from autopack_pipeline.domain.targets import UNDER_TOLERANCE
from autopack_pipeline.domain.windows import (
    SHORT_WINDOW_DAYS,
    TimeWindow,
    events_in_window,
    latest_day,
    trailing_days,
)
from autopack_pipeline.settings import Settings
from autopack_pipeline.storage.frames import as_event_arrays
from autopack_pipeline.storage.snapshot import EventSnapshot

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Engine  # a type only: the analysis of a columnar copy loads no SQLAlchemy


def analysis_window(settings: Settings, events: EventArrays | None = None,
                    today: date | None = None) -> TimeWindow | None:
    """The one window rule of the analysis (assets, ``calibrate``, ``tasks generate``): the last
    AUTOPACK_METRICS_WINDOW_DAYS whole UTC days (28 by default) of telemetry, ending on the day of the
    newest of ``events`` (or ``today``). Anchored on the data, not the clock, so an imported or idle
    database still shows its latest four weeks. ``None`` (the setting at 0) means every event."""
    if not settings.metrics_window_days:
        return None
    anchor = today or (latest_day(events) if events is not None else None)
    return trailing_days(settings.metrics_window_days, anchor)


def analysis_reach(settings: Settings, latest: date | None) -> datetime | None:
    """The earliest moment any analysis step reads when the newest event is on day ``latest``: the
    start of :func:`analysis_window` or of the last 7 days' Tier 1 beside it, whichever is earlier.
    ``None`` means every event: the window is off, or no event has a timestamp."""
    window = analysis_window(settings, today=latest) if latest is not None else None
    if window is None:
        return None
    return min(window.start, trailing_days(SHORT_WINDOW_DAYS, latest).start)


def events_within_reach(settings: Settings, snapshot: EventSnapshot) -> EventArrays:
    """The events of ``snapshot`` the analysis steps read (:func:`analysis_reach`), loaded from only
    the parts of the columnar copy that hold them. The window, the last 7 days and the newest event
    (the windows' anchor) are all inside, so every figure of the analysis is what it would be over
    every event."""
    return snapshot.arrays(since=analysis_reach(settings, snapshot.latest_day()))


def window_label(window: TimeWindow | None) -> str:
    return "all events" if window is None else f"events of {window.label()}"


@dataclass(frozen=True)
class WindowedEvents:
    """The events the analysis reads (inside ``window``) and the window itself."""

    events: EventArrays
    window: TimeWindow | None

    @property
    def label(self) -> str:
        return window_label(self.window)


def events_for_analysis(settings: Settings, every_event: EventArrays) -> WindowedEvents:
    """``every_event`` cut to :func:`analysis_window`."""
    window = analysis_window(settings, every_event)
    return WindowedEvents(events_in_window(every_event, window), window)


@dataclass(frozen=True)
class SampleSummary:
    """The clean samples of an events set, as counts: what the metrics, the gate and the tasks read."""

    count: int
    group_counts: dict[tuple[str, str], int]  # canonical (category, complexity) -> clean samples
    exclusions: dict[str, int]  # why the other events are not samples
    dedup: bool
    # The rows behind the counts, which the calibration stage of the same process reads instead of
    # finding them again (services.pipeline). Never pickled: an IO manager stores the counts only
    # (the rows are tens of MB at ten million events), and a step elsewhere finds them itself.
    rows: CleanSamples | None = field(default=None, compare=False, repr=False)
    groups: SampleGroups | None = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"rows": None, "groups": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def summarise_samples(events: pd.DataFrame | EventArrays, *, dedup: bool = True) -> SampleSummary:
    arrays = as_event_arrays(events)
    samples = clean_sample_rows(arrays, dedup=dedup)
    groups = sample_groups(arrays, samples.mask)
    return SampleSummary(count=samples.count, group_counts=groups.counts(), exclusions=samples.exclusions,
                         dedup=dedup, rows=samples, groups=groups)


def tier_metrics_document(
    events: pd.DataFrame | EventArrays, clean_samples: int, *, under_multiplier: float = UNDER_TOLERANCE
) -> dict[str, Any]:
    """Tier metrics over all Builder calls (the gate's figures) and over successful calls only.

    ``events`` is an events frame or its arrays; ``clean_samples`` is how many clean samples they hold.
    """
    return tier_metrics_document_arrays(as_event_arrays(events), under_multiplier=under_multiplier,
                                        clean_samples=clean_samples)


@dataclass(frozen=True)
class TierMetrics:
    """The tier metrics of one events set: what ``tier_metrics`` and ``daily_tier_metrics`` hand on.

    ``document`` is the JSON document (``tier_metrics_document``); the properties name the parts the
    gate, the checks and the tasks read, so no caller walks the document's keys.
    """

    document: dict[str, Any]
    under_multiplier: float = UNDER_TOLERANCE
    window: str = "all events"
    # Tier 1 over the last SHORT_WINDOW_DAYS of the events (tier_metrics only): {"window", "tier1"}.
    last_7_days: dict[str, Any] | None = field(default=None)
    # Each canonical group's Tier-1 block over the same events (``group_tier1_arrays``), when
    # :meth:`of` counted them beside the document: the calibration gate of the same process reads them
    # (services.pipeline). Not part of the document, and never pickled, as SampleSummary's rows: a
    # step elsewhere counts them over its own events.
    group_tier1: dict[tuple[str, str], dict[str, Any]] | None = field(default=None, compare=False, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"group_tier1": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    @classmethod
    def of(cls, events: EventArrays, clean_samples: int, *, under_multiplier: float = UNDER_TOLERANCE,
           window: str = "all events") -> TierMetrics:
        document, group_tier1 = tier_metrics_with_group_tier1_arrays(
            as_event_arrays(events), under_multiplier=under_multiplier, clean_samples=clean_samples)
        return cls(document, under_multiplier, window, group_tier1=group_tier1)

    @property
    def overall(self) -> dict[str, Any]:
        """Every Builder call's figures: tier1, tier2, strata, needs_tuning."""
        return self.document["all_events"]

    @property
    def tier1(self) -> dict[str, Any]:
        return self.overall["tier1"]

    @property
    def tier2(self) -> dict[str, Any]:
        return self.overall["tier2"]

    @property
    def strata(self) -> dict[str, Any]:
        return self.overall.get("strata", {})

    @property
    def needs_tuning(self) -> bool:
        """A Tier-1 target is breached (Autopack's decision)."""
        return bool(self.overall["needs_tuning"])

    @property
    def clean_samples(self) -> int:
        return int(self.document["clean_samples"])

    def as_dict(self) -> dict[str, Any]:
        """The document as the asset's value used to be: with its window and the last 7 days' Tier 1."""
        extra = {"window": self.window} | ({"last_7_days": self.last_7_days} if self.last_7_days else {})
        return self.document | extra


@dataclass(frozen=True)
class GroupCounts:
    """Clean samples per group known only by their counts (say, from a materialisation's metadata):
    all the calibration gate reads of ``domain.analysis.SampleGroups``."""

    sizes: dict[tuple[str, str], int]

    def counts(self) -> dict[tuple[str, str], int]:
        return dict(self.sizes)


def gate_of_counts(sizes: dict[tuple[str, str], int], tier1: dict[str, Any],
                   group_tier1: dict[Any, dict[str, Any]] | None = None) -> GateDecision:
    """The calibration gate (``domain.analysis.calibration_gate_arrays``: the largest group, certain group
    breaches, the rates) from the clean samples per group and the Tier-1 rates alone."""
    return calibration_gate_arrays(sum(sizes.values()), GroupCounts(sizes), tier1, group_tier1=group_tier1)


def run_tier1(engine: Engine, run_id: str, *, under_multiplier: float = UNDER_TOLERANCE) -> dict[str, Any]:
    """Tier 1 of one run's events alone, read from the database. The analysis window mixes that run
    with the runs before it, which were predicted by older coefficients; after a calibration is applied
    this is what the coefficients the run used achieved (``metrics --run-id RUN`` shows the same)."""
    from autopack_pipeline.domain.analysis import tier1_arrays
    from autopack_pipeline.services.event_reading import read_event_arrays

    events, _ = read_event_arrays(engine, [run_id])
    return tier1_arrays(events, under_multiplier=under_multiplier)
