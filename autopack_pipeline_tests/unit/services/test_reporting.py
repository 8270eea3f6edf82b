"""Calibration report files: names, Autopack's JSON keys plus ours, markdown sections, atomic writes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from autopack_pipeline import output_files
from autopack_pipeline.services.reporting import (
    calibration_report_payload,
    render_calibration_markdown,
    write_calibration_reports,
)
from autopack_pipeline.storage.frames import conform_events_frame
from autopack_pipeline_tests.oracle.calibration import calibrate_autopack_median

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def frame_of(groups: list[tuple[str, str, list[int]]]) -> pd.DataFrame:
    rows, next_id = [], 1
    for category, complexity, actuals in groups:
        for actual in actuals:
            rows.append({
                "event_id": next_id, "run_id": "r", "phase_id": f"p{next_id}", "category": category,
                "complexity": complexity, "predicted_output_tokens": 1000, "actual_output_tokens": actual,
                "selected_budget": 4096, "actual_max_tokens": 8192, "success": True, "truncated": False,
                "timestamp": NOW - timedelta(days=1, minutes=next_id),
            })
            next_id += 1
    return conform_events_frame(pd.DataFrame(rows))


@pytest.fixture
def result():
    frame = frame_of([
        ("implementation", "low", [1500] * 12),  # steady ratio 1.5: confidence 1.0, actionable
        ("tests", "medium", [500, 2000, 900, 3000, 700, 1000]),  # scattered: below 0.7
        ("docs", "low", [1200, 1300]),  # below min_samples
    ])
    return calibrate_autopack_median(
        frame, provenance={"exclusions": {"failed": 2, "truncated": 1, "below_min_actual": 0},
                           "coefficient_file_version": "coeffs-v7", "dagster_run_id": "run-123",
                           "forced": True},
    )


def test_files_land_in_a_created_directory_with_utc_names(tmp_path, result):
    target = tmp_path / "nested" / "reports"
    md_path, json_path = write_calibration_reports(result, target, now=NOW)
    assert md_path == target / "token_estimator_calibration_20250102_030405.md"
    assert json_path == target / "token_estimator_calibration_20250102_030405.json"
    assert sorted(p.name for p in target.iterdir()) == [json_path.name, md_path.name]  # no temp files left


def test_a_non_utc_clock_is_converted_for_the_name(tmp_path, result):
    plus_two = NOW.astimezone(timezone(timedelta(hours=2)))
    md_path, _ = write_calibration_reports(result, tmp_path, now=plus_two)
    assert md_path.name == "token_estimator_calibration_20250102_030405.md"


def test_json_has_autopack_keys_exactly_plus_ours(tmp_path, result):
    _, json_path = write_calibration_reports(result, tmp_path, now=NOW)
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert set(data) == {"metadata", "proposed_changes", "method", "parameters", "provenance",
                         "all_groups", "below_threshold"}
    assert data["metadata"] == {
        "generated_at": "2025-01-02T03:04:05+00:00",
        "confidence_threshold": 0.7,
        "total_samples": 18,
        "high_confidence_groups": 1,
    }
    (change,) = data["proposed_changes"]
    assert change == {
        "category": "implementation",
        "complexity": "low",
        "sample_count": 12,
        "confidence": 1.0,
        "median_ratio": 1.5,
        "proposed_multiplier": 1.5,
        "action": "multiply PHASE_OVERHEAD[('implementation', 'low')] by 1.500",
        "reasoning": "Actual tokens are 1.50x estimated (median)",
    }
    assert [g["category"] for g in data["all_groups"]] == ["implementation", "tests"]
    assert data["below_threshold"][0]["note"] == "2 samples (need 3 more)"
    assert data["provenance"]["coefficient_file_version"] == "coeffs-v7"
    assert data["provenance"]["dagster_run_id"] == "run-123"
    assert data["method"] == "autopack-median"


def test_proposed_figures_are_rounded_to_three_decimals(result):
    tests_group = next(g for g in result.groups if g.category == "tests")
    forced_in = result.model_copy(update={"parameters": {"min_samples": 5, "confidence_threshold": 0.0},
                                          "groups": [tests_group.model_copy(update={"actionable": True})]})
    (change,) = calibration_report_payload(forced_in, NOW)["proposed_changes"]
    assert change["confidence"] == round(tests_group.confidence, 3)
    assert change["confidence"] != tests_group.confidence  # the raw figure has more digits
    assert change["median_ratio"] == 1.0


def test_markdown_has_autopack_sections_in_order_and_our_provenance(result):
    text = render_calibration_markdown(result, generated_at=NOW)
    headings = [line for line in text.splitlines() if line.startswith("#")]
    assert headings == [
        "# Token Estimator Calibration Report",
        "## Summary",
        "## Recommendations",
        "### implementation/low",
        "## Detailed Results",
        "## Notes",
        "## Provenance",
    ]
    assert "Generated: 2025-01-02T03:04:05+00:00" in text
    assert "**Action**: Increase coefficients by 50%" in text
    assert "docs/low: 2 samples (need 3 more)" in text
    assert "- Event ids: 1 to 20" in text
    assert "excluded: 3 (failed: 2, truncated: 1)" in text
    assert "Coefficient file version: coeffs-v7" in text
    assert "Dagster run id: run-123" in text
    assert "overridden with --force" in text


def test_detailed_table_is_sorted_by_size_then_name(result):
    lines = render_calibration_markdown(result).splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| Category")]
    assert [row.split(" | ")[0] for row in rows] == ["| implementation", "| tests"]
    assert rows[0] == "| implementation | low | 12 | 1500 | 1000 | 1.500 | 1.00 | 1.500 |"


def test_render_is_pure(result):
    assert render_calibration_markdown(result) == render_calibration_markdown(result)
    assert "Generated: not stamped" in render_calibration_markdown(result)


def test_written_files_match_the_pure_renderers(tmp_path, result):
    md_path, json_path = write_calibration_reports(result, tmp_path, now=NOW)
    assert md_path.read_text(encoding="utf-8") == render_calibration_markdown(result, generated_at=NOW)
    assert json.loads(json_path.read_text(encoding="utf-8")) == calibration_report_payload(result, NOW)


def test_a_failed_write_leaves_neither_partial_file_nor_temp_file(tmp_path, result, monkeypatch):
    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(output_files.os, "replace", refuse)  # the shared writer reporting uses
    with pytest.raises(OSError):
        write_calibration_reports(result, tmp_path, now=NOW)
    assert list(Path(tmp_path).iterdir()) == []
