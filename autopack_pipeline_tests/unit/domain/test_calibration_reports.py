"""Reports with both methods side by side, the plot, safe file names, and the calibrate workflow."""

from __future__ import annotations

import io
import json
import threading
from datetime import datetime, timezone

import pandas as pd
import pytest

from autopack_pipeline.services import calibrating, reporting
from autopack_pipeline.services.plots import render_calibration_plot
from autopack_pipeline.services.reporting import (
    calibration_report_payload,
    render_calibration_markdown,
    safe_stem,
    write_calibration_report_set,
)
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.frames import conform_events_frame
from autopack_pipeline_tests.oracle.calibration import calibrate_autopack_median
from autopack_pipeline_tests.oracle.coverage import calibrate_coverage, group_observations
from autopack_pipeline_tests.oracle.samples import clean_samples

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def events() -> pd.DataFrame:
    rows = []
    # implementation/low: 40 clean ratios 0.05 .. 2.0 -> coverage bound 1.95, median ratio 1.05.
    rows += [{"category": "implementation", "complexity": "low", "actual_output_tokens": 50 * i} for i in range(1, 41)]
    # tests/medium: 25 clean and 3 truncated -> unidentifiable for coverage, fine for the median method.
    rows += [{"category": "tests", "complexity": "medium", "actual_output_tokens": 1000 + 10 * i} for i in range(25)]
    rows += [{"category": "tests", "complexity": "medium", "actual_output_tokens": 4000, "actual_max_tokens": 4000,
              "truncated": True, "success": False} for _ in range(3)]
    base = {"run_id": "r", "predicted_output_tokens": 1000, "selected_budget": 8192, "success": True,
            "truncated": False, "timestamp": NOW}
    return conform_events_frame(pd.DataFrame(
        [{**base, "event_id": i + 1, "phase_id": f"p{i + 1}", **row} for i, row in enumerate(rows)]))


@pytest.fixture
def results():
    frame = events()
    coverage = calibrate_coverage(frame, provenance={"coefficient_file_version": "v5"})
    median = calibrate_autopack_median(clean_samples(frame), provenance={"coefficient_file_version": "v5"})
    return coverage, median, frame


def test_json_keeps_autopack_keys_for_the_chosen_method_and_adds_every_method(results):
    coverage, median, _ = results
    payload = calibration_report_payload(coverage, NOW, others=[median])
    assert {"metadata", "proposed_changes", "method", "methods"} <= set(payload)
    assert payload["method"] == "coverage" and set(payload["methods"]) == {"coverage", "autopack-median"}
    (change,) = payload["proposed_changes"]
    assert set(change) == {"category", "complexity", "sample_count", "confidence", "median_ratio",
                           "proposed_multiplier", "action", "reasoning"}
    assert (change["category"], change["complexity"]) == ("implementation", "low")
    assert change["proposed_multiplier"] == round(1.95 / 1.1, 3)
    assert change["reasoning"].startswith("95% of actual/predicted at or below 1.95")
    median_changes = payload["methods"]["autopack-median"]["proposed_changes"]
    assert {(c["category"], c["complexity"]) for c in median_changes} == {("implementation", "low"), ("tests", "medium")}
    json.dumps(payload, allow_nan=False)  # no infinity leaks from an unidentifiable group


def test_markdown_puts_the_methods_side_by_side_and_lists_groups_needing_data(results):
    coverage, median, _ = results
    text = render_calibration_markdown(coverage, generated_at=NOW, others=[median])
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## Summary", "## Recommendations", "## Groups needing data", "## Detailed Results",
                        "## Methods side by side", "## Notes", "## Provenance"]
    side = text.split("## Methods side by side")[1].split("## Notes")[0]
    assert "| tests | medium | >= 3.636 (0.76) | 1.120* (" in side
    assert "| implementation | low | 1.773* (0.83) | 1.050* (" in side
    assert "unidentifiable" in side
    assert "- tests/medium (n=28): Unidentifiable: 3 of 28 observations were truncated" in text
    assert "| tests | medium | 28 |" in text and ">= 3.636 |" in text  # a lower bound, never a proposal
    assert "k = ceil((N + 1) * (1 - 5/100))" in text


def test_report_set_writes_markdown_json_and_png_atomically(results, tmp_path):
    coverage, median, frame = results
    obs = group_observations(frame)
    files = write_calibration_report_set(coverage, tmp_path, NOW, others=[median],
                                         plot=lambda handle: render_calibration_plot(handle, obs, [coverage, median]))
    assert files.plot == tmp_path / "token_estimator_calibration_20250601_120000.png"
    assert files.plot.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([files.markdown.name, files.json.name, files.plot.name])
    assert json.loads(files.json.read_text())["methods"]["coverage"]["groups"]


def test_a_failing_plot_leaves_no_partial_file(results, tmp_path):
    coverage, _, _ = results

    def broken(handle):
        handle.write(b"half a picture")
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError):
        write_calibration_report_set(coverage, tmp_path, NOW, plot=broken)
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize("stem", ["../evil", "..", "a/b", "a\\b", ".hidden", "", "x..y", "/etc/passwd", "ok\nno"])
def test_stems_that_could_escape_the_directory_are_refused(stem, tmp_path, results):
    coverage, _, _ = results
    target = tmp_path / "reports"
    with pytest.raises(ValueError, match="unsafe report file name"):
        write_calibration_report_set(coverage, target, NOW, stem=stem)
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_plain_stem_is_used_as_given(results, tmp_path):
    coverage, _, _ = results
    files = write_calibration_report_set(coverage, tmp_path, NOW, stem="nightly-2025.06.01_a")
    assert files.markdown == tmp_path / "nightly-2025.06.01_a.md" and files.plot is None
    assert safe_stem("token_estimator_calibration_20250601_120000") == "token_estimator_calibration_20250601_120000"


def test_inside_check_refuses_a_symlinked_escape(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "trap.md").symlink_to(outside / "trap.md")
    with pytest.raises(ValueError, match="would leave"):
        reporting._inside(reports, "trap.md")


def test_calibrate_workflow_reports_both_methods_and_the_plot(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOPACK_SEEDS_DIR", raising=False)
    settings = load_settings()
    outcome = calibrating.calibrate(events(), settings, force=True, output_dir=tmp_path)
    assert outcome.gate.open and outcome.result.method == "coverage"
    assert set(outcome.results) == {"coverage", "autopack-median"}
    document = outcome.as_dict()
    assert document["method"] == "coverage" and set(document["methods"]) == {"coverage", "autopack-median"}
    assert document["reports"]["plot"].endswith(".png") and outcome.plot_path.read_bytes().startswith(PNG_MAGIC)
    median = calibrating.calibrate(events(), settings, force=True, output_dir=tmp_path / "m", method="autopack-median")
    assert median.result.method == "autopack-median"
    assert json.loads(median.json_path.read_text())["method"] == "autopack-median"
    with pytest.raises(ValueError, match="unknown calibration method"):
        calibrating.calibrate(events(), settings, force=True, output_dir=tmp_path, method="mean")


def test_calibrate_draws_the_plot_beside_the_sections_and_a_failed_drawing_leaves_no_plot(tmp_path, monkeypatch):
    """The plot is drawn on its own thread while the methods' sections are found; it is the same picture as
    one drawn afterwards, and a drawing that fails ends the command with its error and no PNG written."""
    from autopack_pipeline.services import plots

    monkeypatch.delenv("AUTOPACK_SEEDS_DIR", raising=False)
    settings = load_settings()
    threads = []
    real = plots.render_calibration_plot

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "render_calibration_plot", recorded)
    outcome = calibrating.calibrate(events(), settings, force=True, output_dir=tmp_path / "drawn")
    assert threads and threads[0].startswith("plot")
    redrawn = io.BytesIO()
    observed = calibrating.coverage_groups(calibrating.as_event_arrays(events()))[2]
    real(redrawn, {g.key: g for g in observed}, list(outcome.results.values()))
    assert outcome.plot_path.read_bytes() == redrawn.getvalue()

    def broken(*args, **kwargs):
        raise RuntimeError("no ink")

    monkeypatch.setattr(plots, "render_calibration_plot", broken)
    with pytest.raises(RuntimeError, match="no ink"):
        calibrating.calibrate(events(), settings, force=True, output_dir=tmp_path / "failed")
    assert not list((tmp_path / "failed").glob("*.png"))
