"""The gate sensor's decision from materialisation metadata: a certain group breach opens it."""

from __future__ import annotations

from types import SimpleNamespace

import dagster as dg

from autopack_pipeline.defs.calibration.sensors import gate_from_metadata
from autopack_pipeline.defs.shared.metadata import group_tier1_metadata, sample_group_metadata


def _record(metadata: dict) -> SimpleNamespace:
    # Only the part of an EventLogRecord the function reads: its materialisation's normalised metadata.
    return SimpleNamespace(asset_materialization=dg.AssetMaterialization("x", metadata=metadata))


SAMPLES = _record(sample_group_metadata({("implementation", "medium"): 80, ("tests", "low"): 20}, 5))
WITHIN = {"underestimation_rate_pct": 4.0, "truncation_rate_pct": 1.0}


def test_the_sensor_opens_for_a_group_whose_breach_is_certain_and_names_it():
    figures = {("implementation", "medium"): {"total_samples": 86, "underestimation_samples": 86,
                                              "underestimated_count": 9, "truncated_count": 0}}
    gate = gate_from_metadata(SAMPLES, _record({**WITHIN, "group_tier1": group_tier1_metadata(figures)}))
    assert gate.open
    assert "Tier 1 certainly breached in implementation/medium (80 clean samples): underestimation 9 of 86" \
        in gate.summary()


def test_older_metadata_without_group_figures_is_judged_on_the_overall_rates():
    gate = gate_from_metadata(SAMPLES, _record(WITHIN))
    assert not gate.open and "group" not in gate.reasons[0]
