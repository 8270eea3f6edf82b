"""The `autopack-telemetry` command run as a user would: a subprocess, its exit code, its output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = shutil.which("autopack-telemetry", path=str(Path(sys.executable).parent))


def run(*args: str, cwd: Path, env_extra: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUTOPACK_", "ANTHROPIC_", "DAGSTER_HOME"))}
    env.update(env_extra or {})
    return subprocess.run([EXE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path) -> Path:
    return tmp_path


def test_console_script_is_installed():
    assert EXE is not None, "pip install -e . should put autopack-telemetry next to the interpreter"


@pytest.mark.parametrize("command", [[], ["db-check"], ["db", "upgrade"], ["collect"], ["metrics"], ["calibrate"],
                                     ["pipeline"]])
def test_every_subcommand_has_help(command, workdir):
    result = run(*command, "--help", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "usage: autopack-telemetry" in result.stdout


def test_default_database_is_autopack_db_in_the_working_directory(workdir):
    assert run("db", "upgrade", cwd=workdir).returncode == 0  # db-check only reads: it never creates the file
    result = run("db-check", "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["database"]["sqlite_path"] == str(workdir / "autopack.db")
    assert document["is_empty"] is True
    assert document["row_counts"]["token_estimation_v2_events"] == 0


def test_collect_then_db_check_then_metrics(workdir):
    collected = run("collect", "--run-id", "cli-run", "--json", cwd=workdir)
    assert collected.returncode == 0, collected.stderr
    summary = json.loads(collected.stdout)
    assert summary["run_id"] == "cli-run" and summary["backend"] == "simulated"
    assert summary["phases_completed"] + summary["phases_failed"] == summary["phases_total"] > 10

    check = run("db-check", cwd=workdir)
    assert check.returncode == 0, check.stderr
    assert f"sqlite:///{workdir / 'autopack.db'}" in check.stdout
    assert f"Events: {summary['events_written']} total" in check.stdout

    metrics = run("metrics", "--json", "--stratify", cwd=workdir)
    document = json.loads(metrics.stdout)
    assert set(document) == {"tier1", "tier2", "diagnostics", "needs_tuning", "strata", "unreadable_timestamps"}
    assert document["tier1"]["total_samples"] == summary["events_written"]

    again = run("collect", "--run-id", "cli-run", "--json", cwd=workdir)
    assert json.loads(again.stdout)["phases_skipped_complete"] == summary["phases_completed"]


def test_database_url_names_another_database(workdir):
    other = workdir / "elsewhere" / "telemetry.db"
    other.parent.mkdir()
    assert run("db", "upgrade", cwd=workdir, env_extra={"DATABASE_URL": f"sqlite:///{other}"}).returncode == 0
    result = run("db-check", "--json", cwd=workdir, env_extra={"DATABASE_URL": f"sqlite:///{other}"})
    assert json.loads(result.stdout)["database"]["sqlite_path"] == str(other)
    assert not (workdir / "autopack.db").exists()


def test_analysis_of_an_empty_database_refuses_and_names_it(workdir):
    assert run("db", "upgrade", cwd=workdir).returncode == 0
    result = run("metrics", cwd=workdir)
    assert result.returncode == 1
    assert str(workdir / "autopack.db") in result.stderr and "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [["nope"], ["collect", "--concurrency", "0"], ["collect", "--backend", "gpt"], ["calibrate", "--min-samples", "x"],
     ["collect", "--category", "tests"], ["collect", "--category", "tests", "--complexity", "low", "--phases", "two"]],
)
def test_bad_usage_exits_2_without_a_traceback(args, workdir):
    result = run(*args, cwd=workdir)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "error" in result.stderr


def test_anthropic_backend_without_a_key_is_a_clear_error(workdir):
    result = run("collect", "--backend", "anthropic", cwd=workdir)
    assert result.returncode == 2
    assert "ANTHROPIC_API_KEY" in result.stderr and "Traceback" not in result.stderr


def test_bad_setting_names_the_variable(workdir):
    result = run("collect", cwd=workdir, env_extra={"AUTOPACK_SIM_SEED": "many"})
    assert result.returncode == 2
    assert "AUTOPACK_SIM_SEED" in result.stderr


def test_pipeline_runs_through_dagster_and_says_where_results_are(workdir):
    earlier = run("collect", "--run-id", "earlier-run", "--json", cwd=workdir)
    assert earlier.returncode == 0, earlier.stderr
    result = run("pipeline", cwd=workdir, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # The collected run's own Tier 1 beside the window's, which also holds the earlier run: the same
    # figures as `metrics --run-id` of that run.
    run_id = out.split("Collection run ", 1)[1].split()[0]
    alone = json.loads(run("metrics", "--run-id", run_id, "--json", cwd=workdir).stdout)["tier1"]
    line = next(line for line in out.splitlines() if "this run alone" in line)
    assert f"{alone['total_samples']} calls, underestimation {alone['underestimation_rate_pct']:.1f}%" in line
    assert f"truncation {alone['truncation_rate_pct']:.1f}%" in line
    window = int(out.split("Tier 1 over ", 1)[1].split()[0])
    assert window == alone["total_samples"] + json.loads(earlier.stdout)["events_written"]
    assert f"Telemetry database: sqlite:///{workdir / 'autopack.db'}" in out
    assert "underestimation" in out and "truncation" in out and "95% interval" in out
    assert f"Calibration report: {workdir / 'reports'}" in out
    # The default collection ends with a patch to review, with at least one actionable group, and says how to apply it.
    report = Path(out.split("Calibration patch to review:", 1)[1].split()[0])
    assert report.exists() and json.loads(report.read_text())["proposed_changes"]
    assert f"autopack-telemetry apply-calibration {report} --dry-run" in out
    assert f"autopack-telemetry apply-calibration {report} --yes" in out
    assert "apply_calibration_job" in out
    assert (workdir / ".dagster_home" / "dagster.yaml").exists()
    assert "dagster dev -w workspace.yaml" in out
