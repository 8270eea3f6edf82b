"""The coefficient file's calibration section: multipliers on every model, budget margins and floors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autopack_pipeline.domain.backtest import run_backtest
from autopack_pipeline.domain.budget_calibration import propose_group_budget
from autopack_pipeline.domain.budget_insights import insights_from_budget_proposals
from autopack_pipeline.domain.coefficients import GroupSetting, load_coefficients
from autopack_pipeline.domain.estimator import TokenEstimator, select_budget
from autopack_pipeline.domain.group_observations import GroupObservationsInForce
from autopack_pipeline.domain.reprediction import PredictionInputs, Repredictor, StoredPrediction
from autopack_pipeline.storage.frames import event_arrays_from_frame

SYNTHESIS = ["docs/api_reference.md", "docs/examples.md"]  # api reference + examples: the doc_synthesis model
DOCS_LOW = ["docs/notes.md"]  # a plain docs phase: the overhead model under docs
PHASES = [(SYNTHESIS, "docs", "medium"), (DOCS_LOW, "docs", "low"), (["src/a.py (new)"], "implementation", "low"),
          ([], "tests", "high"), (["CHANGELOG.md"], "docs", "low"), (["tests/test_a.py"] * 9, "testing", "medium")]


@pytest.fixture
def seed():
    return load_coefficients(Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml")


def test_a_file_without_the_section_estimates_and_budgets_exactly_as_before(seed):
    assert "calibration" not in seed.to_dict()
    # A section naming only an unrelated group changes nothing for the others, byte for byte.
    other = seed.with_calibration({("database", "high"): GroupSetting(prediction_multiplier=3.0, budget_floor=1)},
                                  "v-other")
    for deliverables, category, complexity in PHASES:
        before = TokenEstimator(seed).estimate(deliverables, category, complexity)
        after = TokenEstimator(other).estimate(deliverables, category, complexity)
        assert after == before
        assert select_budget(after, complexity, other) == select_budget(before, complexity, seed)
    # The pinned Autopack figure of one new python file in implementation/low: (634 + 2000) * 1.3.
    assert TokenEstimator(seed).estimate(["src/a.py (new)"], "implementation", "low").estimated_tokens == 3424


def test_doc_model_groups_move_by_their_multiplier(seed):
    plain = TokenEstimator(seed)
    synthesis = plain.estimate(SYNTHESIS, "docs", "medium")
    docs = plain.estimate(DOCS_LOW, "docs", "low")
    assert synthesis.category == "doc_synthesis" and docs.category == "docs"
    table = seed.with_calibration({("doc_synthesis", "medium"): GroupSetting(prediction_multiplier=1.5),
                                   ("docs", "low"): GroupSetting(prediction_multiplier=2.0)}, "v-doc")
    calibrated = TokenEstimator(table)
    assert calibrated.estimate(SYNTHESIS, "docs", "medium").estimated_tokens == math.floor(
        synthesis.estimated_tokens * 1.5 + 0.5)
    assert calibrated.estimate(DOCS_LOW, "docs", "low").estimated_tokens == docs.estimated_tokens * 2

    # The backtest re-runs stored events (the recorded category names the doc model) and sees them scale.
    events = pd.DataFrame({
        "event_id": [1, 2], "run_id": ["r", "r"], "phase_id": ["a", "b"], "category": ["doc_synthesis", "docs"],
        "complexity": ["medium", "low"], "predicted_output_tokens": [synthesis.estimated_tokens, docs.estimated_tokens],
        "actual_output_tokens": [5000, 3000], "selected_budget": [12288, 4096], "success": [True, True],
        "truncated": [False, False]})
    result = run_backtest(event_arrays_from_frame(events), PredictionInputs.from_rows([1, 2], [SYNTHESIS, DOCS_LOW]),
                          seed, table, groups=[("doc_synthesis", "medium"), ("docs", "low")])
    assert result["rerun_match_pct"] == 100.0
    scales = {(g["category"], g["complexity"]): g["prediction_scale_median"] for g in result["groups"]}
    assert scales[("doc_synthesis", "medium")] == pytest.approx(1.5, abs=1e-3)
    assert scales[("docs", "low")] == pytest.approx(2.0)


def test_budget_margin_and_floor_replace_the_rules_for_their_group(seed):
    estimate = TokenEstimator(seed).estimate(SYNTHESIS, "docs", "medium")
    assert select_budget(estimate, "medium", seed) == max(12288, int(estimate.estimated_tokens * 2.2))
    table = seed.with_calibration({("doc_synthesis", "medium"): GroupSetting(budget_margin=1.3, budget_floor=1000)},
                                  "v-budget")
    assert select_budget(estimate, "medium", table) == int(estimate.estimated_tokens * 1.3)


def test_predictions_convert_exactly_between_versions_that_differ_only_in_multipliers(seed):
    old = seed.with_calibration({("docs", "low"): GroupSetting(prediction_multiplier=2.0)}, "v-old")
    new = old.with_calibration({("docs", "low"): GroupSetting(prediction_multiplier=3.0)}, "v-new")
    recorded = TokenEstimator(old).estimate(DOCS_LOW, "docs", "low").estimated_tokens
    repredictor = Repredictor(new, {"v-old": old})
    value, how = repredictor.one(StoredPrediction("docs", "low", DOCS_LOW, recorded, version="v-old"))
    assert how == "scaled" and value == TokenEstimator(new).estimate(DOCS_LOW, "docs", "low").estimated_tokens
    assert repredictor.one(StoredPrediction("docs", "low", DOCS_LOW, 123.0, version="v-new")) == (123.0, "recorded")
    # Unknown version (a row from before the column): re-run under the table in force.
    assert repredictor.one(StoredPrediction("docs", "low", DOCS_LOW, 1.0, version=None)) == (value, "rerun")


def _group(ratios, censored_ceilings=(), predicted=1000.0, key=("implementation", "low")):
    ratios = np.asarray(ratios, dtype=float)
    return GroupObservationsInForce(key[0], key[1], np.full(len(ratios), predicted), ratios * predicted,
                                    np.full(len(censored_ceilings), predicted),
                                    np.asarray(censored_ceilings, dtype=float))


def test_margin_is_the_order_statistic_with_truncations_censored_and_the_floor_stops_no_call(seed):
    # 19 clean ratios 1.00, 1.05, ..., 1.90 and one call truncated at a ceiling of 2500 (N = 20).
    # At a 10% target k = ceil(21 * 0.9) = 19: the 19th smallest is 1.90 (the censored one is 20th).
    group = _group([1 + 0.05 * i for i in range(19)], [2500])
    proposal = propose_group_budget(group, seed, target_pct=10.0)
    assert proposal.status == "identifiable" and proposal.order_statistic_k == 19
    assert proposal.budget_margin == pytest.approx(1.9)
    # Smallest prediction x margin = 1900 re-truncates the call cut at 2500: one past call, which is
    # what the order statistic allows (N - k = 1), so the floor stays at 1900 (not the 2501 that
    # would copy the floor in force, 8192, in covering it).
    assert proposal.previous_budget_floor == 8192 and proposal.budget_floor == 1900
    assert proposal.truncated_past_calls_projected == 1
    assert proposal.truncated_past_calls_with_previous_floor == 0
    # Spread predictions and no truncation: the floor is the smallest prediction x margin and binds
    # for no past call (least waste), and it truncates nothing the floor in force did not.
    spread = GroupObservationsInForce("implementation", "low", np.array([1000.0 + 100 * i for i in range(20)]),
                                      np.array([1000.0 + 100 * i for i in range(20)]), np.zeros(0), np.zeros(0))
    plain = propose_group_budget(spread, seed, target_pct=10.0)
    assert plain.budget_margin == pytest.approx(1.0) and plain.budget_floor == 1000
    assert plain.truncated_past_calls_projected == 0


def test_the_floor_uses_the_order_statistics_allowance_instead_of_copying_the_floor_in_force(seed):
    # N = 100 calls predicted at 1000: ratios 1.00, 1.01, ..., 1.98 and one at 3.00. At 2%,
    # k = ceil(101 * 0.98) = 99, so the margin is 1.98 and the rule may exceed on N - k = 1 past call.
    group = _group([1 + i / 100 for i in range(99)] + [3.0])
    proposal = propose_group_budget(group, seed)
    assert proposal.order_statistic_k == 99 and proposal.budget_margin == pytest.approx(1.98)
    # The floor in force (8192) covered the 3.00 call; a floor that must not truncate more than it
    # did would sit at 3000 and set every call's budget (1.5x the proportional one). With the
    # allowance the floor binds for no past call and the one call above the bound is the 2% it allows.
    assert proposal.previous_budget_floor == 8192 and proposal.truncated_past_calls_with_previous_floor == 0
    assert proposal.budget_floor == 1980 and proposal.truncated_past_calls_projected == 1


def test_the_proposed_factor_multiplies_the_current_multiplier(seed):
    table = seed.with_calibration({("implementation", "low"): GroupSetting(prediction_multiplier=1.5)}, "v-cur")
    proposal = propose_group_budget(_group([1.0] * 10), table, proposed_factor=1.2)
    assert proposal.prediction_multiplier == pytest.approx(1.8)
    assert proposal.status == "thin" and proposal.budget_margin == pytest.approx(1 / 1.2, abs=1e-3)


def test_an_unidentifiable_group_gets_proportional_budgets_from_lower_bounds_and_a_collect_samples_task(seed):
    # 10 clean calls at ratio 1.0 and 3 truncated at ceilings 5000, 4000, 3000 (predictions 1000): no
    # order statistic exists. 13 calls are too few for a 5% bound, so the factor is at least the largest
    # lower bound, the 5.0 ceiling ratio, / 1.1. The budget covers every clean call and 1.25x the largest
    # ceiling ratio (5.0 -> 6.25x the old prediction, a margin of 6.25 / 4.545 on the new one); the floor
    # is the smallest prediction x margin, below the floor in force (8192): a blunt floor (twice the
    # largest ceiling, the earlier rule) would inflate every small call's budget.
    proposal = propose_group_budget(_group([1.0] * 10, [5000, 4000, 3000]), seed)
    assert proposal.status == "unidentifiable"
    assert proposal.proposed_factor == pytest.approx(5.0 / 1.1)
    assert proposal.budget_margin == pytest.approx(6.25 / (5.0 / 1.1), abs=1e-3)
    assert proposal.budget_floor == int(1000 * proposal.proposed_factor * proposal.budget_margin)
    assert proposal.truncated_past_calls_projected == 0
    # A clean call above every ceiling raises the factor to its ratio / 1.1, and the margin is measured
    # against the new prediction.
    raised = propose_group_budget(_group([1.0] * 9 + [6.6], [5000, 4000, 3000]), seed)
    assert raised.proposed_factor == pytest.approx(6.0) and raised.budget_margin == pytest.approx(1.1)
    # Too few observations to estimate anything: the blunt floor raise stays (capped at the provider cap).
    capped = propose_group_budget(_group([1.0] * 2, [40000, 40000]), seed)
    assert capped.budget_margin is None and capped.budget_floor == seed.budget.cap
    [insight] = insights_from_budget_proposals([proposal], min_samples=5)
    assert insight.task_kind == "collect_samples" and not insight.requires_approval
    assert insight.evidence["category"] == "implementation" and insight.evidence["complexity"] == "low"
    assert insight.evidence["threshold"] >= 49  # a 98% bound needs 49 observations


def test_an_unidentifiable_groups_factor_counts_its_truncated_calls_at_their_ceilings(seed):
    # The length world's doc_synthesis/medium after its drift round: 69 clean calls with ratios up to
    # 1.60 and 3 truncated at a ceiling of 1.72x their prediction (N = 72, so a 5% underestimation bound
    # is the k = ceil(73 * 0.95) = 70th smallest ratio, and 3 above 1.72 make it unidentifiable). The
    # truncated calls ran longer than 1.72x, so the 70th smallest is at least 1.72 (order statistics only
    # grow when values do): the factor is at least 1.72 / 1.1 = 1.5636, not the largest clean ratio's
    # 1.60 / 1.1 = 1.4545, which leaves all 3 truncated calls underestimated on the calls it learned from.
    ratios = np.r_[np.linspace(0.25, 1.55, 68), 1.60]
    proposal = propose_group_budget(_group(ratios, [1720] * 3), seed)
    assert proposal.status == "unidentifiable" and proposal.observations == 72
    assert proposal.proposed_factor == pytest.approx(1.72 / 1.1)
    # The budget does not depend on the factor: 1.25x the largest ceiling ratio, of the old prediction.
    assert proposal.budget_margin * proposal.proposed_factor == pytest.approx(1.25 * 1.72, abs=2e-3)
    # Calls truncated at low ceilings lower no bound: counted above every candidate, they put the 70th
    # smallest above every clean ratio, so the largest clean ratio still bounds the factor from below.
    low_ceilings = propose_group_budget(_group(ratios, [1200] * 3), seed)
    assert low_ceilings.status == "unidentifiable" and low_ceilings.proposed_factor == pytest.approx(1.60 / 1.1)


def _product_limit_point(clean, censored, level):
    """Reference Kaplan-Meier: walk the values up, each clean one removing 1 / (at risk) of the survival
    left (a clean value before a censored one at a tie); the first clean value where P(<=) reaches level."""
    calls = sorted([(v, 0) for v in clean] + [(v, 1) for v in censored])
    survival, at_risk = 1.0, len(calls)
    for value, is_censored in calls:
        if not is_censored:
            survival *= 1 - 1 / at_risk
            if 1 - survival >= level - 1e-12:
                return value
        at_risk -= 1
    return None


def test_an_unidentifiable_group_with_room_for_its_rank_takes_its_kaplan_meier_point_not_its_largest_call(seed):
    # 150 calls (k = ceil(151 * 0.98) = 148, so 2 may lie above): 145 clean ratios 0.5 .. 2.0, one clean
    # outlier at 4.0, and 4 truncated at a ceiling of 1.9x their prediction: more truncations than the
    # bound absorbs. Covering every call (the earlier rule) set budgets at 4.0x the prediction for one
    # call. The Kaplan-Meier estimate gives each truncated call's share to the 10 clean calls above 1.9
    # and reaches 148/150 at the second largest clean ratio, 2.0; the cap (the 148th smallest with the
    # truncated calls at 1.25 x 1.9 = 2.375) is above it.
    clean = np.r_[np.linspace(0.5, 2.0, 145), 4.0]
    proposal = propose_group_budget(_group(clean, [1900] * 4), seed)
    assert proposal.status == "unidentifiable" and proposal.order_statistic_k == 148
    factor = proposal.proposed_factor
    assert factor == pytest.approx(4.0 / 1.1)  # the factor rule is unchanged: the largest clean ratio / 1.1
    expected = _product_limit_point(clean / factor, np.full(4, 1.9) / factor, 148 / 150)
    assert expected * factor == pytest.approx(2.0)
    cap = sorted(np.r_[clean, np.full(4, 1.25 * 1.9)].tolist())[147]
    assert cap == pytest.approx(2.375) and expected * factor < cap
    assert proposal.budget_margin == pytest.approx(math.ceil(expected * 1000) / 1000)
    assert "Kaplan-Meier 148/150" in proposal.note
    # Past calls over the new budgets: the outlier alone (the truncated calls' budgets, 2.0x, pass their ceilings).
    assert proposal.truncated_past_calls_projected == 1
    # Truncated above every clean call, the estimate never reaches 148/150: the cap is the margin.
    high = propose_group_budget(_group(np.linspace(0.5, 2.0, 146), [2100] * 4), seed)
    assert high.status == "unidentifiable"
    cap = sorted(np.r_[np.linspace(0.5, 2.0, 146), np.full(4, 1.25 * 2.1)].tolist())[147]
    assert high.budget_margin * high.proposed_factor == pytest.approx(cap, abs=2e-3)
    assert cap == pytest.approx(1.25 * 2.1)


def test_whole_column_reprediction_agrees_with_the_event_by_event_rule(seed):
    """arrays_in_force chooses recorded / scaled / rerun / kept with masks; each row must get what
    Repredictor.one gives that event alone."""
    from autopack_pipeline.domain.reprediction import arrays_in_force

    old = seed.with_calibration({("docs", "low"): GroupSetting(prediction_multiplier=2.0)}, "v-old")
    new = old.with_calibration({("docs", "low"): GroupSetting(prediction_multiplier=3.0),
                                ("implementation", "low"): GroupSetting(prediction_multiplier=0.5)}, "v-new")
    rows = [  # event_id, category, complexity, deliverables, recorded, version
        (1, "docs", "low", DOCS_LOW, 777, "v-new"),            # recorded
        (2, "docs", "low", DOCS_LOW, 1001, "v-old"),           # scaled x1.5
        (3, "implementation", "low", ["src/a.py (new)"], 4001, "v-old"),  # scaled x0.5
        (4, "docs", "medium", SYNTHESIS, 5, None),             # rerun (before the column)
        (5, "testing", "medium", ["tests/test_a.py"] * 9, 9, "v-unknown"),  # rerun (version not kept)
        (6, "docs", "low", DOCS_LOW, 321, "v-new"),            # kept: no stored inputs
    ]
    frame = pd.DataFrame({"event_id": [r[0] for r in rows], "run_id": "r", "phase_id": [f"p{r[0]}" for r in rows],
                          "category": [r[1] for r in rows], "complexity": [r[2] for r in rows],
                          "predicted_output_tokens": [r[4] for r in rows], "actual_output_tokens": 1000,
                          "selected_budget": 8192, "success": True, "truncated": False})
    inputs = PredictionInputs.from_rows([r[0] for r in rows[:5]], [r[3] for r in rows[:5]], [r[5] for r in rows[:5]],
                                        {"context_quality": ["some"] * 5})
    arrays, counts = arrays_in_force(event_arrays_from_frame(frame), inputs, new, {"v-old": old})

    repredictor = Repredictor(new, {"v-old": old})
    expected = [repredictor.one(StoredPrediction(r[1], r[2], r[3], float(r[4]), version=r[5],
                                                 features={"context_quality": "some"}))[0] for r in rows[:5]]
    assert arrays.predicted.values.tolist() == [int(v) for v in expected] + [321]
    assert counts == {"recorded": 1, "scaled": 2, "rerun": 2, "kept": 1}
    assert arrays.predicted.values[1] == math.floor(1001 * 1.5 + 0.5) and arrays.predicted.values[2] == 2001
