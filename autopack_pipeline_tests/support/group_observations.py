"""Constructed calibration groups for the budget and coverage rules' unit tests."""

from __future__ import annotations

import numpy as np

from autopack_pipeline.domain.group_observations import GroupObservationsInForce


def observations(key, log_ratios, censored_ratios=(), predicted=1000.0) -> GroupObservationsInForce:
    """A group whose calls all have ``predicted``: clean ratios exp(``log_ratios``), truncated calls
    censored at ``censored_ratios`` x the prediction."""
    ratios = np.exp(np.asarray(log_ratios, dtype=float))
    return GroupObservationsInForce(key[0], key[1], np.full(len(ratios), predicted), ratios * predicted,
                                    np.full(len(censored_ratios), predicted),
                                    np.asarray(censored_ratios, dtype=float) * predicted)


class CoverageGroupSlice:
    """The slice of a coverage group that ``calibration_section`` reads, made from observations."""

    def __init__(self, group: GroupObservationsInForce):
        self.key, self.predicted, self.actual = (group.category, group.complexity), group.predicted, group.actual
        self.censored_predicted, self.bounds, self.censored_rows = np.zeros(0), np.zeros(0), np.zeros(0)
        self.size = len(group.actual)
