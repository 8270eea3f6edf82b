"""`apply-calibration --method M` writes M's multipliers into the coefficient file's calibration section."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from autopack_pipeline_tests.support.calibration_cli_support import environment, populate, run


def test_the_other_methods_multipliers_fill_the_calibration_section(tmp_path):
    env = environment(tmp_path)
    # 24 implementation/low calls, all above 1.1 x the estimate 3424: the gate opens, both methods act.
    populate(env["DATABASE_URL"], [4200 + 150 * i for i in range(24)])
    calibrated = run("calibrate", "--json", cwd=tmp_path, env=env)
    assert calibrated.returncode == 0, calibrated.stderr
    patch_path = json.loads(calibrated.stdout)["reports"]["json"]
    patch = json.loads(Path(patch_path).read_text())
    assert patch["method"] == "coverage"
    (median,) = patch["methods"]["autopack-median"]["proposed_changes"]
    (coverage,) = patch["proposed_changes"]
    assert abs(median["proposed_multiplier"] - coverage["proposed_multiplier"]) > 0.05  # two different answers
    # Each method's block carries its own calibration section, its multiplier in it.
    (section,) = patch["methods"]["autopack-median"]["calibration"]["groups"]
    assert abs(section["prediction_multiplier"] - median["proposed_multiplier"]) < 1e-3

    coefficients = Path(env["AUTOPACK_SEEDS_DIR"]) / "estimator_coefficients.yaml"
    overhead_before = yaml.safe_load(coefficients.read_text())["phase_overhead"]
    applied = run("apply-calibration", patch_path, "--method", "autopack-median", "--yes", cwd=tmp_path, env=env)
    assert applied.returncode == 0, applied.stderr
    assert "Changes (calibration section" in applied.stdout
    written = yaml.safe_load(coefficients.read_text())
    assert written["calibration"]["implementation"]["low"]["prediction_multiplier"] == section["prediction_multiplier"]
    assert written["calibration"]["implementation"]["low"]["budget_floor"] == section["budget_floor"]
    assert written["phase_overhead"] == overhead_before  # not through PHASE_OVERHEAD any more
