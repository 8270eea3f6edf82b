"""`apply-calibration`, `backtest` and the Dagster apply job read every stored event through the columnar copy
(``calibration_apply.read_every_stored``), not as an events frame row by row: the same plan either way,
for a patch in Autopack's format (overhead multipliers, converted per group) and in ours (calibration settings)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from autopack_pipeline.services.calibration_apply import (
    calibrate_in_force,
    plan_application,
    read_every_stored,
    read_stored,
)
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage import columnar
from autopack_pipeline.synth import bulk_load

NOW = datetime(2026, 12, 7, tzinfo=timezone.utc)


@pytest.fixture
def history(engine, tmp_path, monkeypatch):
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(tmp_path / "columnar"))
    bulk_load(engine, 4000, runs=5, seed=7)
    return engine


def _plan(patch, stored):
    application = plan_application(patch, stored, now=NOW)
    return application.backtest, application.overhead_changes, application.new_text


def _change(category: str, complexity: str, multiplier: float) -> dict:
    return {"category": category, "complexity": complexity, "sample_count": 40, "confidence": 0.9,
            "median_ratio": 1.3, "proposed_multiplier": multiplier, "action": "-", "reasoning": "-"}


def test_an_autopack_format_patch_plans_the_same_from_the_copy_as_from_the_frame(history, tmp_path):
    # Groups with events and without, priced by the phase formula and by a doc model (no overhead to convert).
    patch = {"proposed_changes": [_change("implementation", "low", 1.5), _change("doc_synthesis", "medium", 1.2),
                                  _change("doc_synthesis", "maintenance", 1.9), _change("docs", "low", 1.4)],
             "method": "coverage", "provenance": {"coefficient_file_version": "v5-step1"}}
    from_copy = _plan(patch, read_every_stored(history))
    assert from_copy == _plan(patch, read_stored(history))
    backtest, overhead, _text = from_copy
    assert set(overhead) == {("implementation", "low"), ("doc_synthesis", "medium"), ("doc_synthesis", "maintenance"),
                             ("docs", "low")}
    assert overhead[("implementation", "low")] not in (None, 1.5)  # converted on the group's events
    assert backtest is not None and backtest["groups"]
    assert columnar.ColumnarStore(tmp_path / "columnar").rows == 4000  # read through the copy


def test_a_group_with_events_but_no_overhead_to_convert_changes_nothing_and_one_without_events_keeps_its_multiplier(
        seeded, make_event, tmp_path, monkeypatch):
    """No stored deliverables, no overhead to convert on: None (no change). No event at all: the multiplier as
    the patch proposes it."""
    from autopack_pipeline.storage.events import record_estimation_event

    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(tmp_path / "columnar"))
    for i in range(6):
        assert record_estimation_event(seeded, make_event(event_uid=f"bare-{i}", deliverables=[]), respect_flag=False)
    patch = {"proposed_changes": [_change("implementation", "low", 1.5), _change("tests", "high", 1.7)],
             "method": "coverage", "provenance": {"coefficient_file_version": "v5-step1"}}
    for stored in (read_every_stored(seeded), read_stored(seeded)):
        assert _plan(patch, stored)[1] == {("implementation", "low"): None, ("tests", "high"): 1.7}


def test_a_calibration_patch_plans_the_same_from_the_copy_as_from_the_frame(history):
    settings = load_settings()
    outcome = calibrate_in_force(history, settings, force=True, write_reports=False)
    patch = outcome.patch_payload()
    assert patch["calibration"]  # our format: settings per group
    assert _plan(patch, read_every_stored(history)) == _plan(patch, read_stored(history))


def test_an_empty_database_has_nothing_to_backtest(engine, tmp_path, monkeypatch):
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(tmp_path / "columnar"))
    stored = read_every_stored(engine)
    assert stored.empty and len(stored.inputs) == 0
