"""`autopack-telemetry loop`: rounds on a fresh database and a private seeds copy, measured per round."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml

from autopack_pipeline.domain.coefficients import load_coefficient_history, load_coefficients
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
    assert set(first["oracle"]) == {"budget_waste_p90", "ratio", "censored_groups"}
    assert first["oracle"]["censored_groups"] == sorted(g["group"] for g in first["groups"] if g["oracle_censored"])
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


def test_from_round_two_the_previous_rounds_oracle_is_applied_in_this_rounds_units(work_dir):
    result = run("loop", "--rounds", "3", "--runs-per-round", "1", "--template-phases-per-group", "4",
                 "--work-dir", str(work_dir), "--json", cwd=work_dir.parent, env={"NO_PROXY": "*"})
    assert result.returncode in (0, 1), result.stderr
    document = json.loads(result.stdout)
    rounds = document["rounds"]
    assert rounds[0]["previous_oracle"] is None
    path = Path(document["seeds_dir"]) / "estimator_coefficients.yaml"
    current = load_coefficients(path)
    history = {**load_coefficient_history(path), current.version: current}  # the last round's may apply nothing
    moved = 0
    for before, this in zip(rounds, rounds[1:]):
        carried = this["previous_oracle"]
        assert carried["from_round"] == before["round"]
        # Every event of the previous round scaled: the loop's versions differ in the calibration section only.
        assert carried["re_expressed"] == {"under": this["coefficients_version"], "events": {"scaled": before["events"]}}
        assert carried["ratio"] == pytest.approx(carried["budget_waste_p90"] / this["oracle"]["budget_waste_p90"])
        assert set(carried["over_budget"]) == {"count", "pct", "ci"}
        assert carried["censored_groups"] == sorted(g["group"] for g in this["groups"] if g["previous_oracle_censored"])
        old, new = history[before["coefficients_version"]], history[this["coefficients_version"]]
        previous = {g["group"]: g["oracle_multiplier"] for g in before["groups"]}
        for group in this["groups"]:
            if group["group"] not in previous:
                assert group["previous_oracle_multiplier"] is None
                continue
            # The previous round's multiplier in this round's units: divided by how much this round's version
            # scaled the group's predictions (up to each re-expressed prediction's rounding to a whole token).
            key = group["group"].split("/")
            scale = new.prediction_multiplier(*key) / old.prediction_multiplier(*key)
            moved += abs(scale - 1) > 0.05
            assert group["previous_oracle_multiplier"] == pytest.approx(previous[group["group"]] / scale, rel=0.01)
    assert moved, "some calibration should have scaled a group's predictions"


def test_a_database_with_events_is_refused(work_dir):
    first = run("loop", "--rounds", "1", "--runs-per-round", "1", "--template-phases-per-group", "1",
                "--work-dir", str(work_dir), cwd=work_dir.parent, env={})
    assert first.returncode in (0, 1), first.stderr
    again = run("--database-url", f"sqlite:///{work_dir / 'loop.db'}", "loop", "--rounds", "1", "--runs-per-round",
                "1", "--work-dir", str(work_dir.parent / "other"), cwd=work_dir.parent, env={})
    assert "prev-oracle P90" in first.stdout.splitlines()[-2]  # the table's header, round 1 without one
    assert first.stdout.splitlines()[-1].split()[7:9] == ["-", "-"]
    assert again.returncode == 1 and "fresh database" in again.stderr
    assert os.path.exists(work_dir / "seeds" / "estimator_coefficients.yaml")
