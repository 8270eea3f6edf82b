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
    truncated = truncated_flags(arrays)
    firsts = np.flatnonzero(known & (attempt == 1))
    seconds = np.flatnonzero(known & (attempt == 2))
    if len(firsts) == 0 or len(seconds) == 0:
        return RetryOutcomes(0, 0)
    keys, counts = np.unique(phase.values[firsts], return_counts=True)
    single = np.isin(phase.values[firsts], keys[counts == 1])
    cut = firsts[single & truncated[firsts]]
    cut = cut[np.argsort(phase.values[cut], kind="stable")]
    cut_keys = phase.values[cut]
    at = np.searchsorted(cut_keys, phase.values[seconds])
    at_ok = at < len(cut_keys)
    matched = np.zeros(len(seconds), dtype=bool)
    matched[at_ok] = cut_keys[at[at_ok]] == phase.values[seconds][at_ok]
    retry, first = seconds[matched], cut[at[matched]]
    room = budget_sent(arrays, retry) >= np.floor(budget_sent(arrays, first) * factor)
    return RetryOutcomes(int(room.sum()), int((room & truncated[retry]).sum()))
