"""The escalated retries a window holds: of the phases whose first call was cut at its budget and
retried at the escalation ceiling, how many were cut again.

Calibration's samples keep one observation per phase (``samples``, ``coverage_calibration``), which
is right for fitting lengths but loses what Tier 1 also counts: Autopack writes one event per
attempt, and a phase cut at budget b is retried once at 1.25 b (``domain.escalation``). How often
that retry is cut again sets how much of the truncation target the first calls may take
(``domain.pooled_margin.first_call_target``), and the window's retries measure it directly, with no
tail model: each is one trial of "a length past b also passes 1.25 b".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autopack_pipeline.domain.analysis.arrays import EventArrays, budget_sent, truncated_flags
from autopack_pipeline.domain.analysis.samples import _member_of
from autopack_pipeline.domain.escalation import ESCALATION_FACTOR


@dataclass(frozen=True)
class RetryOutcomes:
    """Phases whose first call was cut and whose retry had the full escalated room (``retried``), and
    how many of those retries were cut too (``cut_again``)."""

    retried: int
    cut_again: int

    def __post_init__(self) -> None:
        if not 0 <= self.cut_again <= self.retried:
            raise ValueError(f"cut_again must lie in 0..retried, got {self.cut_again} of {self.retried}")


def escalated_retries(arrays: EventArrays, factor: float = ESCALATION_FACTOR) -> RetryOutcomes:
    """The window's retries of cut first calls (attempt 1 truncated, attempt 2 of the same phase).

    A retry counts only when its ceiling is at least ``factor`` x the first call's (the integer part, as
    ``escalation.retry_max_tokens`` rounds): a retry held down by the 64,000-token cap had less room,
    and says less about a retry at 1.25 b. A phase with more than one first call (duplicated rows) is
    left out: which of them the retry followed is unknown."""
    phase = arrays.phase_key
    known = phase.notna() & arrays.attempt.notna()
    attempt = arrays.attempt.values
    seconds = np.flatnonzero(known & (attempt == 2))
    if len(seconds) == 0:
        return RetryOutcomes(0, 0)
    truncated = truncated_flags(arrays)
    # Only the first calls of retried phases are looked at (a few in a thousand of the events).
    firsts = np.flatnonzero(known & (attempt == 1))
    firsts = firsts[_member_of(phase.values[firsts], phase.values[seconds])]
    # In phase order, by one stable sort: a phase with one first call is a key unlike both its neighbours
    # (np.unique's counts and np.isin sorted the same keys twice more: 25 -> 19 ms at 1M, where a fifth
    # of the phases are retried).
    firsts = firsts[np.argsort(phase.values[firsts], kind="stable")]
    keys = phase.values[firsts]
    kept = truncated[firsts]
    kept[1:] &= keys[1:] != keys[:-1]
    kept[:-1] &= keys[:-1] != keys[1:]
    firsts, first_keys = firsts[kept], keys[kept]
    at = np.minimum(np.searchsorted(first_keys, phase.values[seconds]), max(len(firsts) - 1, 0))
    matched = (first_keys[at] == phase.values[seconds]) if len(firsts) else np.zeros(len(seconds), dtype=bool)
    retry, first = seconds[matched], firsts[at[matched]]
    room = budget_sent(arrays, retry) >= np.floor(budget_sent(arrays, first) * factor)
    return RetryOutcomes(int(room.sum()), int((room & truncated[retry]).sum()))
