"""`autopack-telemetry loop`: rounds on a fresh database and a private seeds copy, measured per round."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml

from autopack_pipeline_tests.support.calibration_cli_support import REPO_SEEDS, run

ROUND_KEYS = {"round", "world", "run_ids", "coefficients_version", "event_coefficients_versions", "events", "tier1",
              "tier2", "cost", "oracle", "groups", "calibration", "collection_problems"}


@pytest.fixture
def work_dir(tmp_path):
    # SQLite on a memory file system when there is one: a collection run is many small commits.
    if Path("/dev/shm").is_dir():
        with tempfile.TemporaryDirectory(dir="/dev/shm") as directory:
            yield Path(directory) / "loop"
    else:
        yield tmp_path / "loop"


def test_two_rounds_measure_each_round_and_predict_round_two_with_the_applied_version(work_dir):
    seeds_before = (REPO_SEEDS / "estimator_coefficients.yaml").read_text()
    result = run("loop", "--rounds", "2", "--runs-per-round", "1", "--template-phases-per-group", "4",
                 "--work-dir", str(work_dir), "--json", cwd=work_dir.parent, env={"NO_PROXY": "*"})
    assert result.returncode in (0, 1), result.stderr
    document = json.loads(result.stdout)
    first, second = document["rounds"]
    assert set(first) >= ROUND_KEYS and set(second) >= ROUND_KEYS
    for key in ("underestimation", "truncation"):
        assert set(first["tier1"][key]) == {"count", "pct", "ci"}
    assert set(first["cost"]) >= {"dollars", "billed_output_tokens", "reserved_output_tokens"}
    assert set(first["oracle"]) == {"budget_waste_p90", "ratio"}
    assert first["oracle"]["ratio"] == pytest.approx(first["tier2"]["budget_waste_p90"]
                                                     / first["oracle"]["budget_waste_p90"])
    assert first["calibration"]["status"] == "applied"
    applied = first["calibration"]["applied_version"]
    # Round 2 was predicted by the version round 1 applied, and so was every one of its events.
    assert second["coefficients_version"] == applied and second["event_coefficients_versions"] == [applied]
    assert first["event_coefficients_versions"] == ["v5-step1"]
    # The private copy was edited; the repository's seeds were not.
    private = yaml.safe_load((Path(document["seeds_dir"]) / "estimator_coefficients.yaml").read_text())
    assert private["version"] != "v5-step1" and "calibration" in private
    assert (REPO_SEEDS / "estimator_coefficients.yaml").read_text() == seeds_before


def test_a_database_with_events_is_refused(work_dir):
    first = run("loop", "--rounds", "1", "--runs-per-round", "1", "--template-phases-per-group", "1",
                "--work-dir", str(work_dir), cwd=work_dir.parent, env={})
    assert first.returncode in (0, 1), first.stderr
    again = run("--database-url", f"sqlite:///{work_dir / 'loop.db'}", "loop", "--rounds", "1", "--runs-per-round",
                "1", "--work-dir", str(work_dir.parent / "other"), cwd=work_dir.parent, env={})
    assert again.returncode == 1 and "fresh database" in again.stderr
    assert os.path.exists(work_dir / "seeds" / "estimator_coefficients.yaml")
