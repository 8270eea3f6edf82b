"""Counts over a set of events that add up: the data-quality figures of every event ever recorded.

The blocking data-quality checks and raw_events' metadata judge the whole history, not the analysis
window. Each figure here is a sum over events, so the tally of a history is the sum of the tallies of
its pieces: each part of the columnar copy is tallied as it is written (storage/columnar/tallies.py
keeps them), and a run adds up ten tallies instead of reading ten million events again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays, IntColumn, success_flags, truncated_flags
from autopack_pipeline.domain.analysis import truncation_disagreements as _disagreements

# Claude's largest output ceiling is 128k tokens; a count beyond a million is a unit or parsing error.
MAX_PLAUSIBLE_TOKENS = 1_000_000
MAX_PLAUSIBLE_DELIVERABLES = 1_000
# Column name -> the EventArrays field that holds it, and the ceiling a value may not pass.
PLAUSIBLE_CEILINGS = {"predicted_output_tokens": ("predicted", MAX_PLAUSIBLE_TOKENS),
                      "actual_output_tokens": ("actual", MAX_PLAUSIBLE_TOKENS),
                      "selected_budget": ("selected_budget", MAX_PLAUSIBLE_TOKENS),
                      "actual_max_tokens": ("actual_max_tokens", MAX_PLAUSIBLE_TOKENS),
                      "deliverable_count": ("deliverable_count", MAX_PLAUSIBLE_DELIVERABLES)}


def implausible_counts(events: EventArrays) -> dict[str, dict[str, int]]:
    """Per numeric column, how many values are negative and how many beyond the plausible ceiling."""
    found: dict[str, dict[str, int]] = {}
    for name, (attribute, ceiling) in PLAUSIBLE_CEILINGS.items():
        values = _known(getattr(events, attribute))
        found[name] = {"negative": int((values < 0).sum()), "absurd": int((values > ceiling).sum()), "ceiling": ceiling}
    return found


def _known(column: IntColumn) -> np.ndarray:
    return column.values if column.valid is None else column.values[column.valid]


@dataclass(frozen=True)
class EventTally:
    """How many events, how many succeeded, were truncated, disagree on truncation, and hold
    implausible counts (per column: negative, above its ceiling)."""

    events: int = 0
    succeeded: int = 0
    truncated: int = 0
    truncation_disagreements: int = 0
    implausible: dict[str, dict[str, int]] = field(
        default_factory=lambda: {name: {"negative": 0, "absurd": 0, "ceiling": ceiling}
                                 for name, (_attribute, ceiling) in PLAUSIBLE_CEILINGS.items()})

    def __add__(self, other: EventTally) -> EventTally:
        return EventTally(
            events=self.events + other.events,
            succeeded=self.succeeded + other.succeeded,
            truncated=self.truncated + other.truncated,
            truncation_disagreements=self.truncation_disagreements + other.truncation_disagreements,
            implausible={name: {"negative": counts["negative"] + other.implausible[name]["negative"],
                                "absurd": counts["absurd"] + other.implausible[name]["absurd"],
                                "ceiling": counts["ceiling"]}
                         for name, counts in self.implausible.items()},
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, document: dict[str, Any]) -> EventTally:
        return cls(**document)


def tally_events(events: EventArrays) -> EventTally:
    """The tally of ``events``, by the same rules the analysis uses for success and truncation."""
    return EventTally(events=len(events), succeeded=int(success_flags(events).sum()),
                      truncated=int(truncated_flags(events).sum()),
                      truncation_disagreements=_disagreements(events), implausible=implausible_counts(events))


def add_tallies(tallies: list[EventTally]) -> EventTally:
    total = EventTally()
    for tally in tallies:
        total = total + tally
    return total
