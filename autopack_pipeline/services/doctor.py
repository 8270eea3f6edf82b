"""The Telemetry Guide's troubleshooting as checks: gather the facts from the settings and the database
(read-only: a missing file or an old schema is what the checks report, not something to repair), then
run the domain's checks on them. Called by ``doctor``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autopack_pipeline.domain.doctor import FAIL, WARN, Check, overall_status, run_checks
from autopack_pipeline.settings import StorageSettings


def gather_facts(database_url: str, settings: StorageSettings) -> dict[str, Any]:
    """Everything the checks need, from the settings (``DATABASE_URL`` as set, the telemetry flag) and
    the database ``database_url`` names (read-only)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from autopack_pipeline.domain.analysis import clean_sample_rows, sample_groups, truncation_disagreements
    from autopack_pipeline.services.event_reading import copied_events, read_event_arrays
    from autopack_pipeline.storage import spool
    from autopack_pipeline.storage.bulk import unfinished_synthetic_runs
    from autopack_pipeline.storage.database import make_engine, safe_error_text
    from autopack_pipeline.storage.handle import describe_database
    from autopack_pipeline.storage.summary import count_total_token_fallbacks, database_summary

    env_url = settings.database_url
    engine = make_engine(database_url)
    identity = describe_database(engine)
    facts: dict[str, Any] = {
        "database": identity.to_dict(),
        "database_url_env": make_url(env_url).render_as_string(hide_password=True) if env_url else None,
        "telemetry_flag": settings.telemetry_flag,
        "telemetry_enabled": settings.telemetry_db_enabled,
        "file_exists": Path(identity.sqlite_path).exists() if identity.sqlite_path else None,
        "connect_error": None,
        "summary": None,
        "spooled_events": spool.pending_count(engine, settings.spool_dir),
    }
    if facts["file_exists"] is False:  # connecting would create an empty file and hide the problem
        return facts
    try:
        facts["summary"] = summary = database_summary(engine, copied_events(engine))
        if summary["events"]["total"]:
            # Through the columnar copy, as the analysis reads them: the events read row by row into a frame
            # took 140 s and 15 GB at ten million events here.
            arrays, facts["unreadable_timestamps"] = read_event_arrays(engine, allow_empty=True)
            clean = clean_sample_rows(arrays)
            groups = sample_groups(arrays, clean.mask).counts()  # sorted by (category, complexity)
            facts["clean_samples"] = clean.count
            facts["group_counts"] = {f"{cat}/{cpx}": n for (cat, cpx), n in groups.items()}
            facts["flag_disagreements"] = truncation_disagreements(arrays)
            facts["unfinished_synthetic_runs"] = unfinished_synthetic_runs(engine)
            fallback_rows = count_total_token_fallbacks(engine)
            if fallback_rows is not None:  # the column is absent on an Autopack database not yet upgraded
                facts["fallback_rows"] = fallback_rows
    except SQLAlchemyError as exc:
        facts["connect_error"] = safe_error_text(exc)
    finally:
        engine.dispose()
    return facts


@dataclass(frozen=True)
class DoctorReport:
    """The checks run on one database, with that database's identity and the overall status."""

    database: dict[str, Any]
    checks: list[Check]
    status: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def count(self, status: str) -> int:
        return sum(check.status == status for check in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"database": self.database, "status": self.status, "checks": [c.to_dict() for c in self.checks]}


def run_doctor(database_url: str, settings: StorageSettings) -> DoctorReport:
    """Every check of the guide on the database ``database_url`` names, with ``settings``' environment."""
    facts = gather_facts(database_url, settings)
    checks = run_checks(facts)
    return DoctorReport(facts["database"], checks, overall_status(checks))


__all__ = ["FAIL", "WARN", "DoctorReport", "gather_facts", "run_doctor"]
