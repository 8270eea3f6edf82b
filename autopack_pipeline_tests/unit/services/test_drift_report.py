"""``services.pipeline.drift_report``: the drift check's arrays on small pages (numpy's setting put back
after), and the time the coefficients in force were applied, read from their version's name."""

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from numpy._core.multiarray import _get_madvise_hugepage

from autopack_pipeline.domain import drift
from autopack_pipeline.services.pipeline import drift_report
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.frames import as_event_arrays
from autopack_pipeline_tests.unit.dagster_layer.test_drift import NOW, synthetic_events

REPO_SEEDS = Path(__file__).resolve().parents[3] / "seeds"


@pytest.fixture
def seeds(tmp_path):
    copy = tmp_path / "seeds"
    shutil.copytree(REPO_SEEDS, copy)
    return copy


def _set_version(seeds: Path, version: str) -> None:
    path = seeds / "estimator_coefficients.yaml"
    data = yaml.safe_load(path.read_text())
    data["version"] = version
    path.write_text(yaml.safe_dump(data))


def test_drift_is_computed_on_small_pages_and_the_setting_is_restored(monkeypatch, seeds):
    seen = []
    detect = drift.detect_drift

    def recorded(arrays, **options):
        seen.append(_get_madvise_hugepage())
        return detect(arrays, **options)

    monkeypatch.setattr(drift, "detect_drift", recorded)
    before = _get_madvise_hugepage()
    report = drift_report(as_event_arrays(synthetic_events(shift=0.5)), load_settings(seeds_dir=seeds), now=NOW)
    assert seen == [False]  # huge pages asked for nowhere while the drift's arrays are made
    assert _get_madvise_hugepage() == before
    assert [g.subject for g in report.drifted()] == ["implementation/medium"]


def test_the_report_knows_a_calibration_applied_inside_the_recent_window(seeds):
    events = as_event_arrays(synthetic_events(shift=-0.5))  # the error fell, as a calibration makes it fall
    settings = load_settings(seeds_dir=seeds)
    assert drift_report(events, settings, now=NOW).calibrated_at is None  # the repository's version: not applied
    _set_version(seeds, f"v5-step1+cal{NOW - timedelta(days=3):%Y%m%dT%H%M%SZ}")
    report = drift_report(events, settings, now=NOW)
    assert report.calibrated_at == NOW.replace(microsecond=0) - timedelta(days=3)
    assert report.groups[0].calibration_effect and drift.drift_insights(report) == []
    _set_version(seeds, f"v5-step1+cal{NOW - timedelta(days=9):%Y%m%dT%H%M%SZ}")  # before the window
    report = drift_report(events, settings, now=NOW)
    assert report.calibrated_at is None and report.reference_start == NOW - timedelta(days=9)


def test_a_coefficient_file_that_does_not_parse_is_named_in_the_report_and_its_checks(seeds):
    from autopack_pipeline.defs.events.drift_checks import drift_check_results

    events = as_event_arrays(synthetic_events(shift=-0.5))
    path = seeds / "estimator_coefficients.yaml"
    path.write_text("version: [unclosed\n")
    report = drift_report(events, load_settings(seeds_dir=seeds), now=NOW)
    assert report.calibrated_at is None and str(path) in report.coefficients_unread
    assert "could not be read" in report.summary() and str(path) in report.summary()
    assert [g.subject for g in report.drifted()] == ["implementation/medium"]
    assert len(drift.drift_insights(report)) == 1  # nothing explains the shift: a task, as without a calibration
    for result in drift_check_results(report):
        assert result.metadata["coefficients_unread"].value == report.coefficients_unread
    psi = drift_check_results(report)[0]
    assert "could not be read" in psi.description and not psi.passed
    path.unlink()  # a missing file is said too
    assert "not found" in drift_report(events, load_settings(seeds_dir=seeds), now=NOW).coefficients_unread


def test_a_readable_coefficient_file_leaves_no_such_note(seeds):
    from autopack_pipeline.defs.events.drift_checks import drift_check_results

    report = drift_report(as_event_arrays(synthetic_events(shift=-0.5)), load_settings(seeds_dir=seeds), now=NOW)
    assert report.coefficients_unread is None and "could not be read" not in report.summary()
    assert all("coefficients_unread" not in r.metadata for r in drift_check_results(report))
