"""Budget margins read each group's upper spread partly pooled with the other groups' (domain.scale_pooling)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from autopack_pipeline.domain.group_shape import group_shape
from autopack_pipeline.domain.scale_pooling import scales_pooled

pytestmark = pytest.mark.unit

# One tail shape: evenly spaced quantiles of a standard normal, on the log scale.
SHAPE = norm.ppf((np.arange(80) + 0.5) / 80)


def test_each_log_scale_moves_half_way_to_the_call_weighted_average_and_every_fold_with_it():
    narrow = group_shape(("docs", "low"), np.exp(0.2 * SHAPE), np.zeros(0))
    wide = group_shape(("tests", "medium"), np.exp(0.8 * np.r_[SHAPE, SHAPE[::2]]), np.zeros(0))  # 120 calls
    pooled = scales_pooled([narrow, wide], weight=0.5)
    centre = (80 * math.log(narrow.scale) + 120 * math.log(wide.scale)) / 200
    for before, after in zip([narrow, wide], pooled):
        factor = math.exp(0.5 * (centre - math.log(before.scale)))
        assert after.scale == pytest.approx(before.scale * factor)
        assert after.location == before.location
        # Scores are read with the folds' places: each one's scale moved by the same factor.
        assert np.allclose(after.scores()[0], before.scores()[0] / factor)
        assert after.margin(2.0) == pytest.approx(math.exp(before.location + before.scale * factor * 2.0))
    assert pooled[0].scale > narrow.scale and pooled[1].scale < wide.scale


def test_one_group_or_no_weight_keeps_the_shapes():
    only = group_shape(("docs", "low"), np.exp(0.3 * SHAPE), np.zeros(0))
    assert scales_pooled([only])[0] is only
    other = group_shape(("tests", "low"), np.exp(0.6 * SHAPE), np.zeros(0))
    assert scales_pooled([only, other], weight=0.0) == [only, other]


def test_the_patch_margins_read_pooled_scales():
    from pathlib import Path

    from autopack_pipeline.domain.budget_calibration import calibration_section, pooled_margins
    from autopack_pipeline.domain.coefficients import load_coefficients
    from autopack_pipeline.domain.escalation import ESCALATION_FACTOR
    from autopack_pipeline_tests.support.group_observations import CoverageGroupSlice, observations

    seed = load_coefficients(Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml")
    # 400 calls of one shape: the pooled scores' point falls among the calls. With 160, it fell on each
    # group's largest ratio whatever the scales, and the two margins differed only by rounding.
    many = norm.ppf((np.arange(400) + 0.5) / 400)
    narrow = observations(("docs", "low"), 0.4 * many)
    wide = observations(("tests", "medium"), 0.6 * many)
    section = calibration_section([CoverageGroupSlice(narrow), CoverageGroupSlice(wide)], seed, {})
    margins = {(g["category"], g["complexity"]): g["budget_margin"] for g in section["groups"]}
    pooled = pooled_margins([narrow, wide], {}, retry_factor=ESCALATION_FACTOR, pool_scales=True)
    own = pooled_margins([narrow, wide], {}, retry_factor=ESCALATION_FACTOR)
    assert set(pooled) == set(margins) == {("docs", "low"), ("tests", "medium")}
    for key in margins:
        assert margins[key] == math.ceil(pooled[key][0] * 1000) / 1000
    # The narrow group's spread moved up and the wide one's down: their margins with them.
    assert pooled[("docs", "low")][0] > own[("docs", "low")][0]
    assert pooled[("tests", "medium")][0] < own[("tests", "medium")][0]


def test_a_group_wider_than_its_pooled_scale_is_refused_by_its_own_calls():
    from autopack_pipeline.domain.budget_calibration import pooled_margins
    from autopack_pipeline.domain.escalation import ESCALATION_FACTOR
    from autopack_pipeline_tests.support.group_observations import observations

    many = np.r_[SHAPE, SHAPE[1::2], SHAPE[::2]]
    groups = [observations(("docs", "low"), 0.2 * many), observations(("tests", "medium"), 0.8 * many)]
    # Its scale pulled half way down, its own calls pass the pooled margin too often: it keeps its own bound.
    assert ("tests", "medium") in pooled_margins(groups, {}, retry_factor=ESCALATION_FACTOR)
    assert ("tests", "medium") not in pooled_margins(groups, {}, retry_factor=ESCALATION_FACTOR, pool_scales=True)
