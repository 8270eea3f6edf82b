"""`metrics` and `calibrate` as a user runs them: a subprocess, a temporary database, exit codes, JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autopack_pipeline_tests.support.calibration_cli_support import environment, populate, run

TIER1 = {"underestimation_rate_pct", "underestimation_rate_pct_ci", "truncation_rate_pct", "truncation_rate_pct_ci",
         "success_rate_pct", "success_rate_pct_ci", "under_multiplier", "total_samples"}
TIER2 = {"waste_ratio_median", "waste_ratio_p90", "waste_ratio_mean", "budget_waste_p90"}
DIAGNOSTICS = {"smape_mean", "smape_median", "non_truncated_count", "truncated_count"}
# Ratios 0.8 .. 1.525 over a 3424-token prediction: 17 of 30 above 1.1 (21 above 1.0), Tier 1 breached.
BREACHING = [int(3424 * (0.8 + 0.025 * i)) for i in range(30)]


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return environment(tmp_path)


@pytest.fixture
def breached(tmp_path, env) -> dict[str, str]:
    populate(env["DATABASE_URL"], BREACHING, truncated=1)
    return env


def test_metrics_json_has_exactly_the_design_keys(tmp_path, breached):
    result = run("metrics", "--json", cwd=tmp_path, env=breached)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"tier1", "tier2", "diagnostics", "needs_tuning", "unreadable_timestamps"}
    assert set(document["tier1"]) == TIER1
    assert set(document["tier2"]) == TIER2
    assert set(document["diagnostics"]) == DIAGNOSTICS
    assert document["tier1"]["total_samples"] == 31 and document["tier1"]["under_multiplier"] == 1.1
    assert document["needs_tuning"] is True


def test_metrics_json_strata_map_values_to_tier1_blocks(tmp_path, breached):
    document = json.loads(run("metrics", "--json", "--stratify", cwd=tmp_path, env=breached).stdout)
    assert set(document["strata"]) == {"category", "complexity", "deliverables"}
    assert set(document["strata"]["category"]) == {"implementation"}
    assert all(set(block) == TIER1 for blocks in document["strata"].values() for block in blocks.values())


def test_metrics_success_only_and_the_strict_multiplier(tmp_path, breached):
    loose = json.loads(run("metrics", "--json", "--success-only", cwd=tmp_path, env=breached).stdout)["tier1"]
    strict = json.loads(run("metrics", "--json", "--success-only", "--under-multiplier", "1.0",
                            cwd=tmp_path, env=breached).stdout)["tier1"]
    assert loose["total_samples"] == strict["total_samples"] == 30
    assert loose["underestimation_rate_pct"] == pytest.approx(100 * 17 / 30)
    assert strict["underestimation_rate_pct"] == pytest.approx(100 * 21 / 30)


def test_metrics_reads_through_the_columnar_copy_and_picks_up_new_events(tmp_path, breached):
    first = json.loads(run("metrics", "--json", cwd=tmp_path, env=breached).stdout)["tier1"]
    manifest = json.loads((tmp_path / ".autopack" / "columnar" / "telemetry.db" / "manifest.json").read_text())
    assert manifest["rows"] == first["total_samples"] == 31
    populate(breached["DATABASE_URL"], [1000] * 4, run_id="run-2")  # only these are read on the next run
    second = json.loads(run("metrics", "--json", cwd=tmp_path, env=breached).stdout)["tier1"]
    assert second["total_samples"] == 35
    only_run_2 = json.loads(run("metrics", "--json", "--run-id", "run-2", cwd=tmp_path, env=breached).stdout)
    assert only_run_2["tier1"]["total_samples"] == 4 and only_run_2["tier1"]["underestimation_rate_pct"] == 0


def test_metrics_on_an_empty_database_refuses(tmp_path, env):
    populate(env["DATABASE_URL"], [])
    result = run("metrics", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "no token-estimation events" in result.stderr
    # Under --json the refusal is a JSON document on stdout too (issue 13: every --json error is JSON).
    assert json.loads(result.stdout) == {"error": result.stderr.strip().removeprefix("autopack-telemetry: "),
                                         "exit_code": 1}


@pytest.mark.parametrize("args", [
    ["metrics", "--under-multiplier", "-1"], ["metrics", "--under-multiplier", "x"], ["metrics", "--bogus"],
    ["calibrate", "--method", "mean"], ["calibrate", "--confidence-threshold", "2"],
])
def test_bad_usage_exits_2(args, tmp_path, env):
    result = run(*args, cwd=tmp_path, env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_calibrate_on_an_empty_database_refuses(tmp_path, env):
    populate(env["DATABASE_URL"], [])
    assert run("calibrate", cwd=tmp_path, env=env).returncode == 1


def test_calibrate_with_the_gate_closed_exits_1_and_names_the_numbers(tmp_path, env):
    populate(env["DATABASE_URL"], [3424] * 25)  # exact predictions: Tier 1 within targets
    result = run("calibrate", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["gate"]["open"] is False and document["reports"] is None
    assert "underestimation 0.0% (limit 5.0%)" in document["gate"]["summary"]
    assert not (tmp_path / "reports").exists()


def test_calibrate_defaults_to_coverage_and_reports_both_methods(tmp_path, breached):
    result = run("calibrate", "--json", cwd=tmp_path, env=breached)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert set(document) == {"gate", "method", "result", "methods", "reports", "frontier_and_cost",
                             "calibration", "reprediction", "window", "unreadable_timestamps"}
    assert document["method"] == "coverage" and set(document["methods"]) == {"coverage", "autopack-median"}
    # One coefficient version has events: the window is all of them, and says why.
    assert document["window"]["events_dropped"] == 0 and len(document["window"]["versions"]) == 1
    (group,) = document["result"]["groups"]
    # 30 clean + 1 truncated = 31 observations, k = ceil(32 * 0.95) = 31: the censored one, so no bound.
    assert group["method_details"]["status"] == "unidentifiable"
    reports = document["reports"]
    for key in ("markdown", "json", "plot"):
        assert Path(reports[key]).exists() and Path(reports[key]).parent == tmp_path / "reports"
    patch = json.loads(Path(reports["json"]).read_text())
    assert patch["proposed_changes"] == [] and "methods" in patch


def test_metrics_text_prices_every_billed_attempt_in_one_line(tmp_path, breached):
    result = run("metrics", cwd=tmp_path, env=breached)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("Spend")]
    # 30 clean calls and one truncated at 8192, all claude-sonnet-4-5 at $15 per million output tokens.
    tokens = sum(BREACHING) + 8192
    assert f"${tokens * 15 / 1e6:.2f} for {tokens:,} billed output tokens over 1 day" in line
    assert "claude-sonnet-4-5" in line and "input is not stored" in line


def test_calibrate_text_has_one_frontier_and_cost_line_per_group(tmp_path, breached):
    result = run("calibrate", cwd=tmp_path, env=breached)
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    heading = lines.index("Frontier and cost (cheapest Tier-1 multiplier and margin; money and reserved capacity "
                          "now -> then):")
    # 1 truncated of 31 (3.2%) is above every candidate: 2% truncation is out of reach on this data.
    assert lines[heading + 1].startswith("implementation/low: frontier out of reach (1 of 31 truncated)")


def test_calibrate_autopack_median_fills_the_patch_with_its_proposals(tmp_path, breached):
    result = run("calibrate", "--method", "autopack-median", "--output-dir", str(tmp_path / "out"),
                 cwd=tmp_path, env=breached)
    assert result.returncode == 0, result.stderr
    assert "Method autopack-median (chosen" in result.stdout and "Method coverage:" in result.stdout
    (patch_file,) = (tmp_path / "out").glob("*.json")
    (change,) = json.loads(patch_file.read_text())["proposed_changes"]
    assert change["reasoning"] == "Actual tokens are 1.17x estimated (median)"


def test_new_subcommands_have_help(tmp_path, env):
    for command in ("analyze-logs", "apply-calibration", "backtest"):
        result = run(command, "--help", cwd=tmp_path, env=env)
        assert result.returncode == 0 and "usage: autopack-telemetry" in result.stdout
    assert "Autopack's analyser defaulted to 1.0" in " ".join(run("analyze-logs", "--help", cwd=tmp_path,
                                                                  env=env).stdout.split())
