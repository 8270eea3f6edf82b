"""The Builder's escalation rule: how large a phase's retry ceiling is after it ran out of room.

Autopack's executor sends at least the selected budget (its pitfall P4), never more than 64,000
tokens, and escalates a phase once: after a truncated attempt, or after a failed one whose output used
at least 95% of the ceiling. The retry ceiling is ``min(int(base * 1.25), 64000)``, ``base`` being the
largest of the selected budget, the ceiling sent and the tokens used.

One rule for the Builder (one phase at a time, plain ints) and the synthetic generator (millions of
phases at once, numpy arrays): every function takes either and answers in kind, a 0-d array for
scalars, which the caller turns back into an ``int`` or ``bool``.
"""

from __future__ import annotations

import numpy as np

MAX_TOKENS_CAP = 64_000
ESCALATION_FACTOR = 1.25
NEAR_CEILING_PCT = 95.0  # Autopack's executor escalates a failed attempt at this output utilisation

# The figures a retry ceiling may be based on, in the order a tie is resolved (the first wins).
BASE_SOURCES = ("selected_budget", "actual_max_tokens", "tokens_used")


def ceiling_to_send(max_tokens, selected_budget):
    """The ``max_tokens`` sent: never below the selected budget (P4), never above the cap."""
    return np.minimum(np.maximum(max_tokens, selected_budget), MAX_TOKENS_CAP)


def output_utilization(output_tokens, ceiling):
    """Output tokens as a percentage of the ceiling sent (Autopack stores percent, not a fraction)."""
    return 100.0 * np.asarray(output_tokens) / np.maximum(1, ceiling)


def runs_out_of_room(truncated, output_tokens, ceiling):
    """Whether a failed attempt escalates: it was truncated, or its output used 95% of the ceiling.

    Compared as ``output * 100 >= 95 * ceiling`` on integers, which is exact; the caller checks that
    the attempt failed and that the phase has not escalated already.
    """
    return np.asarray(truncated) | (np.asarray(output_tokens) * 100 >= NEAR_CEILING_PCT * np.maximum(1, ceiling))


def escalation_base(selected_budget, actual_max_tokens, tokens_used):
    """The figure a retry ceiling grows from: the largest of the three."""
    return np.maximum(np.maximum(selected_budget, actual_max_tokens), tokens_used)


def base_source(selected_budget: int, actual_max_tokens: int, tokens_used: int) -> str:
    """Which of the three figures :func:`escalation_base` took (the first of :data:`BASE_SOURCES` on a tie)."""
    figures = dict(zip(BASE_SOURCES, (selected_budget, actual_max_tokens, tokens_used), strict=True))
    return max(figures.items(), key=lambda item: item[1])[0]


def retry_max_tokens(base):
    """The retry ceiling grown from ``base``: ``min(int(base * 1.25), 64000)``."""
    return np.minimum((np.asarray(base) * ESCALATION_FACTOR).astype(np.int64), MAX_TOKENS_CAP)
