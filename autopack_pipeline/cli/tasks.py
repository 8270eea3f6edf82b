"""`tasks`: generated improvement tasks from a terminal: list, show, generate, execute, approve, reject, complete."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from autopack_pipeline.cli.common import (
    CALIBRATION_METHOD_CHOICES,
    EXIT_OK,
    Refused,
    identity_line,
    open_engine,
    positive_float,
    positive_int,
    print_json,
    warn_unreadable,
)

STATUS_CHOICES = ("pending", "in_progress", "completed", "failed", "skipped")


def _found(engine, task_id: str) -> dict[str, Any]:
    from autopack_pipeline.storage.tasks import get_task

    task = get_task(engine, task_id)
    if task is None:
        raise Refused(f"no task {task_id} (see `autopack-telemetry tasks list`)")
    return task


def _line(task: dict[str, Any]) -> str:
    approval = " [needs approval]" if task.get("requires_approval") and task["status"] == "pending" else ""
    return f"{task['task_id']}  {task['status']:<11} {task['priority']:<8} {task.get('kind') or '-':<22} {task['title']}{approval}"


def cmd_list(args: argparse.Namespace) -> int:
    from autopack_pipeline.storage.tasks import list_generated_tasks

    engine = open_engine(args)
    tasks = list_generated_tasks(engine, status=args.status)
    if args.kind:
        tasks = [t for t in tasks if t.get("kind") == args.kind]
    if args.json:
        print_json(tasks)
        return EXIT_OK
    print(identity_line(engine))
    if not tasks:
        print("No tasks" + (f" with status {args.status}" if args.status else "") + ".")
    for task in tasks:
        print(_line(task))
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    engine = open_engine(args)
    task = _found(engine, args.task_id)
    if args.json:
        print_json(task)
        return EXIT_OK
    print(_line(task))
    for key in ("confidence", "estimated_effort", "estimated_cost", "requires_approval", "created_at", "updated_at",
                "completed_at", "retry_count", "max_retries", "executed_in_run_id", "failure_runs", "failure_reason",
                "run_id", "fingerprint"):
        if task.get(key) not in (None, []):
            print(f"  {key}: {task[key]}")
    print()
    print(task.get("description") or "")
    # The description already lists the finding's figures; add what only the stored evidence holds.
    extra = {k: v for k, v in (task.get("evidence") or {}).items() if f"- {k}:" not in (task.get("description") or "")}
    if extra:
        print("\n## Also stored")
        for key, value in extra.items():
            print(f"- {key}: {value}")
    return EXIT_OK


def _generate(engine, settings, *, min_samples: int, window_days: float, method: str) -> dict[str, Any]:
    """What the generated_tasks asset computes, from the database: metrics, the gate, both calibration
    methods when it is open (``method`` chosen), drift; no report file is written."""
    from autopack_pipeline import workflows
    from autopack_pipeline.domain.drift import detect_drift, drift_insights
    from autopack_pipeline.storage.database import describe_database
    from autopack_pipeline.storage.outcomes import read_phase_outcomes
    from autopack_pipeline.storage.snapshot import snapshot_events

    database = describe_database(engine).url
    snapshot, _refresh, _fallback = snapshot_events(engine)  # new events only, through the columnar copy
    if snapshot.rows == 0 and read_phase_outcomes(engine).empty:
        raise Refused(f"nothing to analyse in {database}: no token-estimation events and no "
                      "phase outcomes (run `autopack-telemetry collect` first, or check DATABASE_URL)")
    warn_unreadable(snapshot.unreadable)
    events = snapshot.arrays()
    samples = workflows.summarise_samples(events)
    metrics = workflows.tier_metrics_document(events, samples.count)
    calibration = workflows.calibrate(events, settings, tier1=metrics["all_events"]["tier1"],
                                      min_samples=min_samples, method=method, database=database,
                                      write_reports=False)
    now = datetime.now(timezone.utc)
    source = {"command": "autopack-telemetry tasks generate", "generated_at": now.isoformat()}
    tasks, stored = workflows.improvement_tasks(engine, settings, metrics, samples.group_counts, calibration,
                                                min_samples=min_samples, events=events, source=source,
                                                extra_insights=drift_insights(detect_drift(events)),
                                                outcome_window_days=window_days, now=now)
    return {"enabled": settings.task_generation_enabled, "database": database,
            "gate": calibration.gate.to_dict(), "method": method, "tasks_generated": len(tasks),
            "tasks_new": stored, "tasks": [task.as_dict() for task in tasks],
            "unreadable_timestamps": snapshot.unreadable}


def cmd_generate(args: argparse.Namespace) -> int:
    from autopack_pipeline.settings import load_settings

    settings = load_settings()
    engine = open_engine(args)
    document = _generate(engine, settings, min_samples=args.min_samples, window_days=args.window_days,
                         method=args.method)
    if args.json:
        print_json(document)
        return EXIT_OK
    print(identity_line(engine))
    if not settings.task_generation_enabled:
        print("Task generation is off (AUTOPACK_TASK_GENERATION_ENABLED=false): nothing generated.")
        return EXIT_OK
    print(document["gate"]["summary"])
    print(f"{document['tasks_generated']} task(s) from this analysis, {document['tasks_new']} new "
          f"(at most {settings.task_generation_max_tasks}, confidence >= {settings.task_generation_min_confidence:g}):")
    for task in document["tasks"]:
        print(f"  {task['task_id']}  {task['priority']:<8} {task['kind']:<22} {task['title']}")
    return EXIT_OK


def cmd_execute(args: argparse.Namespace) -> int:
    from autopack_pipeline.llm.factory import make_backend
    from autopack_pipeline.settings import load_settings
    from autopack_pipeline.tasks_execution import AUTO_EXECUTE_OFF, execute_pending_tasks

    settings = load_settings()
    engine = open_engine(args)
    # No backend is built when nothing may run, so auto-execute off never asks for an API key.
    backend = make_backend(settings, args.backend, args.seed) if settings.task_generation_auto_execute else None
    results = execute_pending_tasks(engine, settings, backend, limit=args.limit, concurrency=args.concurrency)
    if args.json:
        print_json({"auto_execute": settings.task_generation_auto_execute, "results": [r.as_dict() for r in results]})
        return EXIT_OK
    print(identity_line(engine))
    if not settings.task_generation_auto_execute:
        print(AUTO_EXECUTE_OFF[0].upper() + AUTO_EXECUTE_OFF[1:] + ".")
    ran = [r for r in results if r.outcome not in ("needs_person", "auto_execute_off")]
    if settings.task_generation_auto_execute and not ran:
        print("No pending task can run on its own.")
    for r in ran:
        print(f"{r.task_id}  {r.outcome:<9} {r.message}")
    waiting = [r for r in results if r.outcome == "needs_person"]
    if waiting:
        print(f"{len(waiting)} pending task(s) wait for a person:")
        for r in waiting:
            print(f"  {r.task_id}  {r.kind or '-'}: {r.message}")
    return EXIT_OK


def _decide(args: argparse.Namespace, verb: str) -> int:
    from autopack_pipeline.storage import tasks as store

    engine = open_engine(args)
    task = _found(engine, args.task_id)
    if verb == "approve":
        outcome = store.approve_task(engine, args.task_id, note=args.note)
    elif verb == "reject":
        outcome = store.reject_task(engine, args.task_id, reason=args.reason)
    elif task["status"] in ("pending", "in_progress"):
        outcome = store.mark_task_status(engine, args.task_id, "completed", failure_reason=None)
    else:
        outcome = "not_pending"
    if outcome == "not_found":
        raise Refused(f"no task {args.task_id}")
    if outcome == "not_pending":
        raise Refused(f"task {args.task_id} is {task['status']}; only a pending task can be {verb}d"
                      + (" (or an in-progress one completed)" if verb == "complete" else ""))
    done = {"approve": "approved", "reject": "rejected (status skipped)", "complete": "completed"}[verb]
    print(f"{args.task_id} {done}.")
    if verb == "approve":
        print("It will run with `autopack-telemetry tasks execute`." if task.get("kind") == "collect_samples" else
              "This kind is carried out by a person; close it with `autopack-telemetry tasks complete "
              f"{args.task_id}` when done.")
    return EXIT_OK


def register(sub: Any, parser_class: type) -> None:
    tasks = sub.add_parser("tasks", help="generated improvement tasks: list, show, generate, execute, approve, reject")
    tasks_sub = tasks.add_subparsers(dest="tasks_command", required=True, parser_class=parser_class)

    p = tasks_sub.add_parser("list", help="tasks, most urgent first, then oldest")
    p.add_argument("--status", choices=STATUS_CHOICES)
    p.add_argument("--kind", help="only this kind, e.g. collect_samples or review_coefficients")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = tasks_sub.add_parser("show", help="one task with its description and evidence")
    p.add_argument("task_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show)

    p = tasks_sub.add_parser("generate", help="analyse the database and store new tasks (no report files written)")
    p.add_argument("--min-samples", type=positive_int, default=5, help="clean samples a group needs (default 5)")
    p.add_argument("--window-days", type=positive_float, default=7.0,
                   help="phase outcomes from the last N days (default 7)")
    p.add_argument("--method", choices=CALIBRATION_METHOD_CHOICES, default="coverage",
                   help="calibration method whose recommendations become tasks (default coverage, as the asset)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = tasks_sub.add_parser("execute", help="run pending tasks that need no person (collect samples for a group)")
    p.add_argument("--limit", type=positive_int, default=10, help="run at most N tasks (default 10)")
    p.add_argument("--backend", choices=["simulated", "anthropic"], help="default: $AUTOPACK_LLM_BACKEND or simulated")
    p.add_argument("--seed", type=int, help="simulated backend seed (default: $AUTOPACK_SIM_SEED or 42)")
    p.add_argument("--concurrency", type=positive_int, default=4)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_execute)

    p = tasks_sub.add_parser("approve", help="a person approves a pending task")
    p.add_argument("task_id")
    p.add_argument("--note", help="kept with the approval in the task's evidence")
    p.set_defaults(func=lambda args: _decide(args, "approve"))

    p = tasks_sub.add_parser("reject", help="a person rejects a pending task (status skipped)")
    p.add_argument("task_id")
    p.add_argument("--reason", help="why; stored as the task's failure_reason")
    p.set_defaults(func=lambda args: _decide(args, "reject"))

    p = tasks_sub.add_parser("complete", help="a person closes a task they carried out")
    p.add_argument("task_id")
    p.set_defaults(func=lambda args: _decide(args, "complete"))
