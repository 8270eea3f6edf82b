"""The escalation rule (domain/escalation.py) the Builder and the synthetic generator both call."""

from __future__ import annotations

import numpy as np
import pytest

from autopack_pipeline.domain import escalation as rule


@pytest.mark.parametrize("max_tokens, selected, expected", [
    (1000, 4000, 4000),  # never below the selected budget (P4)
    (6000, 4000, 6000),
    (90_000, 4000, rule.MAX_TOKENS_CAP),  # never above the cap
])
def test_the_ceiling_sent(max_tokens, selected, expected):
    assert int(rule.ceiling_to_send(max_tokens, selected)) == expected


@pytest.mark.parametrize("truncated, output, ceiling, expected", [
    (True, 10, 4000, True),
    (False, 3800, 4000, True),  # exactly 95%
    (False, 3799, 4000, False),
    (False, 0, 0, False),  # a ceiling of zero does not divide by zero
])
def test_running_out_of_room(truncated, output, ceiling, expected):
    assert bool(rule.runs_out_of_room(truncated, output, ceiling)) is expected


@pytest.mark.parametrize("figures, source, retry", [
    ((4000, 4000, 3900), "selected_budget", 5000),  # a tie goes to the selected budget
    ((4000, 5000, 4100), "actual_max_tokens", 6250),
    ((4000, 4000, 4001), "tokens_used", 5001),
    ((60_000, 60_000, 60_000), "selected_budget", rule.MAX_TOKENS_CAP),
])
def test_the_retry_ceiling_grows_from_the_largest_figure(figures, source, retry):
    base = int(rule.escalation_base(*figures))
    assert base == max(figures)
    assert rule.base_source(*figures) == source
    assert int(rule.retry_max_tokens(base)) == retry == min(int(base * 1.25), rule.MAX_TOKENS_CAP)


def test_arrays_answer_as_the_scalars_do():
    rng = np.random.default_rng(3)
    selected = rng.integers(1_000, 70_000, size=500)
    ceiling = rng.integers(1, 70_000, size=500)
    used = rng.integers(0, 70_000, size=500)
    truncated = rng.random(500) < 0.3
    arrays = (
        rule.ceiling_to_send(ceiling, selected),
        rule.runs_out_of_room(truncated, used, ceiling),
        rule.retry_max_tokens(rule.escalation_base(selected, ceiling, used)),
        rule.output_utilization(used, ceiling),
    )
    for i in range(500):
        s, c, u, t = int(selected[i]), int(ceiling[i]), int(used[i]), bool(truncated[i])
        scalars = (
            min(max(c, s), rule.MAX_TOKENS_CAP),
            t or 100.0 * u / c >= rule.NEAR_CEILING_PCT,
            min(int(max(s, c, u) * 1.25), rule.MAX_TOKENS_CAP),
            100.0 * u / c,
        )
        assert tuple(a[i] for a in arrays) == scalars
