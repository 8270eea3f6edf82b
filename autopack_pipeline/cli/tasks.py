"""`tasks`: generated improvement tasks from a terminal: list, show, generate, execute, approve, reject, complete."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from autopack_pipeline.cli.common import (
    CALIBRATION_METHOD_CHOICES,
    EXIT_OK,
    Refused,
    extraction_progress,
    identity_line,
    open_engine,
    positive_float,
    positive_int,
    print_json,
    warn_unreadable,
)

# storage.tasks.STATUSES, spelled out so the CLI starts without importing storage (a test keeps them equal).
STATUS_CHOICES = ("pending", "in_progress", "completed", "failed", "skipped", "superseded")


def _found(engine, task_id: str) -> dict[str, Any]:
    from autopack_pipeline.services.tasks_review import find_task

    task = find_task(engine, task_id)
    if task is None:
        raise Refused(f"no task {task_id} (see `autopack-telemetry tasks list`)")
    return task


def _age(created_at: str | None, now: datetime) -> str:
    """How long ago a task was created: ``45m``, ``5h``, ``3d``."""
    if not created_at:
        return "-"
    seconds = max(0.0, (now - datetime.fromisoformat(created_at)).total_seconds())
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    return f"{int(seconds // 3600)}h" if seconds < 86400 else f"{int(seconds // 86400)}d"


def _row(task: dict[str, Any], now: datetime) -> list[str]:
    from autopack_pipeline.services.tasks_review import group_label

    approval = " [needs approval]" if task.get("requires_approval") and task["status"] == "pending" else ""
    return [task.get("priority") or "-", task["status"], _age(task.get("created_at"), now),
            group_label(task.get("evidence")), task["task_id"], task["title"] + approval]


def _print_todo(tasks: list[dict[str, Any]]) -> None:
    """Tasks as a to-do list: aligned columns, most urgent first (the order they come in)."""
    now = datetime.now(timezone.utc)
    rows = [["PRIORITY", "STATUS", "AGE", "GROUP", "TASK", "TITLE"]] + [_row(t, now) for t in tasks]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])


def cmd_list(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.tasks_review import list_tasks

    engine = open_engine(args)
    # Without --status or --all the list is a to-do list: the open tasks only.
    tasks, matched = list_tasks(engine, status=args.status, kind=args.kind, include_closed=args.all)
    if args.json:
        print_json(tasks)
        return EXIT_OK
    print(identity_line(engine))
    if not tasks:
        print("No tasks" + (f" with status {args.status}" if args.status else " open" if matched else "") + ".")
    else:
        _print_todo(tasks)
    closed = matched - len(tasks)
    if closed:
        print(f"({closed} closed task(s) not shown: `autopack-telemetry tasks list --all`)")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.tasks_review import estimated_cost_text, evidence_lines, group_label, next_step

    engine = open_engine(args)
    task = _found(engine, args.task_id)
    if args.json:
        print_json(task)
        return EXIT_OK
    approval = "needs approval" if task.get("requires_approval") else "no approval needed"
    print(f"{task['task_id']}  {task['title']}")
    print(f"  status: {task['status']}    priority: {task.get('priority')}    group: "
          f"{group_label(task.get('evidence'))}    kind: {task.get('kind') or '-'}    {approval}")
    if task.get("confidence") is not None:
        print(f"  confidence: {task['confidence']:.2f}    effort: {task.get('estimated_effort') or '-'}")
    if task.get("estimated_cost") is not None:
        print(f"  estimated cost: {estimated_cost_text(int(task['estimated_cost']))}")
    print(f"  created: {task.get('created_at')}    updated: {task.get('updated_at') or '-'}"
          + (f"    completed: {task['completed_at']}" if task.get("completed_at") else ""))
    if task.get("retry_count") or task.get("failure_runs"):
        print(f"  attempts: {task.get('retry_count') or 0} of {task.get('max_retries')}"
              + (f" (runs {', '.join(task['failure_runs'])})" if task.get("failure_runs") else ""))
    if task.get("failure_reason"):
        print(f"  reason: {task['failure_reason']}")
    # The stored description's problem statement; the evidence is rendered from the stored JSON, so a
    # task written before the readable format is shown the same way.
    problem = (task.get("description") or "").split("\n\n## Evidence")[0].strip()
    if problem:
        print()
        print(problem)
    print("\n## Evidence")
    for line in evidence_lines(task.get("evidence")):
        print(f"- {line}")
    step = next_step(task)
    print(f"\nNext: {step}" if step else "\nNothing to do: the task is closed.")
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.tasks_from_database import generate_tasks
    from autopack_pipeline.settings import load_settings

    settings = load_settings()
    engine = open_engine(args)
    document = generate_tasks(engine, settings, min_samples=args.min_samples, window_days=args.window_days,
                              method=args.method, extraction_progress=extraction_progress(args),
                              warn_unreadable=warn_unreadable)
    if args.json:
        print_json(document)
        return EXIT_OK
    print(identity_line(engine))
    if not settings.task_generation_enabled:
        print("Task generation is off (AUTOPACK_TASK_GENERATION_ENABLED=false): nothing generated.")
        return EXIT_OK
    print(document["gate"]["summary"])
    stored = document["stored"]
    print(f"{document['tasks_generated']} task(s) from this analysis (at most {settings.task_generation_max_tasks}, "
          f"confidence >= {settings.task_generation_min_confidence:g}): {len(stored['inserted'])} new, "
          f"{len(stored['refreshed']) + len(stored['reopened'])} refreshed with the new figures, "
          f"{len(stored['superseded'])} superseded (finding gone).")
    for task in document["tasks"]:
        print(f"  {task['task_id']}  {task['priority']:<8} {task['kind']:<22} {task['title']}")
    for task_id in stored["superseded"]:
        print(f"  {task_id}  superseded")
    print("See them with `autopack-telemetry tasks list`.")
    return EXIT_OK


def cmd_execute(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.collecting import make_backend
    from autopack_pipeline.services.tasks_execution import AUTO_EXECUTE_OFF, execute_pending_tasks
    from autopack_pipeline.settings import load_settings

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
    from autopack_pipeline.services import tasks_review

    engine = open_engine(args)
    if verb == "approve":
        decision = tasks_review.approve_task(engine, args.task_id, note=args.note)
    elif verb == "reject":
        decision = tasks_review.reject_task(engine, args.task_id, reason=args.reason)
    else:
        decision = tasks_review.complete_task(engine, args.task_id)
    if not decision.done:
        raise Refused(decision.message)
    print(decision.message)
    if decision.next_step:
        print(f"Next: {decision.next_step}")
    return EXIT_OK


def register(sub: Any, parser_class: type) -> None:
    tasks = sub.add_parser("tasks", help="generated improvement tasks: list, show, generate, execute, approve, reject")
    tasks_sub = tasks.add_subparsers(dest="tasks_command", required=True, parser_class=parser_class)

    p = tasks_sub.add_parser("list", help="open tasks as a to-do list, most urgent first, then oldest")
    p.add_argument("--status", choices=STATUS_CHOICES, help="only tasks with this status (closed ones included)")
    p.add_argument("--all", action="store_true", help="every task, closed ones too (default: pending and in progress)")
    p.add_argument("--kind", help="only this kind, e.g. collect_samples or review_coefficients")
    p.add_argument("--json", action="store_true", help="print the tasks as one JSON document")
    p.set_defaults(func=cmd_list)

    p = tasks_sub.add_parser("show", help="one task with its description and evidence")
    p.add_argument("task_id", help="the task's id, TASK-... (see `tasks list`)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (no progress bar)")
    p.set_defaults(func=cmd_show)

    p = tasks_sub.add_parser("generate", help="analyse the database and store new tasks (no report files written)")
    p.add_argument("--min-samples", type=positive_int, default=5, help="clean samples a group needs (default 5)")
    p.add_argument("--window-days", type=positive_float, default=7.0,
                   help="phase outcomes from the last N days (default 7)")
    p.add_argument("--method", choices=CALIBRATION_METHOD_CHOICES, default="coverage",
                   help="calibration method whose recommendations become tasks (default coverage, as the asset)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (no progress bar)")
    p.set_defaults(func=cmd_generate)

    p = tasks_sub.add_parser("execute", help="run pending tasks that need no person (collect samples for a group)")
    p.add_argument("--limit", type=positive_int, default=10, help="run at most N tasks (default 10)")
    p.add_argument("--backend", choices=["simulated", "anthropic"], help="default: $AUTOPACK_LLM_BACKEND or simulated")
    p.add_argument("--seed", type=int, help="simulated backend seed (default: $AUTOPACK_SIM_SEED or 42)")
    p.add_argument("--concurrency", type=positive_int, default=4, help="phases drained in parallel (default 4)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (no progress bar)")
    p.set_defaults(func=cmd_execute)

    p = tasks_sub.add_parser("approve", help="a person approves a pending task")
    p.add_argument("task_id", help="the task's id, TASK-... (see `tasks list`)")
    p.add_argument("--note", help="kept with the approval in the task's evidence")
    p.set_defaults(func=lambda args: _decide(args, "approve"))

    p = tasks_sub.add_parser("reject", help="a person rejects a pending task (status skipped)")
    p.add_argument("task_id", help="the task's id, TASK-... (see `tasks list`)")
    p.add_argument("--reason", help="why; stored as the task's failure_reason")
    p.set_defaults(func=lambda args: _decide(args, "reject"))

    p = tasks_sub.add_parser("complete", help="a person closes a task they carried out")
    p.add_argument("task_id", help="the task's id, TASK-... (see `tasks list`)")
    p.set_defaults(func=lambda args: _decide(args, "complete"))
