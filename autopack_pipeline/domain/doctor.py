"""The Telemetry Guide's troubleshooting section, run as checks over plain facts.

Each symptom the guide lists (no events collected, all samples failed, high truncation, insufficient
samples, database identity confusion) becomes a check with a status (``ok``/``warn``/``fail``), the
value observed, the threshold it was held against, and what to do. A few data-quality findings of
our own sit next to them: the two truncation flags disagreeing, rows whose "actual" is total tokens
(Autopack pitfall P10), timestamps that are not dates, and events waiting in the local spool.

The input is a dict of facts the caller gathered (the ``database_summary`` document plus a few
counts); nothing here touches a database or the environment, so every finding is testable alone.
``fail`` means the telemetry loop is broken or unusable; ``warn`` means it works but the data needs
attention before calibrating.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# MIN_GROUP_SAMPLES: calibration's per-(category, complexity) minimum, which the doctor checks too.
from autopack_pipeline.domain.targets import MIN_GROUP_SAMPLES, MIN_TOTAL_SAMPLES, TRUNCATION_TARGET_PCT

OK, WARN, FAIL = "ok", "warn", "fail"
HIGH_TRUNCATION_PCT = 10.0  # the guide's "High Truncation Rate" symptom
MIN_CLEAN_SAMPLES = MIN_TOTAL_SAMPLES  # the guide's "When to Calibrate", the gate's minimum
UPGRADE_COMMAND = "autopack-telemetry db upgrade"


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it went, and what to do about it."""

    name: str
    title: str
    status: str
    observed: Any
    threshold: Any
    advice: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _database_url_note(facts: dict[str, Any]) -> str:
    env_url = facts.get("database_url_env")
    if env_url:
        return f"DATABASE_URL is set to {env_url}; make sure Autopack and this command use the same value"
    return (
        "DATABASE_URL is not set, so the default sqlite:///autopack.db in the current directory is used; "
        "set DATABASE_URL explicitly if your database lives elsewhere"
    )


def _flag_note(facts: dict[str, Any]) -> str:
    raw = facts.get("telemetry_flag")
    if raw is None:
        return "TELEMETRY_DB_ENABLED is not set in this environment, so a Builder here records nothing: set it to 1"
    if not facts.get("telemetry_enabled"):
        return f"TELEMETRY_DB_ENABLED is set to {raw!r}, which means off: set it to 1"
    return (
        f"TELEMETRY_DB_ENABLED is {raw!r} here (on); check it was also set for the process that ran the "
        "phases (PowerShell ignores bash-style VAR=value prefixes)"
    )


def check_identity(facts: dict[str, Any]) -> Check:
    """Which database this is, and whether it can be opened at all."""
    database = facts.get("database") or {}
    url = database.get("url")
    if facts.get("file_exists") is False:
        return Check("database_identity", "Database identity", FAIL, f"{url}: file {database.get('sqlite_path')} does not exist",
                     "an existing database file", [_database_url_note(facts), "or create one: autopack-telemetry db upgrade"])
    if facts.get("connect_error"):
        return Check("database_identity", "Database identity", FAIL, f"{url}: {facts['connect_error']}",
                     "a reachable database",
                     [_database_url_note(facts), "check the server is running and the credentials are right"])
    where = f"{url}" + (f", file {database['sqlite_path']}" if database.get("sqlite_path") else "")
    if database.get("sqlite_mtime"):
        where += f", modified {database['sqlite_mtime']}"
    where += "" if facts.get("database_url_env") else " (DATABASE_URL not set: the default)"
    return Check("database_identity", "Database identity", OK, where, "a reachable database")


def check_schema(summary: dict[str, Any]) -> Check:
    schema = summary.get("schema") or {}
    missing = summary.get("missing_tables") or []
    revision = schema.get("revision")
    observed = f"revision {revision}" if revision else "no revision (never migrated, e.g. written by Autopack)"
    if missing:
        observed += "; missing tables: " + ", ".join(missing)
    # The columns, not only the revision stamp: an older `db upgrade` stamped databases without them.
    missing_columns = [f"{table}.{column}" for table, columns in (summary.get("missing_columns") or {}).items()
                       for column in columns]
    if missing_columns:
        observed += "; missing columns: " + ", ".join(missing_columns)
    threshold = f"revision {schema.get('head')}, every telemetry table and column present"
    if schema.get("up_to_date") and not missing and not missing_columns:
        return Check("schema", "Schema revision", OK, observed, threshold)
    return Check("schema", "Schema revision", FAIL, observed, threshold,
                 [f"run {UPGRADE_COMMAND} (keeps every row, also for a database Autopack created)"])


def check_empty(facts: dict[str, Any], summary: dict[str, Any]) -> Check:
    counts = summary.get("row_counts") or {}
    observed = {"runs": counts.get("runs", 0), "phases": counts.get("phases", 0)}
    if not summary.get("is_empty"):
        return Check("empty_database", "Database has runs and phases", OK, observed, "at least one run or phase")
    return Check("empty_database", "Database has runs and phases", WARN, observed, "at least one run or phase", [
        _database_url_note(facts) + " (pointing at the wrong database is the usual cause)",
        "no collection has run against this database yet: autopack-telemetry collect",
        "or import an export: autopack-telemetry import FILE.ndjson",
    ])


def check_events_collected(facts: dict[str, Any], summary: dict[str, Any]) -> Check:
    """The guide's "No Telemetry Events Collected", with its four causes checked where we can."""
    total = (summary.get("events") or {}).get("total", 0)
    if total > 0:
        return Check("events_collected", "Telemetry events collected", OK, total, "> 0 events")
    states = summary.get("phase_states") or {}
    phase_note = ", ".join(f"{state} {n}" for state, n in states.items() if state != "TOTAL") or "no phases"
    spooled = facts.get("spooled_events") or 0
    return Check("events_collected", "Telemetry events collected", FAIL, total, "> 0 events", [
        "1. " + _flag_note(facts),
        f"2. phases may have failed before the Builder ran (phase states: {phase_note}); check the phase logs "
        "for [TokenEstimationV2] lines",
        "3. database connection: " + _database_url_note(facts),
        "4. telemetry write errors: look for 'Failed to write DB telemetry' in the logs"
        + (f"; {spooled} events wait in the spool: autopack-telemetry spool replay" if spooled else ""),
    ])


def check_success(summary: dict[str, Any]) -> Check:
    events = summary.get("events") or {}
    observed = f"{events.get('success', 0)} of {events.get('total', 0)} successful ({events.get('success_pct', 0.0):.1f}%)"
    if events.get("success", 0) > 0:
        return Check("success_samples", "Some samples succeeded", OK, observed, "at least one success=True")
    return Check("success_samples", "Some samples succeeded", FAIL, observed, "at least one success=True", [
        "every Builder call failed, so there is nothing to calibrate on: review the phase failure reasons",
        "fix systemic issues (import errors, scope validation) and seed with simpler phases first",
    ])


def check_truncation(summary: dict[str, Any]) -> Check:
    events = summary.get("events") or {}
    pct = float(events.get("truncated_pct", 0.0))
    observed = f"{pct:.1f}% ({events.get('truncated', 0)} of {events.get('total', 0)})"
    threshold = f"<= {HIGH_TRUNCATION_PCT:.0f}% (Tier-1 target {TRUNCATION_TARGET_PCT:g}%)"
    if pct <= HIGH_TRUNCATION_PCT:
        return Check("truncation_rate", "Truncation rate", OK, observed, threshold)
    return Check("truncation_rate", "Truncation rate", WARN, observed, threshold, [
        "token budgets are too small for the actual output",
        "analyse successful calls only: autopack-telemetry metrics --success-only",
        "check the underestimation rate (target <= 5%); if it is high, calibrate: autopack-telemetry calibrate",
        "re-run calibration after collecting more samples",
    ])


def check_clean_samples(facts: dict[str, Any]) -> Check:
    clean = int(facts.get("clean_samples") or 0)
    threshold = f">= {MIN_CLEAN_SAMPLES} clean samples (success, not truncated, >= 50 tokens, one per phase)"
    if clean >= MIN_CLEAN_SAMPLES:
        return Check("clean_samples", "Enough samples to calibrate", OK, clean, threshold)
    return Check("clean_samples", "Enough samples to calibrate", WARN, clean, threshold, [
        f"collect {MIN_CLEAN_SAMPLES - clean} more clean samples: autopack-telemetry collect",
    ])


def check_group_samples(facts: dict[str, Any]) -> Check:
    groups: dict[str, int] = facts.get("group_counts") or {}
    small = {name: n for name, n in sorted(groups.items()) if n < MIN_GROUP_SAMPLES}
    threshold = f">= {MIN_GROUP_SAMPLES} clean samples per category/complexity group"
    if groups and not small:
        return Check("group_samples", "Samples per group", OK, groups, threshold)
    advice = ["collect more diverse samples (categories and complexities), e.g. autopack-telemetry collect "
              "--category C --complexity X"]
    if groups and len(small) == len(groups):
        advice.append("no group can be calibrated yet; lowering --min-samples is possible but not recommended")
    observed = {"below_minimum": small, "groups": len(groups)}
    return Check("group_samples", "Samples per group", WARN, observed, threshold, advice)


def check_flag_agreement(facts: dict[str, Any]) -> Check:
    disagreements = int(facts.get("flag_disagreements") or 0)
    threshold = "truncated == is_truncated_output on every row"
    if not disagreements:
        return Check("truncation_flags", "Truncation flags agree", OK, 0, threshold)
    return Check("truncation_flags", "Truncation flags agree", WARN, disagreements, threshold, [
        "rows written before Autopack added is_truncated_output carry False there; the metrics trust "
        "`truncated`, so nothing is miscounted, but the rows came from an older writer",
    ])


def check_fallback_rows(facts: dict[str, Any]) -> Check:
    rows = facts.get("fallback_rows")
    threshold = "0 rows with actual_is_total_tokens"
    if not rows:
        return Check("fallback_rows", "Actual tokens are output tokens", OK, rows or 0, threshold)
    return Check("fallback_rows", "Actual tokens are output tokens", WARN, rows, threshold, [
        "these rows come from the fallback path that only knew total (input + output) tokens, so their "
        "'actual' overstates the output; leave them out when judging the estimator or re-collect those phases",
    ])


def check_unreadable_timestamps(facts: dict[str, Any]) -> Check:
    document = facts.get("unreadable_timestamps") or {}
    count = int(document.get("count") or 0)
    threshold = "0 rows with a timestamp that is not a date"
    if not count:
        return Check("unreadable_timestamps", "Timestamps are dates", OK, 0, threshold)
    named = [f"{row['table']} event_id {row['event_id']} {row['column']}={row['value']!r}" for row in document["rows"]]
    more = count - len(named)
    return Check("unreadable_timestamps", "Timestamps are dates", WARN, count, threshold, [
        "these rows are left out of metrics, calibration and tasks; export writes them as stored: "
        + "; ".join(named) + (f"; and {more} more" if more > 0 else ""),
        "fix the value (an ISO-8601 date-time such as 2025-01-31 12:00:00) or delete the row in the database",
    ])


def check_unfinished_synthetic_runs(facts: dict[str, Any]) -> Check:
    unfinished = int(facts.get("unfinished_synthetic_runs") or 0)
    title, threshold = "No synthetic load left half done", "0 synthetic runs marked loading (RUN_CREATED)"
    if not unfinished:
        return Check("unfinished_synthetic_runs", title, OK, 0, threshold)
    return Check("unfinished_synthetic_runs", title, WARN, unfinished, threshold, [
        "a PostgreSQL synth load (an append, or a load into an empty database, which commits once per "
        "connection) is running now, or one was killed between two of its commits and left these runs with "
        "part of their rows; metrics and calibration count the events among them",
        "the next `autopack-telemetry synth` into this database removes an interrupted load's runs first",
    ])


def check_spool(facts: dict[str, Any]) -> Check:
    spooled = int(facts.get("spooled_events") or 0)
    if not spooled:
        return Check("spool", "No events waiting in the spool", OK, 0, "0 spooled events")
    return Check("spool", "No events waiting in the spool", WARN, spooled, "0 spooled events", [
        "writes failed while the database was unavailable and were kept locally: autopack-telemetry spool replay",
    ])


def run_checks(facts: dict[str, Any]) -> list[Check]:
    """Every check that applies to ``facts``, in the order a person should read them.

    Facts: ``database`` (masked identity dict), ``database_url_env`` (masked, or None when unset),
    ``telemetry_flag`` (raw value or None), ``telemetry_enabled``, ``file_exists`` (SQLite only),
    ``connect_error``, ``summary`` (``database_summary`` output), ``clean_samples``, ``group_counts``
    {"category/complexity": n}, ``flag_disagreements``, ``fallback_rows``, ``spooled_events``,
    ``unreadable_timestamps`` ({"count", "rows"}: rows whose timestamp is not a date),
    ``unfinished_synthetic_runs`` (synthetic runs still marked loading).
    """
    checks = [check_identity(facts)]
    summary = facts.get("summary")
    if checks[0].status == FAIL or not summary:
        return checks
    checks += [check_schema(summary), check_empty(facts, summary), check_events_collected(facts, summary)]
    if (summary.get("events") or {}).get("total", 0) > 0:
        checks += [
            check_success(summary),
            check_truncation(summary),
            check_clean_samples(facts),
            check_group_samples(facts),
            check_flag_agreement(facts),
            check_fallback_rows(facts),
            check_unreadable_timestamps(facts),
            check_unfinished_synthetic_runs(facts),
        ]
    checks.append(check_spool(facts))
    return checks


def overall_status(checks: list[Check]) -> str:
    """The worst status among ``checks``."""
    statuses = {check.status for check in checks}
    return FAIL if FAIL in statuses else WARN if WARN in statuses else OK
