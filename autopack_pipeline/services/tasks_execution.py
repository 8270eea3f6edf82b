"""Executing generated tasks that need no human judgement: collecting samples for a group.

A ``collect_samples`` task (evidence: category, complexity, observed, threshold) launches a targeted
collection run for its group, with at least as many phases as the group is short of clean samples,
and is completed when the database then holds ``threshold`` clean samples for the group, re-counted
from the events, not taken from the run's own report. Short of that it is a failed attempt: back to
pending while retries are left, failed after ``max_retries``. The run id is derived from the task id
and the attempt number, so an attempt that is repeated resumes its own run instead of collecting twice.

Every other kind waits for a person: in particular a task never applies a coefficient change.
The CLI (``tasks execute``) and the Dagster sensors call the same functions: ``plan_collection``
before the collection and ``close_collection`` after it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Engine

from autopack_pipeline.collection.phases import PhaseSetError, load_templates, phases_from_templates
from autopack_pipeline.domain.analysis import clean_sample_rows
from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.domain.estimator import TokenEstimator
from autopack_pipeline.llm.backends import LLMBackend
from autopack_pipeline.services.collecting import collect
from autopack_pipeline.services.seed_files import load_coefficients_for
from autopack_pipeline.settings import Settings
from autopack_pipeline.storage.snapshot import snapshot_events
from autopack_pipeline.storage.tasks import (
    DEFAULT_STALE_HOURS,
    claim_task,
    cleanup_stale_tasks,
    get_task,
    mark_task_status,
    pending_tasks,
)

logger = logging.getLogger(__name__)

AUTO_EXECUTABLE_KINDS = frozenset({"collect_samples"})
AUTO_EXECUTE_OFF = "auto-execution is off (AUTOPACK_TASK_GENERATION_AUTO_EXECUTE=false): nothing was run"


def paid_backend_refusal(backend: str) -> str:
    """Why automation leaves collect-samples tasks alone on a paid backend: collecting spends money, and
    only a person asks for that (the collection asset's ``allow_paid_backend``, or the CLI)."""
    return (f"the {backend} backend is paid, so no collection is started by automation: run "
            "`autopack-telemetry tasks execute TASK_ID`, or launch targeted_collection_job with "
            "`allow_paid_backend: true` in its collection config")
# Share of a group's phases that end as a clean sample when the group has no history yet; the
# simulated and real Builders both lose some phases to truncation, failures and tiny outputs. Even a
# group that never lost one is assumed to lose some (MAX), so one unlucky phase does not cost a whole
# second run; a group that loses most is not sent more than 4x its shortfall in one go (MIN).
DEFAULT_CLEAN_YIELD = 0.75
MIN_CLEAN_YIELD = 0.25
MAX_CLEAN_YIELD = 0.8


@dataclass(frozen=True)
class ExecutionResult:
    task_id: str
    kind: str | None
    # completed | retry | failed | needs_person | auto_execute_off | not_pending | not_found
    outcome: str
    message: str
    run_id: str | None = None
    phases_requested: int | None = None
    clean_samples_before: int | None = None
    clean_samples_after: int | None = None
    threshold: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def group_sample_counts(engine: Engine, category: str, complexity: str) -> tuple[int, int]:
    """(clean samples, distinct phases with events) of one group, as the database holds them now.

    The events come through the columnar copy, refreshed first, so a sensor tick reads only the rows
    added since the last refresh instead of the whole table; the arrays stay cached for the process
    (one store version), which the next task of the same tick reuses.
    """
    arrays = snapshot_events(engine)[0].arrays()
    categories, category_names = arrays.category.canonical(normalise_category)
    complexities, complexity_names = arrays.complexity.canonical(normalise_complexity)
    wanted = (normalise_category(category), normalise_complexity(complexity))
    if wanted[0] not in category_names or wanted[1] not in complexity_names:
        return 0, 0
    in_group = (categories == category_names.index(wanted[0])) & (complexities == complexity_names.index(wanted[1]))
    phases = arrays.phase_key
    clean = int(clean_sample_rows(arrays, within=in_group).mask.sum())
    return clean, len(np.unique(phases.values[in_group & phases.notna()]))


def phases_for_shortfall(shortfall: int, clean: int, phases_seen: int) -> int:
    """Phases to run so the group is likely to reach its threshold: the shortfall, scaled up by how
    often the group's phases have ended as clean samples so far (never below the shortfall)."""
    rate = clean / phases_seen if phases_seen else DEFAULT_CLEAN_YIELD
    rate = min(MAX_CLEAN_YIELD, max(MIN_CLEAN_YIELD, rate))
    return max(shortfall, math.ceil(shortfall / rate))


def template_group_for(settings: Settings, category: str, complexity: str) -> tuple[str, str]:
    """The template group whose phases are recorded under (``category``, ``complexity``).

    Events carry the estimator's category, as in Autopack, and that is not always the phase's own:
    docs phases the estimator treats as documentation synthesis are recorded as ``doc_synthesis``. So
    a group with no templates of its own is matched by estimating one phase of each template group.
    """
    target = (normalise_category(category), normalise_complexity(complexity))
    templates = load_templates(settings.seeds_dir)
    if target in templates:
        return target
    estimator = TokenEstimator(load_coefficients_for(settings))
    for group in sorted(g for g in templates if g[1] == target[1]):
        phase = phases_from_templates(settings.seeds_dir, *group, 1)[0]
        estimate = estimator.estimate(phase.deliverables, phase.category, phase.complexity, phase.scope_paths,
                                      phase.goal)
        if normalise_category(estimate.category) == target[0]:
            return group
    known = ", ".join(f"{c}/{x}" for c, x in sorted(templates))
    raise PhaseSetError(f"no phase templates for {target[0]}/{target[1]}; templates exist for: {known}")


def _needs_person(task: dict[str, Any]) -> str | None:
    """Why a pending task cannot run on its own, or ``None`` when it can."""
    kind = task.get("kind")
    if kind == "review_coefficients":
        return ("coefficient changes are never applied by a task: review the calibration report, run "
                "`autopack-telemetry apply-calibration`, then `tasks complete`")
    if kind not in AUTO_EXECUTABLE_KINDS:
        return f"{kind or 'untyped'} tasks need a person's judgement and never run on their own"
    if task.get("requires_approval") is not False:
        return f"waiting for approval: `autopack-telemetry tasks approve {task['task_id']}`"
    return None


def _result(task: dict[str, Any], outcome: str, message: str, **figures: Any) -> ExecutionResult:
    return ExecutionResult(task_id=task["task_id"], kind=task.get("kind"), outcome=outcome, message=message, **figures)


@dataclass(frozen=True)
class CollectionPlan:
    """A claimed collect-samples task and the targeted collection that should fulfil it."""

    task: dict[str, Any]
    run_id: str  # the attempt's id: <task id>-attempt-<n>, so a repeated attempt resumes its own run
    category: str
    complexity: str
    template_category: str  # the template group whose phases are recorded under (category, complexity)
    template_complexity: str
    threshold: int
    clean_samples_before: int
    phases: int

    @property
    def group(self) -> str:
        return f"{self.category}/{self.complexity}"

    def figures(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "phases_requested": self.phases,
                "clean_samples_before": self.clean_samples_before, "threshold": self.threshold}


def plan_collection(engine: Engine, settings: Settings, task: dict[str, Any]) -> CollectionPlan | ExecutionResult:
    """The state machine of a pending collect-samples task up to its collection, in one place for the
    CLI (``execute_task``) and the Dagster sensor: a task whose evidence names no group fails; a group
    that already holds its threshold completes; a group without templates fails at once (retrying
    cannot help); otherwise the task is claimed (in progress) and the plan says what to collect. The
    result when there is nothing to collect, or another executor claimed the task first.
    """
    task_id = task["task_id"]
    evidence = task.get("evidence") or {}
    category, complexity, threshold = evidence.get("category"), evidence.get("complexity"), evidence.get("threshold")
    if not (category and complexity and isinstance(threshold, int) and threshold > 0):
        message = "evidence lacks category, complexity or a positive threshold; cannot target a collection"
        mark_task_status(engine, task_id, "failed", failure_reason=message)
        return _result(task, "failed", message)
    group = f"{category}/{complexity}"
    before, phases_seen = group_sample_counts(engine, category, complexity)
    if before >= threshold:
        mark_task_status(engine, task_id, "completed")
        return _result(task, "completed", f"{group} already has {before} clean samples (threshold {threshold})",
                       clean_samples_before=before, clean_samples_after=before, threshold=threshold)
    run_id = f"{task_id}-attempt-{int(task.get('retry_count') or 0) + 1}"
    phases = phases_for_shortfall(threshold - before, before, phases_seen)
    figures = {"run_id": run_id, "phases_requested": phases, "clean_samples_before": before, "threshold": threshold}
    try:
        template_category, template_complexity = template_group_for(settings, category, complexity)
    except PhaseSetError as exc:
        message = f"cannot build phases for {group}: {exc}"
        mark_task_status(engine, task_id, "failed", executed_in_run_id=run_id, failure_reason=message)
        return _result(task, "failed", message, **figures)
    if not claim_task(engine, task_id, executed_in_run_id=run_id):
        return _result(task, "not_pending", "another executor took this task first")
    return CollectionPlan(task, run_id, category, complexity, template_category, template_complexity, threshold,
                          before, phases)


def close_collection(engine: Engine, task: dict[str, Any], run_id: str, ran: str,
                     figures: dict[str, Any] | None = None) -> ExecutionResult:
    """Complete or fail ``task`` after its collection attempt ``run_id`` ``ran`` (a description), from the
    database's count of its group's clean samples.

    The count decides, not how the run ended: a run that failed after writing enough samples (say, at a
    blocking data-quality check further on) still fulfilled the task. Short of the threshold is a failed
    attempt, back to pending while retries are left.
    """
    evidence = task.get("evidence") or {}
    category, complexity, threshold = evidence["category"], evidence["complexity"], int(evidence["threshold"])
    group = f"{category}/{complexity}"
    after, _ = group_sample_counts(engine, category, complexity)
    figures = (figures or {}) | {"clean_samples_after": after}
    if after >= threshold:
        mark_task_status(engine, task["task_id"], "completed", executed_in_run_id=run_id)
        return _result(task, "completed", f"{ran}: {group} now has {after} clean samples (threshold {threshold})",
                       **figures)
    message = f"{ran}: {group} has {after} clean samples, {threshold} needed"
    status = mark_task_status(engine, task["task_id"], "failed", executed_in_run_id=run_id, failure_reason=message,
                              increment_retry=True)
    return _result(task, status, message + ("; will retry on the next execution" if status == "retry" else ""),
                   **figures)


def execute_task(
    engine: Engine, settings: Settings, backend: LLMBackend, task_id: str, *, concurrency: int = 4
) -> ExecutionResult:
    """Run one pending collect-samples task and close it; any other task is left as it is, with the reason."""
    task = get_task(engine, task_id)
    if task is None:
        return ExecutionResult(task_id, None, "not_found", f"no task {task_id}")
    if not settings.task_generation_auto_execute:
        return _result(task, "auto_execute_off", AUTO_EXECUTE_OFF)
    if task["status"] != "pending":
        return _result(task, "not_pending", f"task is {task['status']}, only pending tasks run")
    reason = _needs_person(task)
    if reason:
        return _result(task, "needs_person", reason)
    plan = plan_collection(engine, settings, task)
    if isinstance(plan, ExecutionResult):
        return plan
    try:
        summary = collect(engine, settings, backend, run_id=plan.run_id, category=plan.template_category,
                          complexity=plan.template_complexity, phases=plan.phases, concurrency=concurrency)
    except Exception as exc:  # the run crashed; the task must not stay in progress
        logger.exception("collection run %s for task %s crashed", plan.run_id, task_id)
        message = f"collection run {plan.run_id} crashed: {type(exc).__name__}: {exc}"
        status = mark_task_status(engine, task_id, "failed", executed_in_run_id=plan.run_id, failure_reason=message,
                                  increment_retry=True)
        return _result(task, status, message, **plan.figures())
    ran = f"collection run {plan.run_id} ({summary.phases_completed} of {plan.phases} phases completed)"
    return close_collection(engine, task, plan.run_id, ran, plan.figures())


def execute_pending_tasks(
    engine: Engine,
    settings: Settings,
    backend: LLMBackend,
    *,
    limit: int = 10,
    concurrency: int = 4,
    stale_after_hours: float | None = DEFAULT_STALE_HOURS,
) -> list[ExecutionResult]:
    """Fail stale in-progress tasks, run up to ``limit`` pending auto-executable tasks (most urgent,
    then oldest, first), and list the pending tasks that wait for a person.

    With auto-execution off nothing runs: each task that would have run is listed with that reason.
    """
    if stale_after_hours is not None:
        stale = cleanup_stale_tasks(engine, stale_after_hours)
        if stale:
            logger.warning("%d in-progress task(s) were stale for more than %g h and are now failed", stale,
                           stale_after_hours)
    runnable = [task for kind in sorted(AUTO_EXECUTABLE_KINDS)
                for task in pending_tasks(engine, kind=kind, auto_executable_only=True, limit=limit)][:limit]
    waiting = [t for t in pending_tasks(engine, limit=1000) if _needs_person(t)]
    if not settings.task_generation_auto_execute:
        results = [_result(t, "auto_execute_off", AUTO_EXECUTE_OFF) for t in runnable]
    else:
        results = [execute_task(engine, settings, backend, t["task_id"], concurrency=concurrency) for t in runnable]
    return results + [_result(t, "needs_person", _needs_person(t) or "") for t in waiting]
