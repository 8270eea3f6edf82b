"""Time windows over events: one calendar day (UTC), or the trailing N days.

The per-day figures and the rolling-window figures are the all-time figures computed on fewer events:
these functions only choose the rows, and the metrics, samples and gate functions do the rest, so
each rule keeps one implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays

SHORT_WINDOW_DAYS = 7  # "this week": the drift checks' recent window, and the short rolling figures
LONG_WINDOW_DAYS = 28  # the calibration gate's window: four weeks are enough samples, recent enough to matter

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class TimeWindow:
    """The half-open interval [start, end) in UTC."""

    start: datetime
    end: datetime

    def label(self) -> str:
        last_day = (self.end - timedelta(microseconds=1)).date()
        return f"{self.start.date().isoformat()}..{last_day.isoformat()} (UTC)"


def day_window(day: date) -> TimeWindow:
    start = datetime.combine(day, time.min, tzinfo=timezone.utc)
    return TimeWindow(start, start + timedelta(days=1))


def trailing_days(days: int, today: date | None = None) -> TimeWindow:
    """The last ``days`` whole UTC days, ``today`` (default: the current day) included.

    Whole days, so the window is exactly the union of the latest day partitions and stays the same
    all day: the samples, the metrics and the calibration of one day all read the same events.
    """
    if days < 1:
        raise ValueError(f"a window needs at least one day (got {days})")
    today = today or datetime.now(timezone.utc).date()
    return TimeWindow(day_window(today - timedelta(days=days - 1)).start, day_window(today).end)


def _microseconds(moment: datetime) -> int:
    return (moment.astimezone(timezone.utc) - _EPOCH) // timedelta(microseconds=1)


def rows_in_window(arrays: EventArrays, window: TimeWindow) -> np.ndarray:
    """Mask of the events whose timestamp lies in ``window``; events without a timestamp are in no window."""
    stamps = arrays.timestamp_us
    inside = (stamps.values >= _microseconds(window.start)) & (stamps.values < _microseconds(window.end))
    return inside & stamps.notna()


def events_in_window(arrays: EventArrays, window: TimeWindow | None) -> EventArrays:
    """The events of ``window``, in their order; ``None`` means every event. A window holding every
    event gives ``arrays`` themselves: a copy would sit beside them for the whole analysis (at a
    million events, 40 MB and 0.03 s; the 28-day analysis window holds every event of a younger
    history)."""
    if window is None:
        return arrays
    inside = rows_in_window(arrays, window)
    return arrays if inside.all() else arrays.take(inside)


def latest_day(arrays: EventArrays) -> date | None:
    """The UTC day of the newest event; ``None`` when no event has a timestamp."""
    stamps = arrays.timestamp_us
    known = stamps.values if stamps.valid is None else stamps.values[stamps.valid]  # every one known: no copy
    if not len(known):
        return None
    return (_EPOCH + timedelta(microseconds=int(known.max()))).date()


def days_with_events(arrays: EventArrays) -> list[date]:
    """The UTC days on which at least one event was recorded, oldest first."""
    stamps = arrays.timestamp_us
    known = stamps.values[stamps.notna()]
    days = np.unique(known // (86_400 * 1_000_000))
    return [(_EPOCH + timedelta(days=int(d))).date() for d in days]
