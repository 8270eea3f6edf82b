"""The generated_tasks lifecycle (spec §7.4) and generation against a real database, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from autopack_pipeline.domain.tasks import Insight
from autopack_pipeline.services import analysis, task_generation
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.models import GeneratedTask, PhaseOutcomeEvent, utc_now
from autopack_pipeline.storage.outcomes import read_phase_outcomes
from autopack_pipeline.storage.tasks import (
    TaskRefresh,
    approve_task,
    claim_task,
    cleanup_stale_tasks,
    get_task,
    list_generated_tasks,
    mark_task_status,
    pending_tasks,
    reject_task,
    save_generated_tasks,
)
from autopack_pipeline_tests.oracle.samples import clean_samples


def _task(task_id: str, **fields) -> dict:
    return {"task_id": task_id, "title": f"task {task_id}", "priority": "medium", "kind": "collect_samples",
            "requires_approval": False, **fields}


def _age(engine: Engine, task_id: str, **columns: datetime) -> None:
    with engine.begin() as connection:
        connection.execute(update(GeneratedTask).where(GeneratedTask.task_id == task_id).values(**columns))


def test_completing_stamps_completed_at_and_updated_at(engine: Engine) -> None:
    save_generated_tasks(engine, [_task("T-1")])
    assert get_task(engine, "T-1")["updated_at"] is None
    assert mark_task_status(engine, "T-1", "in_progress", executed_in_run_id="run-a") == "updated"
    task = get_task(engine, "T-1")
    assert task["status"] == "in_progress" and task["executed_in_run_id"] == "run-a"
    assert task["updated_at"] is not None and task["completed_at"] is None
    assert mark_task_status(engine, "T-1", "completed") == "updated"
    task = get_task(engine, "T-1")
    assert task["status"] == "completed" and task["completed_at"] is not None


def test_failed_attempts_retry_until_max_retries_then_fail(engine: Engine) -> None:
    save_generated_tasks(engine, [_task("T-1", max_retries=3)])
    outcomes = [
        mark_task_status(engine, "T-1", "failed", executed_in_run_id=run, failure_reason=f"short after {run}",
                         increment_retry=True)
        for run in ("run-1", "run-2", "run-2", "run-3")
    ]
    assert outcomes[:2] == ["retry", "retry"]
    assert outcomes[2] == "failed"  # the third failure reaches max_retries
    task = get_task(engine, "T-1")
    assert task["status"] == "failed" and task["retry_count"] == 4  # the late fourth still counts
    assert task["failure_runs"] == ["run-1", "run-2", "run-3"]  # each run once
    assert task["failure_reason"].startswith("short after run-3")


def test_a_retry_goes_back_to_pending_with_its_reason(engine: Engine) -> None:
    save_generated_tasks(engine, [_task("T-1")])
    claim_task(engine, "T-1")
    assert mark_task_status(engine, "T-1", "failed", failure_reason="only 3 of 5", increment_retry=True) == "retry"
    task = get_task(engine, "T-1")
    assert (task["status"], task["retry_count"], task["failure_reason"]) == ("pending", 1, "only 3 of 5")


def test_unknown_task_and_unknown_status(engine: Engine) -> None:
    assert mark_task_status(engine, "nope", "completed") == "not_found"
    assert approve_task(engine, "nope") == "not_found" and reject_task(engine, "nope") == "not_found"
    assert get_task(engine, "nope") is None
    save_generated_tasks(engine, [_task("T-1")])
    with pytest.raises(ValueError, match="unknown task status 'done'"):
        mark_task_status(engine, "T-1", "done")


def test_only_one_claim_wins(engine: Engine) -> None:
    save_generated_tasks(engine, [_task("T-1")])
    assert claim_task(engine, "T-1", executed_in_run_id="r") is True
    assert claim_task(engine, "T-1") is False
    assert get_task(engine, "T-1")["status"] == "in_progress"


def test_stale_in_progress_tasks_are_failed(engine: Engine) -> None:
    save_generated_tasks(engine, [_task("old"), _task("fresh"), _task("never-updated"), _task("old-pending")])
    for task_id in ("old", "fresh", "never-updated"):
        claim_task(engine, task_id)
    long_ago = utc_now() - timedelta(hours=30)
    _age(engine, "old", updated_at=long_ago)
    _age(engine, "never-updated", updated_at=None, created_at=long_ago)
    _age(engine, "old-pending", created_at=long_ago)
    assert cleanup_stale_tasks(engine, threshold_hours=24) == 2
    statuses = {t["task_id"]: t["status"] for t in list_generated_tasks(engine)}
    assert statuses == {"old": "failed", "never-updated": "failed", "fresh": "in_progress", "old-pending": "pending"}
    assert get_task(engine, "old")["failure_reason"].startswith("Stale: ")
    assert cleanup_stale_tasks(engine, threshold_hours=24) == 0
    assert cleanup_stale_tasks(engine, threshold_hours=0) == 1  # "fresh" is older than zero hours


def test_pending_tasks_order_and_filters(engine: Engine) -> None:
    base = datetime(2025, 1, 1)
    save_generated_tasks(engine, [
        _task("low", priority="low", created_at=base),
        _task("high-new", priority="high", created_at=base + timedelta(days=2)),
        _task("high-old", priority="high", created_at=base + timedelta(days=1)),
        _task("critical", priority="critical", created_at=base + timedelta(days=3), requires_approval=True,
              kind="review_coefficients"),
        _task("autopack-row", priority="critical", created_at=base, requires_approval=None),
        _task("done", priority="critical", status="completed"),
    ])
    assert [t["task_id"] for t in pending_tasks(engine)] == ["autopack-row", "critical", "high-old", "high-new", "low"]
    assert [t["task_id"] for t in pending_tasks(engine, limit=2)] == ["autopack-row", "critical"]
    assert [t["task_id"] for t in pending_tasks(engine, kind="review_coefficients")] == ["critical"]
    # A NULL requires_approval (a row Autopack wrote) is treated as needing a person.
    assert [t["task_id"] for t in pending_tasks(engine, auto_executable_only=True)] == ["high-old", "high-new", "low"]


def test_approve_and_reject_apply_to_pending_tasks_only(engine: Engine) -> None:
    save_generated_tasks(engine, [_task("A", requires_approval=True, evidence={"category": "docs"}), _task("B"),
                                  _task("C", status="completed")])
    assert approve_task(engine, "A", note="ok by me") == "updated"
    approved = get_task(engine, "A")
    assert approved["requires_approval"] is False and approved["status"] == "pending"
    assert approved["evidence"]["category"] == "docs" and approved["evidence"]["approval"]["note"] == "ok by me"
    assert reject_task(engine, "B", reason="not worth it") == "updated"
    rejected = get_task(engine, "B")
    assert (rejected["status"], rejected["failure_reason"]) == ("skipped", "Rejected: not worth it")
    assert approve_task(engine, "C") == "not_pending" and reject_task(engine, "B") == "not_pending"


def _outcome(session: Session, phase_id: str, *, age: timedelta, tokens: int, phase_type: str = "docs") -> None:
    session.add(PhaseOutcomeEvent(run_id="run-1", phase_id=phase_id, phase_type=phase_type, phase_outcome="SUCCESS",
                                  stop_reason="end_turn", tokens_used=tokens, model_used="m",
                                  timestamp=utc_now() - age))


def test_read_phase_outcomes_in_a_window(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        _outcome(session, "recent", age=timedelta(days=1), tokens=1)
        _outcome(session, "old", age=timedelta(days=10), tokens=2)
    now = datetime.now(timezone.utc)
    assert list(read_phase_outcomes(engine, since=now - timedelta(days=7))["phase_id"]) == ["recent"]
    assert list(read_phase_outcomes(engine)["phase_id"]) == ["old", "recent"]
    assert list(read_phase_outcomes(engine, until=now - timedelta(days=5))["phase_id"]) == ["old"]
    assert read_phase_outcomes(engine, since=now + timedelta(days=1)).empty


def _events() -> pd.DataFrame:
    rows = []
    for i in range(12):  # implementation/medium, every call underestimated by half
        rows.append({"event_id": i + 1, "run_id": "r", "phase_id": f"i{i}", "category": "implementation",
                     "complexity": "medium", "predicted_output_tokens": 1000, "actual_output_tokens": 2000,
                     "selected_budget": 4000, "success": True, "truncated": False})
    rows.append({"event_id": 99, "run_id": "r", "phase_id": "d0", "category": "docs", "complexity": "low",
                 "predicted_output_tokens": 1000, "actual_output_tokens": 900, "selected_budget": 4000,
                 "success": True, "truncated": False})
    return pd.DataFrame(rows)


def test_generation_stores_every_field_and_a_second_run_adds_nothing(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        for i, phase_type in enumerate(["docs", "implementation", "docs"]):
            _outcome(session, f"p{i}", age=timedelta(hours=2), tokens=120_000, phase_type=phase_type)
    events = _events()
    samples = clean_samples(events)
    metrics = analysis.tier_metrics_document(events, len(samples))
    counts = analysis.summarise_samples(events).group_counts
    settings = load_settings(task_generation_max_tasks=10, task_generation_min_confidence=0.7,
                             task_generation_enabled=True)
    drift = Insight(kind="drift", subject="implementation/medium", title="Estimator error drifted", detail="",
                    confidence=0.8, severity=6, task_kind="investigate_estimator", requires_approval=True)
    source = {"asset": "generated_tasks", "dagster_run_id": "dagster-run-1"}
    first, stored = task_generation.improvement_tasks(engine, settings, metrics, counts, None, events=events,
                                                extra_insights=[drift], source=source)
    kinds = sorted(t.kind for t in first)
    assert kinds == ["collect_samples", "investigate_estimator", "investigate_estimator", "investigate_estimator",
                     "reduce_token_cost"]  # overall + group breach, drift, docs/low shortfall, cost sinks
    assert len(stored.inserted) == len(first)
    rows = {t["task_id"]: t for t in list_generated_tasks(engine)}
    for task in first:
        row = rows[task.task_id]
        assert row["fingerprint"] == task.fingerprint and row["kind"] == task.kind
        assert row["confidence"] == task.confidence and row["estimated_cost"] == task.estimated_cost > 0
        assert row["requires_approval"] == task.requires_approval and row["run_id"] == "dagster-run-1"
        assert row["evidence"]["source"]["dagster_run_id"] == "dagster-run-1"
    shortfall = next(t for t in first if t.kind == "collect_samples")
    assert rows[shortfall.task_id]["evidence"]["category"] == "docs" and not rows[shortfall.task_id]["requires_approval"]

    mark_task_status(engine, shortfall.task_id, "completed")
    second, stored_again = task_generation.improvement_tasks(engine, settings, metrics, counts, None, events=events,
                                                       extra_insights=[drift], source={"dagster_run_id": "run-2"})
    assert {t.task_id for t in second} == {t.task_id for t in first}
    assert stored_again.inserted == [] and stored_again.superseded == []
    assert len(list_generated_tasks(engine)) == len(first)
    assert get_task(engine, shortfall.task_id)["status"] == "completed"  # a stored task's history is left alone


def test_generation_can_be_switched_off(engine: Engine) -> None:
    events = _events()
    samples = clean_samples(events)
    settings = load_settings(task_generation_enabled=False)
    metrics = analysis.tier_metrics_document(events, len(samples))
    assert task_generation.improvement_tasks(engine, settings, metrics, {}, None) == ([], TaskRefresh())
    assert list_generated_tasks(engine) == []


def _group_events(under: int, n: int = 40, *, category: str = "implementation", start: int = 1) -> pd.DataFrame:
    """``n`` successful events of one group, ``under`` of them underestimated (actual 2x predicted)."""
    return pd.DataFrame([{"event_id": start + i, "run_id": "r", "phase_id": f"{category}{start + i}",
                          "category": category, "complexity": "medium", "predicted_output_tokens": 1000,
                          "actual_output_tokens": 2000 if i < under else 900, "selected_budget": 4000,
                          "success": True, "truncated": False} for i in range(n)])


def _generate(engine: Engine, events: pd.DataFrame):
    settings = load_settings(task_generation_max_tasks=10, task_generation_min_confidence=0.7,
                             task_generation_enabled=True)
    metrics = analysis.tier_metrics_document(events, len(clean_samples(events)))
    return task_generation.improvement_tasks(engine, settings, metrics, analysis.summarise_samples(events).group_counts,
                                       None, events=events)


def _open_by_group(engine: Engine) -> dict[str, list[str]]:
    from autopack_pipeline.domain.task_evidence import group_label

    found: dict[str, list[str]] = {}
    for task in list_generated_tasks(engine, status="pending"):
        found.setdefault(group_label(task["evidence"]), []).append(task["task_id"])
    return found


def test_re_detection_refreshes_the_figures_and_a_vanished_finding_is_superseded(engine: Engine) -> None:
    first, stored = _generate(engine, _group_events(under=10))  # 25% underestimated
    [breach] = [t for t in first if t.evidence.get("scope") == "group=implementation/medium"]
    assert breach.task_id in stored.inserted
    before = get_task(engine, breach.task_id)

    worse = pd.concat([_group_events(under=10), _group_events(under=30, start=41)])  # now 50%
    _, stored = _generate(engine, worse)
    after = get_task(engine, breach.task_id)
    assert breach.task_id in stored.refreshed and after["status"] == "pending"
    assert after["evidence"]["symptoms"][0]["observed"] == 50.0 != before["evidence"]["symptoms"][0]["observed"]
    assert after["priority"] == "critical" != before["priority"]
    assert "50.0%" in after["title"] and "50.0%" in after["description"]
    assert after["updated_at"] is not None and after["created_at"] == before["created_at"]
    assert all(len(ids) == 1 for ids in _open_by_group(engine).values())  # one open task per group

    _, stored = _generate(engine, _group_events(under=0, n=80))  # the group meets its targets now
    gone = get_task(engine, breach.task_id)
    assert breach.task_id in stored.superseded and gone["status"] == "superseded"
    assert gone["failure_reason"].startswith("Superseded: not detected by the generation of")
    assert gone["evidence"]["superseded"]["at"] and gone["evidence"]["superseded"]["reason"]
    assert "implementation/medium" not in _open_by_group(engine)

    _, stored = _generate(engine, worse)  # the finding is back: the same task reopens
    assert breach.task_id in stored.reopened and get_task(engine, breach.task_id)["status"] == "pending"


def test_re_detection_keeps_a_persons_decisions(engine: Engine) -> None:
    events = _group_events(under=10)
    first, _ = _generate(engine, events)
    [breach] = [t for t in first if t.evidence.get("scope") == "group=implementation/medium"]
    [overall] = [t for t in first if t.evidence.get("scope") == "overall"]
    assert approve_task(engine, breach.task_id, note="ok") == "updated"
    assert reject_task(engine, overall.task_id, reason="known") == "updated"
    _, stored = _generate(engine, pd.concat([events, _group_events(under=30, start=41)]))
    assert breach.task_id in stored.refreshed and overall.task_id not in stored.refreshed + stored.reopened
    assert get_task(engine, breach.task_id)["evidence"]["approval"]["note"] == "ok"
    assert get_task(engine, overall.task_id)["status"] == "skipped"


def test_a_group_whose_calibration_starts_recommending_has_one_open_task(engine: Engine) -> None:
    """Its investigation is superseded by the review that now carries the group's breaches."""
    from autopack_pipeline.services.tasks_review import refresh_tasks

    investigation = {"task_id": "TASK-INV", "fingerprint": "inv", "title": "Tier-1 targets breached in a/b",
                     "kind": "investigate_estimator", "evidence": {"scope": "group=a/b", "symptoms": [{}]}}
    review = {"task_id": "TASK-REV", "fingerprint": "rev", "title": "Review PHASE_OVERHEAD for a/b",
              "kind": "review_coefficients",
              "evidence": {"category": "a", "complexity": "b", "method": "coverage", "symptoms": [{}]}}
    shortfall = {"task_id": "TASK-FEW", "fingerprint": "few", "title": "Collect 2 more clean samples for a/b",
                 "kind": "collect_samples", "evidence": {"category": "a", "complexity": "b", "observed": 3,
                                                         "threshold": 5}}
    assert refresh_tasks(engine, [investigation, shortfall], max_new=10, detected_by="run 1").inserted == [
        "TASK-INV", "TASK-FEW"]
    stored = refresh_tasks(engine, [review], max_new=10, detected_by="run 2")
    assert (stored.inserted, sorted(stored.superseded)) == (["TASK-REV"], ["TASK-FEW", "TASK-INV"])
    assert get_task(engine, "TASK-INV")["failure_reason"] == (
        "Superseded: not detected by run 2; the group's finding is now TASK-REV")
    assert get_task(engine, "TASK-FEW")["failure_reason"] == "Superseded: not detected by run 2"
    assert [t["task_id"] for t in list_generated_tasks(engine, status="pending")] == ["TASK-REV"]


def test_findings_beyond_max_tasks_are_refreshed_not_superseded_nor_inserted(engine: Engine) -> None:
    from autopack_pipeline.services.tasks_review import refresh_tasks

    tasks = [{"task_id": f"T-{i}", "fingerprint": str(i), "title": f"t{i}", "evidence": {}} for i in range(3)]
    assert refresh_tasks(engine, tasks[1:], max_new=1, detected_by="g1").inserted == ["T-1"]
    stored = refresh_tasks(engine, tasks, max_new=1, detected_by="g2")  # T-1 is now second, past the cut
    assert (stored.inserted, stored.refreshed, stored.superseded) == (["T-0"], ["T-1"], [])
