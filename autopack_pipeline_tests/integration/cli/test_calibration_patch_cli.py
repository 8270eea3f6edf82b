"""`apply-calibration` and `backtest`: the diff, the backtest, and writing only after a person says yes."""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path

import pytest
import yaml

from autopack_pipeline_tests.support.calibration_cli_support import EXE, REPO_SEEDS, environment, populate, run

PATCH = {
    "metadata": {"generated_at": "2025-12-29T10:00:00+00:00", "confidence_threshold": 0.7, "total_samples": 30,
                 "high_confidence_groups": 1},
    "proposed_changes": [{"category": "implementation", "complexity": "low", "sample_count": 30, "confidence": 0.9,
                          "median_ratio": 1.3, "proposed_multiplier": 2.0, "action": "-", "reasoning": "-"}],
    "method": "coverage",
    "provenance": {"coefficient_file_version": "v5-step1"},
}


@pytest.fixture
def setup(tmp_path):
    env = environment(tmp_path)
    # Ratio about 1.2 on a 3424-token estimate: the x2 overhead (634 -> 1268) lifts it to 4248.
    populate(env["DATABASE_URL"], [4100] * 20)
    patch = tmp_path / "patch.json"
    patch.write_text(json.dumps(PATCH))
    coefficients = Path(env["AUTOPACK_SEEDS_DIR"]) / "estimator_coefficients.yaml"
    return env, patch, coefficients, coefficients.read_text()


def test_without_a_terminal_or_yes_it_shows_everything_and_refuses(tmp_path, setup):
    env, patch, coefficients, original = setup
    result = run("apply-calibration", str(patch), "--scale", "overhead", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "--yes" in result.stderr and "--dry-run" in result.stderr
    assert "-    implementation: {low: 634," in result.stdout and "+    implementation: {low: 1268," in result.stdout
    assert "Backtest on 20 stored events" in result.stdout
    assert coefficients.read_text() == original
    assert not (coefficients.parent / "estimator_coefficients.history").exists()


def test_dry_run_writes_nothing(tmp_path, setup):
    env, patch, coefficients, original = setup
    result = run("apply-calibration", str(patch), "--dry-run", "--yes", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "Dry run: nothing written." in result.stdout
    assert coefficients.read_text() == original


def test_yes_writes_a_new_version_and_keeps_the_old_file(tmp_path, setup):
    env, patch, coefficients, original = setup
    result = run("apply-calibration", str(patch), "--yes", "--scale", "overhead", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    table = yaml.safe_load(coefficients.read_text())
    assert table["version"].startswith("v5-step1+cal") and table["phase_overhead"]["table"]["implementation"]["low"] == 1268
    kept = coefficients.parent / "estimator_coefficients.history" / "v5-step1.yaml"
    assert kept.read_text() == original
    assert (REPO_SEEDS / "estimator_coefficients.yaml").read_text() == original  # the repo's file is untouched
    # The same patch again would compound: it was computed against v5-step1.
    again = run("apply-calibration", str(patch), "--yes", cwd=tmp_path, env=env)
    assert again.returncode == 1 and "computed against coefficients v5-step1" in again.stderr


def test_backtest_alone_in_json(tmp_path, setup):
    env, patch, coefficients, original = setup
    result = run("backtest", str(patch), "--json", "--scale", "overhead", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    backtest = json.loads(result.stdout)["backtest"]
    assert backtest["events"] == 20 and backtest["rerun_match_pct"] == 100.0
    # 4100 > 1.1 x 3424 = 3766 before; 4100 < 1.1 x 4248 = 4673 after.
    assert backtest["old"]["underestimation_pct"] == 100.0 and backtest["new"]["underestimation_pct"] == 0.0
    (group,) = backtest["groups"]
    assert group["prediction_scale_median"] == pytest.approx(4248 / 3424)
    assert coefficients.read_text() == original


def test_default_scale_moves_predictions_by_the_proposed_multiplier(tmp_path, setup):
    """x2.0 is about whole predictions: the overhead must grow far more than x2 to double them."""
    env, patch, coefficients, original = setup
    result = run("backtest", str(patch), "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    (converted,) = document["overhead_multipliers"]
    # S = 3424 / 1.3 = 2633.8 unscaled tokens, 634 of them overhead: k = 1 + (2 - 1) * 2633.8 / 634.
    assert converted["multiplier"] == pytest.approx(1 + 2633.846 / 634, abs=1e-3)
    (group,) = document["backtest"]["groups"]
    assert group["prediction_scale_median"] == pytest.approx(2.0, abs=0.01)
    assert coefficients.read_text() == original


@pytest.mark.parametrize("content, code", [
    ("not json", 2),
    (json.dumps({"proposed_changes": [{"category": "x"}]}), 2),
    (json.dumps({"proposed_changes": []}), 1),
])
def test_bad_or_empty_patches(tmp_path, setup, content, code):
    env, patch, _, _ = setup
    patch.write_text(content)
    assert run("apply-calibration", str(patch), "--yes", cwd=tmp_path, env=env).returncode == code


def _interactive(args: list[str], env: dict[str, str], cwd: Path, answer: bytes) -> tuple[int, str]:
    """Run with a pseudo-terminal as stdin (so it counts as a person at a TTY) and type ``answer``.

    The terminal buffers the typed line until the prompt reads it, so it can be typed at once.
    """
    primary, secondary = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUTOPACK_"))}
    process = subprocess.Popen([EXE, *args], cwd=cwd, env={**clean, **env}, stdin=secondary,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(secondary)
    os.write(primary, answer)
    out, err = process.communicate(timeout=120)
    os.close(primary)
    return process.returncode, out.decode() + err.decode()


def test_an_interactive_yes_writes_and_anything_else_does_not(tmp_path, setup):
    env, patch, coefficients, original = setup
    code, output = _interactive(["apply-calibration", str(patch)], env, tmp_path, b"no\n")
    assert code == 1 and "Not written." in output
    assert coefficients.read_text() == original
    code, output = _interactive(["apply-calibration", str(patch)], env, tmp_path, b"yes\n")
    assert code == 0, output
    assert yaml.safe_load(coefficients.read_text())["version"].startswith("v5-step1+cal")
