"""Metadata a person reads in the UI: database identity, markdown tables, headline numbers."""

from typing import Any

import dagster as dg

from autopack_pipeline.domain.analysis import largest_group
from autopack_pipeline.storage.database import DatabaseIdentity
from autopack_pipeline.storage.frames import EVENT_COLUMNS


def database_metadata(identity: DatabaseIdentity) -> dict[str, Any]:
    """Which telemetry database the asset read or wrote (password masked), so runs can be audited."""
    meta: dict[str, Any] = {"telemetry_database": dg.MetadataValue.text(identity.url)}
    if identity.sqlite_path:
        meta["telemetry_database_file"] = dg.MetadataValue.path(str(identity.sqlite_path))
    return meta


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{_fmt(value[0])}–{_fmt(value[1])}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


_SCHEMA_TYPES = {"Int64": "int", "string": "string", "boolean": "bool", "datetime64[ns, UTC]": "timestamp"}


def events_column_schema() -> dg.TableSchema:
    """Column schema of the events table as the columnar copy holds it."""
    return dg.TableSchema(
        columns=[dg.TableColumn(name, _SCHEMA_TYPES.get(dtype, dtype)) for name, dtype in EVENT_COLUMNS.items()]
    )


def sample_group_metadata(group_counts: dict[tuple[str, str], int], min_samples: int) -> dict[str, Any]:
    """Group sizes of the clean samples, as the calibration gate sensor reads them back.

    ``group_counts`` is the full list, so the sensor can re-run the gate function itself on the
    latest materialisation without loading the samples.
    """
    counts = sorted(((c, x, n) for (c, x), n in group_counts.items()), key=lambda item: (-item[2], item[0], item[1]))
    largest = largest_group(group_counts)
    return {
        "group_count": len(counts),
        "groups_at_min_samples": sum(1 for *_, n in counts if n >= min_samples),
        "largest_group": dg.MetadataValue.text(f"{largest['category']}/{largest['complexity']}" if largest else "none"),
        "largest_group_samples": largest["n"] if largest else 0,
        "group_counts": dg.MetadataValue.json([{"category": c, "complexity": x, "n": n} for c, x, n in counts]),
    }


GROUP_TIER1_COUNTS = ("total_samples", "underestimation_samples", "underestimated_count", "truncated_count")


def group_tier1_metadata(group_tier1: dict[tuple[str, str], dict[str, Any]]) -> dg.MetadataValue:
    """Each (category, complexity) group's Tier-1 counts, which is all ``gates.certain_group_breaches`` reads."""
    return dg.MetadataValue.json([{"category": c, "complexity": x, **{k: int(block[k]) for k in GROUP_TIER1_COUNTS}}
                                  for (c, x), block in group_tier1.items()])


def strata_table(dimension: str, strata: dict[str, dict[str, Any]]) -> str:
    """Tier-1 rates per stratum value (category, complexity or deliverable bucket)."""
    rows = [
        [name, block["total_samples"], *(f"{float(block[key]):.1f}" for key in
                                          ("underestimation_rate_pct", "truncation_rate_pct", "success_rate_pct"))]
        for name, block in strata.items()
    ]
    if not rows:
        return "_no events_"
    return markdown_table([dimension, "events", "underestimation %", "truncation %", "success %"], rows)


# --- Answers a person reads on the asset page: typed tables, rounded figures, the next step ---------------------


def rounded(value: Any, digits: int = 1) -> float | None:
    """``value`` to ``digits`` decimals (a rate in percent means nothing past its first decimal)."""
    return None if value is None else round(float(value), digits)


def next_step_metadata(text: str) -> dict[str, Any]:
    """The one line "what to do next" on an asset whose result needs a person."""
    return {"next_step": dg.MetadataValue.md(text)}


def table(columns: list[tuple[str, str, str]], records: list[dict[str, Any]]) -> dg.MetadataValue:
    """A typed table (``columns``: name, type, description) the UI renders with its own column widths."""
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind, description=description or None)
                                     for name, kind, description in columns])
    return dg.MetadataValue.table(records=[dg.TableRecord(record) for record in records], schema=schema)


_TIER1_COLUMNS = [
    ("metric", "string", ""),
    ("value_pct", "float", "percent of the Builder calls"),
    ("interval_low_pct", "float", "Wilson 95% interval, lower end"),
    ("interval_high_pct", "float", "Wilson 95% interval, upper end"),
    ("target", "string", "Tier-1 target"),
    ("status", "string", "against the target, with the interval"),
]


def _against_target(value: float, high_low: tuple[float, float] | None, target: float | None) -> str:
    if target is None:
        return "monitored"
    if value <= target:
        return "met"
    low = high_low[0] if high_low else None
    return "breached" if low is None or low > target else "breached (interval reaches the target)"


def tier1_table(tier1: dict[str, Any]) -> dg.MetadataValue:
    """Tier 1 with intervals and targets as a typed table, rounded to a tenth of a percent."""
    from autopack_pipeline.domain.targets import TRUNCATION_TARGET_PCT, UNDERESTIMATION_TARGET_PCT

    rows = [("underestimation", "underestimation_rate_pct", UNDERESTIMATION_TARGET_PCT),
            ("truncation", "truncation_rate_pct", TRUNCATION_TARGET_PCT),
            ("success", "success_rate_pct", None)]
    records = []
    for name, key, target in rows:
        value, ci = float(tier1[key]), tier1.get(f"{key}_ci")
        records.append({
            "metric": name, "value_pct": rounded(value),
            "interval_low_pct": rounded(ci[0]) if ci else None, "interval_high_pct": rounded(ci[1]) if ci else None,
            "target": "monitored" if target is None else f"at most {target:g}%",
            "status": _against_target(value, ci, target),
        })
    return table(_TIER1_COLUMNS, records)


def spend_metadata(spend: Any) -> dict[str, Any]:
    """Spend (a :class:`~autopack_pipeline.domain.cost.Spend`) per model and per UTC day, next to Tier 1."""
    per_model = [{"model": m["model"] or "(none)", "priced_as": m["priced_as"] or "default (assumed)",
                  "billed_output_tokens": m["billed_output_tokens"], "usd": rounded(m["dollars"], 2)}
                 for m in spend.per_model]
    per_day = [{"day": day, "usd": rounded(dollars, 2)} for day, dollars in spend.per_day.items()]
    return {
        "spend_usd": rounded(spend.total_dollars, 2),
        "spend_by_model": table([("model", "string", ""), ("priced_as", "string", "price-table entry"),
                                 ("billed_output_tokens", "int", "every stored attempt"),
                                 ("usd", "float", "US dollars, output tokens only")], per_model),
        "spend_by_day": table([("day", "string", "UTC"), ("usd", "float", "US dollars, output tokens only")],
                              per_day),
        "spend_prices": dg.MetadataValue.text(f"{spend.prices}; output tokens only (input is not stored per event)"),
    }


def png_markdown(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG shown inside the UI: Markdown with a data URI (the UI's Markdown allows ``data:`` images)."""
    import base64

    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})")


def metrics_next_step(needs_tuning: bool, tier1: dict[str, Any]) -> dict[str, Any]:
    """Tier 1 breached: calibration is the answer (its asset says whether there is a patch); else nothing."""
    if not needs_tuning:
        return next_step_metadata("Nothing to do: Tier 1 is within its targets.")
    return next_step_metadata(
        f"Tier 1 is breached (underestimation {tier1['underestimation_rate_pct']:.1f}%, truncation "
        f"{tier1['truncation_rate_pct']:.1f}%): open **calibration_recommendations** for the patch, or why there is "
        "none yet.")


# The jobs a person launches from the UI on a task (autopack_pipeline/defs/jobs.py).
APPROVE_TASK_JOB, REJECT_TASK_JOB, COMPLETE_TASK_JOB = "approve_task_job", "reject_task_job", "complete_task_job"
APPLY_CALIBRATION_JOB = "apply_calibration_job"


def task_next_step_in_ui(task: dict[str, Any]) -> str:
    """What a person does next on an open task, in the Dagster UI (``tasks_review.next_step`` is the CLI's)."""
    kind, status = task.get("kind"), task.get("status")
    if status == "in_progress":
        return f"wait for its run {task.get('executed_in_run_id') or ''}".rstrip()
    close = f"then {COMPLETE_TASK_JOB} (or {REJECT_TASK_JOB} with a reason)"
    if kind == "collect_samples":
        if task.get("requires_approval") is not False:
            return f"{APPROVE_TASK_JOB}: auto_execution_sensor then collects the samples (or {REJECT_TASK_JOB})"
        return "auto_execution_sensor collects the samples (AUTOPACK_TASK_GENERATION_AUTO_EXECUTE)"
    if kind == "review_coefficients":
        return f"review calibration_recommendations, {APPLY_CALIBRATION_JOB} with its patch_json, {close}"
    if kind == "investigate_estimator":
        return f"read tier_metrics' tier1_by_category and tier1_by_complexity, {close}"
    return f"carry it out, {close}"


_PRIORITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3}
_TASK_COLUMNS = [
    ("priority", "string", "from the size of the finding and its interval"),
    ("what", "string", ""),
    ("next_step", "string", "in the UI"),
    ("task_id", "string", "the config of the task jobs"),
    ("about", "string", "group, overall, or the phase types"),
    ("status", "string", ""),
    ("approval", "string", ""),
]


def task_todo_table(tasks: list[dict[str, Any]]) -> dg.MetadataValue:
    """Open tasks as a to-do list: most urgent first, each with what to do next."""
    from autopack_pipeline.domain.task_evidence import group_label

    ordered = sorted(tasks, key=lambda t: (_PRIORITY_ORDER.get(t.get("priority"), 9), str(t.get("created_at") or "")))
    records = [{
        "priority": t.get("priority") or "-", "task_id": t["task_id"], "what": t.get("title") or "-",
        "about": group_label(t.get("evidence")), "status": t.get("status") or "-",
        "approval": "not needed" if t.get("requires_approval") is False and not (t.get("evidence") or {}).get(
            "approval") else ("approved" if (t.get("evidence") or {}).get("approval") else "needed"),
        "next_step": task_next_step_in_ui(t),
    } for t in ordered]
    return table(_TASK_COLUMNS, records)
