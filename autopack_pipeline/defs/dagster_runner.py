"""Run the pipeline job headlessly on a persistent Dagster instance and say where the results are.

The run lands in the same instance storage the UI reads (``.dagster_home/`` by default), so after
the quickstart `dagster dev -w workspace.yaml` shows the materialisations it made.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import dagster as dg

from autopack_pipeline.settings import REPO_ROOT, StorageSettings, load_storage_settings
from autopack_pipeline.storage.events import MIN_VALID_OUTPUT_TOKENS


def _dagster_home(configured: Path | None) -> Path:
    """``DAGSTER_HOME`` when set, else ``./.dagster_home`` (made, with the repository's dagster.yaml)."""
    if configured is not None:
        return configured
    home = Path.cwd() / ".dagster_home"
    home.mkdir(exist_ok=True)
    if not (home / "dagster.yaml").exists() and (REPO_ROOT / "dagster.yaml").exists():
        shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    return home


def _instance(home: Path) -> dg.DagsterInstance:
    # Not DagsterInstance.get(): that reads DAGSTER_HOME itself, and this process need not export it.
    return dg.DagsterInstance.from_config(str(home))


def run_pipeline(collect: bool = True, settings: StorageSettings | None = None) -> int:
    from autopack_pipeline.defs.definitions import defs

    settings = settings if settings is not None else load_storage_settings()
    job = defs.resolve_job_def("telemetry_pipeline_job" if collect else "analysis_job")
    home = str(_dagster_home(settings.dagster_home))
    with _instance(Path(home)) as instance:
        # Step-level DEBUG lines drown the summary on a terminal; the UI keeps the full event log.
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        result = job.execute_in_process(instance=instance, raise_on_error=False, run_config=quiet)
        if result.success:
            days = _materialise_days(defs, instance, result.output_for_node("raw_events"), quiet)
    if not result.success:
        _print_failure(result, home)
        return 1
    _print_results(result, home, settings)
    failed = [run for run in days if not run.success]
    _print_days(days)
    if failed:
        _print_failure(failed[0], home)
        return 1
    return 0


def _print_failure(result: dg.ExecuteInProcessResult, home: str) -> None:
    failed = [event for event in result.all_events if event.is_step_failure]
    why = "; ".join(e.step_failure_data.error.message.strip() for e in failed if e.step_failure_data.error)
    print(f"The run {result.run_id} failed at {', '.join(e.step_key for e in failed) or 'an unknown step'}"
          + (f": {why}" if why else "") + f"; see `dagster dev -w workspace.yaml` (run history in {home}).",
          file=sys.stderr)


def _materialise_days(defs, instance, snapshot, run_config) -> list[dg.ExecuteInProcessResult]:
    """The day partitions of daily_tier_metrics for the days of the rolling window that have events.

    In the UI the metrics_automation_sensor does this for today and yesterday; here it runs in process,
    one run per day, as a backfill would. Older days: backfill them from the asset's page.
    """
    from autopack_pipeline.defs.shared.partitions import event_days
    from autopack_pipeline.domain.windows import days_with_events, events_in_window
    from autopack_pipeline.services.analysis import analysis_window
    from autopack_pipeline.settings import load_settings

    events = snapshot.arrays()
    window = analysis_window(load_settings(), events)
    known = set(event_days.get_partition_keys(dynamic_partitions_store=instance))
    days = [d.isoformat() for d in days_with_events(events_in_window(events, window))]
    job = defs.resolve_job_def("daily_metrics_job")
    return [job.execute_in_process(instance=instance, partition_key=day, raise_on_error=False, run_config=run_config)
            for day in days if day in known]


def _print_days(days: list[dg.ExecuteInProcessResult]) -> None:
    done = [run for run in days if run.success]
    if not done:
        return
    print(f"Per day (daily_tier_metrics, {len(done)} day(s) with events in the rolling window; 95% intervals):")
    for run in done:
        metrics = run.output_for_node("daily_tier_metrics")  # services.analysis.TierMetrics of one day
        print(f"  {metrics.window}: {_calls_and_rates(metrics.tier1)}")


def _calls_and_rates(tier1: dict) -> str:
    """"N calls, underestimation X% (low-high), truncation Y% (low-high)" of a Tier-1 block."""
    figures = [f"{name} {tier1[key]:.1f}% ({tier1[key + '_ci'][0]:.1f}-{tier1[key + '_ci'][1]:.1f})"
               for key, name in (("underestimation_rate_pct", "underestimation"), ("truncation_rate_pct", "truncation"))]
    return f"{tier1['total_samples']} calls, " + ", ".join(figures)


def _print_results(result: dg.ExecuteInProcessResult, home: str, settings: StorageSettings) -> None:
    from autopack_pipeline.storage.database import make_engine
    from autopack_pipeline.storage.handle import describe_database

    engine = make_engine(settings.resolved_database_url())
    identity = describe_database(engine)
    print(f"Telemetry database: {identity.url}" + (f" ({identity.sqlite_path})" if identity.sqlite_path else ""))
    outputs = {node: result.output_for_node(node) for node in (
        "tier_metrics", "calibration_recommendations", "generated_tasks")}
    if "telemetry_collection_run" in [n.name for n in result.job_def.nodes]:
        run = result.output_for_node("telemetry_collection_run")
        if run.get("skipped"):
            print(f"Collection skipped: {run['reason']}; the figures below are of the events already stored.")
        else:
            print(
                f"Collection run {run['run_id']} ({run['backend']} backend): {run['phases_completed']} phases "
                f"completed, {run['phases_failed']} failed, {run['events_written']} events, {run['escalations']} "
                "escalations" + (f", {_count(run['short_answers_not_recorded'], 'answer')} under "
                                 f"{MIN_VALID_OUTPUT_TOKENS} tokens not recorded."
                                 if run.get("short_answers_not_recorded") else ".")
            )
            if run["events_written"]:
                _print_run_tier1(engine, run["run_id"])
    metrics = outputs["tier_metrics"]  # services.analysis.TierMetrics
    tier1 = metrics.tier1
    print(f"Tier 1 over {tier1['total_samples']} Builder calls (targets: underestimation <= 5%, truncation <= 2%):")
    for key, name in (("underestimation_rate_pct", "underestimation"), ("truncation_rate_pct", "truncation"),
                      ("success_rate_pct", "success")):
        low, high = tier1[f"{key}_ci"]
        print(f"  {name:<16} {tier1[key]:6.1f}%   95% interval {low:.1f}%-{high:.1f}%")
    print("  verdict: " + ("TUNING NEEDED" if metrics.needs_tuning else "within targets"))
    calibration = outputs["calibration_recommendations"].as_dict()  # services.calibrating.CalibrationOutcome
    print(calibration["gate"]["summary"])
    if calibration["reports"]:
        print(f"Calibration report: {calibration['reports']['markdown']}")
    _print_patch(calibration)
    tasks = outputs["generated_tasks"]
    print(f"Generated tasks: {len(tasks)} (stored in the generated_tasks table)")
    for task in tasks:
        print(f"  {task['task_id']} [{task['priority']}] {task['title']}")
    print(f"Dagster run {result.run_id} is recorded in {home}; browse it with: "
          "dagster dev -w workspace.yaml -h 127.0.0.1")


def _print_run_tier1(engine, run_id: str) -> None:
    """This run's own Tier 1: the figures below mix it with the window's older runs, whose predictions
    came from the coefficients before the last applied calibration."""
    from autopack_pipeline.services.analysis import run_tier1

    print(f"  this run alone, on the coefficients in force: {_calls_and_rates(run_tier1(engine, run_id))} "
          f"(`autopack-telemetry metrics --run-id {run_id}`)")


def _print_patch(calibration: dict) -> None:
    """The patch to review and how to apply it, or exactly why there is none."""
    from autopack_pipeline.services.calibration_review import apply_instructions, no_patch_reason, section_lines

    reason = no_patch_reason(calibration)
    if reason:
        print(f"Nothing to apply: {reason}")
        return
    actionable = [g for g in calibration["result"]["groups"] if g.get("actionable")]
    print(f"Calibration patch to review: {calibration['reports']['json']}")
    print(f"  {len(actionable)} group(s) with an actionable {calibration['method']} multiplier: "
          + (", ".join(f"{g['category']}/{g['complexity']} x{g['proposed_multiplier']:.3f}" for g in actionable)
             or "none (the patch sets budgets only)"))
    for line in section_lines(calibration.get("calibration")):
        print("  " + line)
    for line in apply_instructions(calibration["reports"]["json"]):
        print("  " + line)


def _count(n: int, noun: str) -> str:
    """``1 answer``, ``2 answers``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
