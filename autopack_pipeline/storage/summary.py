"""What is in the telemetry database, in one JSON-ready dict (the ``db-check`` command's data).

Read-only, and tolerant of partial schemas: a table that is missing is listed as missing rather than
failing the check, because "no such table" is exactly the situation (pitfall P1) this report must
make visible.

The event counts per category, complexity and outcome come from one grouped query, or, when the caller
passes the events of the columnar copy (``events_copy``) and the copy holds every row the table counts,
from those arrays: grouping ten million rows took SQLite 13-22 s here (a temporary B-tree of every row),
the copy's arrays about a tenth of a second. Both go through the same counting (:func:`_breakdown`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, inspect, select, table
from sqlalchemy.engine import Connection, Engine

from autopack_pipeline.domain.categories import canonical_complexity, normalise_category
from autopack_pipeline.storage.handle import describe_database
from autopack_pipeline.storage.migrate import current_revision, head_revision, missing_columns
from autopack_pipeline.storage.models import (
    TELEMETRY_TABLES,
    Phase,
    TokenEstimationV2Event,
)

if TYPE_CHECKING:
    from autopack_pipeline.domain.analysis import EventArrays

_ALEMBIC_TABLE = "alembic_version"
# Every stored event from the columnar copy, refreshed first, or None (no usable copy: ask the database).
EventsCopy = Callable[[], "EventArrays | None"]


def _pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def _phase_states(connection: Connection) -> dict[str, int]:
    phases = Phase.__table__
    rows = connection.execute(select(phases.c.state, func.count()).group_by(phases.c.state)).all()
    states = {str(state): int(count) for state, count in rows}
    return dict(sorted(states.items())) | {"TOTAL": sum(states.values())}


def _event_breakdown(connection: Connection) -> dict[str, Any]:
    """:func:`_breakdown` of the events table, grouped by one query."""
    events = TokenEstimationV2Event.__table__
    columns = (events.c.category, events.c.complexity, events.c.success, events.c.truncated)
    return _breakdown(connection.execute(select(*columns, func.count()).group_by(*columns)).all())


def _copied_breakdown(arrays: EventArrays) -> dict[str, Any]:
    """:func:`_breakdown` of the columnar copy's events: the same groups as the query's, counted by numpy."""
    category, complexity = arrays.category, arrays.complexity
    # One number per (category, complexity, success, truncated), each shifted past its missing value (-1).
    sizes = (len(category.labels) + 1, len(complexity.labels) + 1, 3, 3)
    keys = category.codes.astype(np.int32)
    for size, codes in zip(sizes[1:], (complexity.codes, arrays.success, arrays.truncated), strict=True):
        keys += 1
        keys *= size
        keys += codes
    keys += 1
    counts = np.bincount(keys, minlength=int(np.prod(sizes)))
    flag = (None, 0, 1)
    rows = []
    for key in np.flatnonzero(counts).tolist():
        cat, cpx, success, truncated = np.unravel_index(key, sizes)
        rows.append(((None, *category.labels)[cat], (None, *complexity.labels)[cpx], flag[success], flag[truncated],
                     int(counts[key])))
    return _breakdown(rows)


def _breakdown(rows: Iterable[tuple[Any, Any, Any, Any, int]]) -> dict[str, Any]:
    """Totals and per-category / per-complexity counts from (category, complexity, success, truncated,
    count) groups.

    Groups use the canonical vocabulary (pitfall P7), so an Autopack row saying "documentation" and
    one of ours saying "docs" are counted together; an unrecognised complexity keeps its raw value
    rather than being folded into "medium".
    """
    total = success = truncated = 0
    by_category: dict[str, Counter[str]] = {"all": Counter(), "success": Counter()}
    by_complexity: dict[str, Counter[str]] = {"all": Counter(), "success": Counter()}
    for category, complexity, was_success, was_truncated, count in rows:
        count = int(count)
        cat = normalise_category(category)
        cpx = canonical_complexity(complexity) or str(complexity)
        total += count
        success += count if was_success else 0
        truncated += count if was_truncated else 0
        scopes = ("all", "success") if was_success else ("all",)
        for scope in scopes:
            by_category[scope][cat] += count
            by_complexity[scope][cpx] += count
    return {
        "total": total,
        "success": success,
        "truncated": truncated,
        "success_pct": _pct(success, total),
        "truncated_pct": _pct(truncated, total),
        "by_category": dict(sorted(by_category["all"].items())),
        "by_complexity": dict(sorted(by_complexity["all"].items())),
        "success_by_category": dict(sorted(by_category["success"].items())),
        "success_by_complexity": dict(sorted(by_complexity["success"].items())),
    }


def _no_events() -> dict[str, Any]:
    """The event block of a database without the events table (fresh dicts each time)."""
    return {
        "total": 0,
        "success": 0,
        "truncated": 0,
        "success_pct": 0.0,
        "truncated_pct": 0.0,
        "by_category": {},
        "by_complexity": {},
        "success_by_category": {},
        "success_by_complexity": {},
    }


def database_summary(engine: Engine, events_copy: EventsCopy | None = None) -> dict[str, Any]:
    """Identity, schema revision, row counts, phase states and event statistics of ``engine``'s database;
    the event statistics from ``events_copy``'s arrays when it gives them (see the module's docstring).

    Keys: ``database`` (masked identity), ``schema`` {revision, head, up_to_date}, ``row_counts``
    {table: rows} for every table present, ``missing_tables``, ``missing_columns`` {table: [column]}
    (read from the live tables, whatever the revision says), ``is_empty``, ``phase_states``
    {state: n, "TOTAL": n}, ``events`` {total, success, truncated, success_pct, truncated_pct,
    by_category, by_complexity, success_by_category, success_by_complexity}, ``escalations``.
    """
    present = set(inspect(engine).get_table_names())
    with engine.connect() as connection:
        counts = {
            name: int(connection.execute(select(func.count()).select_from(table(name))).scalar_one())
            for name in sorted(present - {_ALEMBIC_TABLE})
        }
        phase_states = _phase_states(connection) if "phases" in present else {"TOTAL": 0}
    events_table = TokenEstimationV2Event.__tablename__
    copied = events_copy() if events_copy is not None and counts.get(events_table) else None
    if copied is not None and len(copied) == counts[events_table]:
        events = _copied_breakdown(copied)
    elif events_table in present:
        with engine.connect() as connection:
            events = _event_breakdown(connection)
    else:
        events = _no_events()
    revision = current_revision(engine) if _ALEMBIC_TABLE in present else None
    head = head_revision()
    return {
        "database": describe_database(engine).to_dict(),
        "schema": {"revision": revision, "head": head, "up_to_date": revision == head},
        "row_counts": counts,
        "missing_tables": [name for name in TELEMETRY_TABLES if name not in present],
        "missing_columns": missing_columns(engine),
        # Autopack's definition of an empty database: no runs and no phases.
        "is_empty": counts.get("runs", 0) == 0 and counts.get("phases", 0) == 0,
        "phase_states": phase_states,
        "events": events,
        "escalations": counts.get("token_budget_escalation_events", 0),
    }


def count_events(engine: Engine) -> int:
    """How many rows ``token_estimation_v2_events`` holds."""
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(TokenEstimationV2Event.__table__)).scalar_one())


def count_total_token_fallbacks(engine: Engine) -> int | None:
    """Events whose ``actual_output_tokens`` holds the total tokens (``actual_is_total_tokens``), or
    None when the column is absent (an Autopack database not yet upgraded)."""
    events = TokenEstimationV2Event.__table__
    if "actual_is_total_tokens" not in {c["name"] for c in inspect(engine).get_columns(events.name)}:
        return None
    with engine.connect() as connection:
        return int(connection.execute(
            select(func.count()).select_from(events).where(events.c.actual_is_total_tokens.is_(True))
        ).scalar_one())
