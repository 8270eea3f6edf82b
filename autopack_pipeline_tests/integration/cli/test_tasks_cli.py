"""`autopack-telemetry tasks ...` run as a user runs it: a subprocess, its exit code and its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autopack_pipeline.defs.events.io_manager import event_io_resources
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline.storage.tasks import get_task, save_generated_tasks
from autopack_pipeline_tests.oracle.samples import clean_samples


def run(*args: str, db: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    # The user's own settings must not leak in; the spool directory the cli conftest sets stays.
    env = {k: v for k, v in os.environ.items() if k == "AUTOPACK_SPOOL_DIR" or
           not k.startswith(("DATABASE_URL", "AUTOPACK_", "TASK_GENERATION_", "ANTHROPIC_", "DAGSTER_HOME"))}
    env.update({"DATABASE_URL": f"sqlite:///{db}", **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "autopack_pipeline.cli", *args], cwd=db.parent, env=env, check=False,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def db(tmp_path) -> Path:
    return tmp_path / "telemetry.db"


def _seed(db: Path, *tasks: dict) -> None:
    engine = make_engine(f"sqlite:///{db}")
    upgrade_database(engine)
    save_generated_tasks(engine, list(tasks))
    engine.dispose()


def _task(db: Path, task_id: str) -> dict | None:
    engine = make_engine(f"sqlite:///{db}")
    try:
        return get_task(engine, task_id)
    finally:
        engine.dispose()


REVIEW = {"task_id": "TASK-REVIEW", "title": "Review PHASE_OVERHEAD for tests/low", "priority": "high",
          "kind": "review_coefficients", "requires_approval": True, "description": "## Problem\nx",
          "evidence": {"category": "tests", "complexity": "low"}}
COLLECT = {"task_id": "TASK-COLLECT", "title": "Collect 2 more clean samples for docs/low", "priority": "medium",
           "kind": "collect_samples", "requires_approval": True,
           "evidence": {"category": "docs", "complexity": "low", "observed": 0, "threshold": 2}}


@pytest.mark.parametrize("command", ["list", "show", "generate", "execute", "approve", "reject", "complete"])
def test_every_tasks_subcommand_has_help(command, db):
    result = run("tasks", command, "--help", db=db)
    assert result.returncode == 0, result.stderr
    assert f"usage: autopack-telemetry tasks {command}" in result.stdout


@pytest.mark.parametrize("args", [["tasks"], ["tasks", "list", "--status", "done"], ["tasks", "execute", "--limit", "0"],
                                  ["tasks", "show"], ["tasks", "generate", "--window-days", "-1"]])
def test_bad_usage_exits_2_without_a_traceback(args, db):
    result = run(*args, db=db)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "error:" in result.stderr


def test_an_invalid_setting_exits_2_naming_the_variable(db):
    result = run("tasks", "generate", db=db, env_extra={"TASK_GENERATION_MAX_TASKS_PER_RUN": "-4"})
    assert result.returncode == 2
    assert "TASK_GENERATION_MAX_TASKS_PER_RUN: Input should be greater than or equal to 0 (got '-4')" in result.stderr


def test_unknown_ids_exit_1(db):
    _seed(db)  # an existing database: `tasks show` only reads, and would refuse a missing file (exit 2)
    for args in (["show", "TASK-NOPE"], ["approve", "TASK-NOPE"], ["reject", "TASK-NOPE"], ["complete", "TASK-NOPE"]):
        result = run("tasks", *args, db=db)
        assert result.returncode == 1, (args, result.stderr)
        assert "no task TASK-NOPE" in result.stderr


def test_an_empty_database_has_nothing_to_generate_from(db):
    result = run("tasks", "generate", db=db)
    assert result.returncode == 1 and "nothing to analyse" in result.stderr
    listed = run("tasks", "list", db=db)
    assert listed.returncode == 0 and "No tasks." in listed.stdout


def test_list_show_approve_reject_complete(db):
    _seed(db, REVIEW, COLLECT)
    listed = run("tasks", "list", db=db)
    assert listed.returncode == 0
    assert listed.stdout.index("TASK-REVIEW") < listed.stdout.index("TASK-COLLECT")  # high before medium
    assert "[needs approval]" in listed.stdout
    assert [t["task_id"] for t in json.loads(run("tasks", "list", "--status", "pending", "--json", db=db).stdout)] == [
        "TASK-REVIEW", "TASK-COLLECT"]
    shown = json.loads(run("tasks", "show", "TASK-COLLECT", "--json", db=db).stdout)
    assert shown["evidence"]["threshold"] == 2 and shown["status"] == "pending"
    assert "Review PHASE_OVERHEAD" in run("tasks", "show", "TASK-REVIEW", db=db).stdout

    approved = run("tasks", "approve", "TASK-REVIEW", "--note", "looks right", db=db)
    assert approved.returncode == 0 and approved.stdout.startswith("TASK-REVIEW approved.\nNext: review the report")
    assert "`autopack-telemetry tasks complete TASK-REVIEW`" in approved.stdout
    assert _task(db, "TASK-REVIEW")["evidence"]["approval"]["note"] == "looks right"
    assert run("tasks", "complete", "TASK-REVIEW", db=db).returncode == 0
    assert _task(db, "TASK-REVIEW")["status"] == "completed"
    again = run("tasks", "reject", "TASK-REVIEW", db=db)
    assert again.returncode == 1 and "is completed" in again.stderr

    rejected = run("tasks", "reject", "TASK-COLLECT", "--reason", "not now", db=db)
    assert rejected.returncode == 0 and "rejected" in rejected.stdout
    task = _task(db, "TASK-COLLECT")
    assert (task["status"], task["failure_reason"]) == ("skipped", "Rejected: not now")
    assert [t["task_id"] for t in json.loads(run("tasks", "list", "--status", "skipped", "--json", db=db).stdout)] == [
        "TASK-COLLECT"]


def test_execute_waits_for_approval_then_collects(db):
    _seed(db, REVIEW, COLLECT)
    waiting = json.loads(run("tasks", "execute", "--json", db=db).stdout)
    assert {r["task_id"]: r["outcome"] for r in waiting["results"]} == {"TASK-REVIEW": "needs_person",
                                                                       "TASK-COLLECT": "needs_person"}
    assert run("tasks", "approve", "TASK-COLLECT", db=db).returncode == 0

    off = run("tasks", "execute", db=db, env_extra={"AUTOPACK_TASK_GENERATION_AUTO_EXECUTE": "false"})
    assert off.returncode == 0 and "Auto-execution is off" in off.stdout
    assert _task(db, "TASK-COLLECT")["status"] == "pending"

    outcomes = []
    while len(outcomes) < 3 and (not outcomes or outcomes[-1] == "retry"):
        result = run("tasks", "execute", "--backend", "simulated", "--json", db=db)
        assert result.returncode == 0, result.stderr
        outcomes += [r["outcome"] for r in json.loads(result.stdout)["results"] if r["task_id"] == "TASK-COLLECT"]
    assert outcomes[-1] == "completed", outcomes
    assert _task(db, "TASK-COLLECT")["status"] == "completed"
    engine = make_engine(f"sqlite:///{db}")
    samples = clean_samples(read_events(engine))
    engine.dispose()
    assert len(samples[(samples["category"] == "docs") & (samples["complexity"] == "low")]) >= 2
    assert set(samples["run_id"]) <= {f"TASK-COLLECT-attempt-{n}" for n in range(1, 4)}
    text = run("tasks", "execute", db=db)
    assert "No pending task can run on its own." in text.stdout and "wait for a person" in text.stdout


def test_generate_from_collected_telemetry_twice_stores_each_task_once(db):
    for category, complexity, phases in (("docs", "low", "2"), ("implementation", "low", "6")):
        collected = run("collect", "--category", category, "--complexity", complexity, "--phases", phases,
                        "--run-id", f"cli-{category}", "--json", db=db)
        assert collected.returncode == 0, collected.stderr
    first = run("tasks", "generate", "--json", db=db)
    assert first.returncode == 0, first.stderr
    document = json.loads(first.stdout)
    assert document["tasks_new"] == document["tasks_generated"] > 0
    assert not document["gate"]["open"]  # fewer than 20 clean samples: no calibration, and no report written
    assert not (db.parent / "reports").exists()
    shortfall = [t for t in document["tasks"] if t["kind"] == "collect_samples"]
    assert [t["evidence"]["category"] for t in shortfall] == ["docs"]
    assert shortfall[0]["evidence"]["source"]["command"] == "autopack-telemetry tasks generate"

    second = json.loads(run("tasks", "generate", "--json", db=db).stdout)
    assert second["tasks_new"] == 0
    assert {t["task_id"] for t in second["tasks"]} == {t["task_id"] for t in document["tasks"]}
    assert len(json.loads(run("tasks", "list", "--json", db=db).stdout)) == document["tasks_generated"]

    text = run("tasks", "generate", db=db)
    assert "0 new" in text.stdout and "Calibration gate closed" in text.stdout
    off = run("tasks", "generate", db=db, env_extra={"AUTOPACK_TASK_GENERATION_ENABLED": "false"})
    assert off.returncode == 0 and "Task generation is off" in off.stdout


def test_generate_finds_what_the_generated_tasks_asset_finds(sqlite_url, db, monkeypatch):
    """Same events, same analysis: the chosen calibration method's recommendations and the drift findings
    become the same tasks from the terminal as from "Materialize all"."""
    import dagster as dg

    from autopack_pipeline.defs.asset_graph import PIPELINE_ASSETS
    from autopack_pipeline.defs.resources import LLMBackendResource, TelemetryDatabase
    from autopack_pipeline.synth import bulk_load

    # Room for every finding: the synthetic groups' critical breaches would otherwise fill the 10 slots
    # ahead of the (high) coefficient reviews this test compares.
    slots = {"AUTOPACK_TASK_GENERATION_MAX_TASKS": "500"}
    monkeypatch.setenv("AUTOPACK_TASK_GENERATION_MAX_TASKS", "500")
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    bulk_load(engine, 4_000, runs=8, seed=3)
    engine.dispose()
    with dg.instance_for_test() as instance:
        result = dg.materialize(PIPELINE_ASSETS, instance=instance,
                                selection=dg.AssetSelection.assets("raw_events").downstream(),
                                resources={"telemetry_db": TelemetryDatabase(database_url=sqlite_url),
                                           "llm": LLMBackendResource(), **event_io_resources()})
    assert result.success
    calibration = result.output_for_node("calibration_recommendations")
    assert calibration.gate.open and calibration.result.method == "coverage"
    from_asset = {t["task_id"]: t for t in result.output_for_node("generated_tasks")}
    reports = sorted((db.parent / "reports").iterdir())
    assert calibration.json_path in reports

    document = json.loads(run("tasks", "generate", "--json", db=db, env_extra=slots).stdout)
    assert document["gate"]["open"] and document["method"] == "coverage"
    assert document["tasks_new"] == 0  # every finding was stored by the asset already
    assert {t["task_id"] for t in document["tasks"]} == set(from_asset)
    reviews = [t for t in document["tasks"] if t["kind"] == "review_coefficients"]
    assert reviews and all(t["evidence"]["method"] == "coverage" for t in reviews)

    median = json.loads(run("tasks", "generate", "--json", "--method", "autopack-median", db=db, env_extra=slots).stdout)
    assert median["method"] == "autopack-median"
    reviews = [t for t in median["tasks"] if t["kind"] == "review_coefficients"]
    assert reviews and all(t["evidence"]["method"] == "autopack-median" for t in reviews)
    assert sorted((db.parent / "reports").iterdir()) == reports  # the terminal's generation writes no report


def test_generate_on_phase_outcomes_alone_finds_their_patterns(db):
    from datetime import datetime, timezone

    from sqlalchemy.orm import Session

    from autopack_pipeline.storage.models import PhaseOutcomeEvent

    engine = make_engine(f"sqlite:///{db}")
    upgrade_database(engine)
    with Session(engine) as session:
        session.add_all(PhaseOutcomeEvent(run_id="r1", phase_id=f"p{i}", phase_type="build", phase_outcome="FAILED",
                                          stop_reason="max_tokens", tokens_used=60_000,
                                          timestamp=datetime.now(timezone.utc)) for i in range(3))
        session.commit()
    engine.dispose()
    result = run("tasks", "generate", "--json", db=db)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert not document["gate"]["open"] and "only 0 clean samples" in document["gate"]["summary"]
    assert {t["kind"] for t in document["tasks"]} and all("build" in t["title"] for t in document["tasks"])
    assert {t["title"].split()[2] for t in document["tasks"]} == {"cost_sink", "failure_mode"}


# -- a person's view, in process -------------------------------------------------------------------------

BREACH = {"task_id": "TASK-BREACH", "fingerprint": "breach", "title": "Tier-1 targets breached in docs/low",
          "priority": "critical", "kind": "investigate_estimator", "requires_approval": True, "estimated_cost": 40950,
          "estimated_effort": "M", "confidence": 0.9,
          "description": "## Problem\nObserved 60.0% over 40 events.\n\n## Evidence\n- ci: [44.6, 73.7]",
          "evidence": {"scope": "group=docs/low", "severity": 9, "occurrences": 1,
                       "symptoms": [{"metric": "underestimation_rate_pct", "observed": 60.0, "threshold": 5.0,
                                     "ci": [44.6, 73.7], "total_samples": 40}],
                       "source": {"input": "tier_metrics", "dagster_run_id": "run-7"}}}
SINKS = {"task_id": "TASK-SINKS", "fingerprint": "sinks", "title": "Fix recurring cost_sink issues (docs phases)",
         "priority": "high", "kind": "reduce_token_cost", "requires_approval": True, "estimated_cost": 20000,
         "evidence": {"severity": 7, "occurrences": 2,
                      "examples": [{"phase_id": "p1", "phase_type": "docs", "total_tokens": 120000,
                                    "avg_tokens": 60000.5, "count": 2, "phase_type_failure_rate": 0.35}]}}


def _cli(capsys, db: Path, *args: str) -> tuple[int, str, str]:
    from autopack_pipeline.cli import main

    code = main(["--database-url", f"sqlite:///{db}", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_show_renders_evidence_with_units_and_the_next_command(capsys, db):
    _seed(db, BREACH, SINKS)
    code, out, _ = _cli(capsys, db, "tasks", "show", "TASK-BREACH")
    assert code == 0
    evidence = out[out.index("## Evidence"):]
    assert "{" not in evidence and "[" not in evidence and "'" not in evidence  # no Python reprs
    assert "underestimation rate 60.0% (95% interval 44.6-73.7%; target at most 5%; 40 events)" in evidence
    assert "estimated cost: 40,950 tokens" in out and "$" in out
    assert "group: docs/low" in out
    assert "Next: look at `autopack-telemetry metrics --stratify`" in out and "tasks complete TASK-BREACH" in out

    code, out, _ = _cli(capsys, db, "tasks", "show", "TASK-SINKS")
    assert "used: 120,000 tokens" in out and "failure rate of the phase type: 35.0%" in out
    assert "{" not in out[out.index("## Evidence"):]


def test_reject_says_rejected_and_a_second_reject_is_refused_in_plain_english(capsys, db):
    _seed(db, BREACH)
    code, out, _ = _cli(capsys, db, "tasks", "reject", "TASK-BREACH", "--reason", "known")
    assert code == 0 and out.startswith("TASK-BREACH rejected (status skipped).")
    code, _, err = _cli(capsys, db, "tasks", "reject", "TASK-BREACH")
    assert code == 1 and "only a pending task can be rejected" in err and "rejectd" not in err
    code, out, _ = _cli(capsys, db, "tasks", "show", "TASK-BREACH")
    assert "reason: Rejected: known" in out and "Nothing to do: the task is closed." in out


def test_list_reads_as_a_to_do_list_of_open_tasks(capsys, db):
    _seed(db, BREACH, SINKS, COLLECT)
    _cli(capsys, db, "tasks", "reject", "TASK-COLLECT")
    code, out, _ = _cli(capsys, db, "tasks", "list")
    lines = out.splitlines()
    assert code == 0 and lines[1].split() == ["PRIORITY", "STATUS", "AGE", "GROUP", "TASK", "TITLE"]
    assert lines[2].split()[:5] == ["critical", "pending", "0m", "docs/low", "TASK-BREACH"]
    assert lines[3].split()[:6] == ["high", "pending", "0m", "phases:", "docs", "TASK-SINKS"]
    assert "TASK-COLLECT" not in out and "1 closed task(s) not shown" in out
    _, out, _ = _cli(capsys, db, "tasks", "list", "--all")
    assert "TASK-COLLECT" in out and "skipped" in out


def test_the_cli_status_choices_are_the_stored_statuses():
    from autopack_pipeline.cli.tasks import STATUS_CHOICES
    from autopack_pipeline.storage.tasks import STATUSES

    assert STATUS_CHOICES == STATUSES
