"""What a person reads on the asset pages: the calibration plot inside the UI, typed tables for Tier 1,
recommendations (status and why) and tasks (a to-do list), rounded figures, spend per model and day,
and one line "what to do next" on every asset whose result needs a person."""

from __future__ import annotations

import base64
import re

import dagster as dg

from autopack_pipeline.defs.calibration.assets import recommendations_table
from autopack_pipeline.domain.analysis import GroupCalibration
from autopack_pipeline_tests.integration.dagster_layer.conftest import materialize_slice

_DATA_URI = re.compile(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def _latest(instance: dg.DagsterInstance, name: str) -> dict:
    return instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization.metadata


def _columns(value: dg.TableMetadataValue) -> list[str]:
    return [column.name for column in value.schema.columns]


def _decimals(value: float) -> int:
    text = repr(value)
    return len(text.split(".")[1]) if "." in text else 0


def test_asset_pages_answer_in_the_ui(sqlite_url, instance, tmp_path):
    result = materialize_slice(instance, sqlite_url)
    assert result.success

    metrics = _latest(instance, "tier_metrics")
    assert "calibration_recommendations" in metrics["next_step"].value  # the simulator breaches Tier 1
    for key in ("underestimation_rate_pct", "truncation_rate_pct", "success_rate_pct"):
        assert _decimals(metrics[key].value) <= 1, (key, metrics[key].value)
    tier1 = metrics["tier1"]
    assert isinstance(tier1, dg.TableMetadataValue)
    assert _columns(tier1)[:4] == ["metric", "value_pct", "interval_low_pct", "interval_high_pct"]
    under = next(r for r in tier1.records if r.data["metric"] == "underestimation")
    assert under.data["target"] == "at most 5%" and under.data["status"].startswith("breached")
    # Spend next to Tier 1: per model (the simulator records a model name) and per UTC day.
    assert metrics["spend_usd"].value > 0 and _decimals(metrics["spend_usd"].value) <= 2
    by_model = metrics["spend_by_model"]
    assert isinstance(by_model, dg.TableMetadataValue) and by_model.records
    assert round(sum(r.data["usd"] for r in by_model.records), 2) == metrics["spend_usd"].value
    assert metrics["spend_by_day"].records and "output tokens only" in metrics["spend_prices"].value
    rates = re.findall(r"\| (\d+\.\d+) ", metrics["tier1_by_category"].value)
    assert rates and all(len(rate.split(".")[1]) == 1 for rate in rates)  # a tenth of a percent

    calibration = _latest(instance, "calibration_recommendations")
    (png,) = _DATA_URI.findall(calibration["plot"].value)
    assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")
    recommendations = calibration["recommendations"]
    assert isinstance(recommendations, dg.TableMetadataValue)
    assert {"multiplier", "status", "why"} <= set(_columns(recommendations))
    assert all(r.data["why"] for r in recommendations.records)
    assert "apply_calibration_job" in calibration["next_step"].value or \
        calibration["next_step"].value.startswith("Nothing to apply")

    tasks = _latest(instance, "generated_tasks")
    todo = tasks["tasks"]
    assert isinstance(todo, dg.TableMetadataValue)
    assert _columns(todo)[:3] == ["priority", "what", "next_step"] and "task_id" in _columns(todo)
    assert len(todo.records) == tasks["tasks_open"].value > 0
    ranks = [("critical", "high", "medium", "low").index(r.data["priority"]) for r in todo.records]
    assert ranks == sorted(ranks)  # most urgent first
    assert all(r.data["next_step"] for r in todo.records)
    assert "approve_task_job" in tasks["next_step"].value


def _group(status: str, actionable: bool, confidence: float = 0.9) -> GroupCalibration:
    action = ("Unidentifiable: 9 of 12 observations were truncated. Raise this group's budget floor; "
              "no multiplier is proposed." if status == "unidentifiable" else "Increase coefficients by 40%")
    return GroupCalibration(
        category="docs", complexity="high" if status == "unidentifiable" else "low", sample_count=12,
        avg_actual=100.0, avg_estimated=80.0, avg_ratio=1.25, median_ratio=1.2345678, min_ratio=0.5, max_ratio=3.0,
        ratio_std=0.4, confidence=confidence, proposed_multiplier=2.7272727272, median_budget_waste=None,
        p90_budget_waste=None, avg_selected_budget=None, actionable=actionable, action=action,
        method_details={"status": status})


def test_an_unidentifiable_group_shows_no_multiplier_and_says_why():
    table = recommendations_table([_group("unidentifiable", False), _group("identifiable", True),
                                   _group("thin", False, confidence=0.4)], confidence_threshold=0.7)
    unidentifiable, proposed, advisory = (r.data for r in table.records)
    assert unidentifiable["multiplier"] is None and unidentifiable["status"] == "unidentifiable"
    assert "no multiplier is proposed" in unidentifiable["why"]
    assert proposed["multiplier"] == 2.727 and proposed["status"] == "proposed"
    assert proposed["median_ratio"] == 1.23
    assert advisory["status"] == "advisory: confidence 0.40 < 0.7" and advisory["multiplier"] == 2.727
