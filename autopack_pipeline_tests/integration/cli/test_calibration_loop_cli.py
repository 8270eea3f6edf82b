"""The loop closes: calibrate -> apply -> calibrate again proposes no further change (no compounding)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from autopack_pipeline_tests.support.calibration_cli_support import environment, run


def _section(result) -> list[dict]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["calibration"]["groups"]


def test_calibrating_again_after_applying_proposes_about_x1(tmp_path):
    env = environment(tmp_path)
    for i in (1, 2):
        assert run("collect", "--run-id", f"loop-{i}", cwd=tmp_path, env=env).returncode == 0
    first = run("calibrate", "--force", "--json", cwd=tmp_path, env=env)
    groups = _section(first)
    moved = [g for g in groups if abs(g["prediction_multiplier"] - 1) >= 0.05]
    assert moved, "the simulated data should need some change"
    patch = json.loads(first.stdout)["reports"]["json"]
    applied = run("apply-calibration", patch, "--yes", cwd=tmp_path, env=env)
    assert applied.returncode == 0, applied.stderr
    assert "Changes (calibration section" in applied.stdout
    coefficients = Path(env["AUTOPACK_SEEDS_DIR"]) / "estimator_coefficients.yaml"
    section = yaml.safe_load(coefficients.read_text())["calibration"]
    for g in groups:  # every proposed group, doc models included, is in the file's section
        written = section[g["category"]][g["complexity"]]
        assert written["prediction_multiplier"] == g["prediction_multiplier"]
        assert written["budget_floor"] == g["budget_floor"]

    again = _section(run("calibrate", "--force", "--json", cwd=tmp_path, env=env))
    for g in again:
        factor = g["prediction_multiplier"] / g["current_prediction_multiplier"]
        assert abs(factor - 1) < 0.05, g
    # The history holds the version the events were predicted with: conversion is by scaling.
    assert (coefficients.parent / "estimator_coefficients.history" / "v5-step1.yaml").exists()
