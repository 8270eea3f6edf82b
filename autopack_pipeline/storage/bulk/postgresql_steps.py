"""What the PostgreSQL loader does besides copying rows: dropping the secondary indexes (and foreign
keys) of a fresh load and rebuilding them, deleting an append's runs again after a failure that left
some of its batches committed, and finding and removing the runs of an append that was killed between
two commits, when no Python was left to delete them."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.bulk.rows import LOADED_STATE, LOADING_STATE, run_id_for

logger = logging.getLogger(__name__)

# An append's first connection holds this session-level advisory lock, (namespace, seed), from before its
# runs are written until it closes: PostgreSQL lets go of it when the connection ends however the process
# ended, so whoever can take it knows that no live load is writing the seed's runs.
LOAD_LOCK_NAMESPACE = 0x41505359  # "APSY"


# Synthetic runs of any seed still marked loading (``:loading`` is LOADING_STATE), for SQLAlchemy's text().
_ANY_SEED_LOADING = "state = :loading AND id LIKE 'synth-%'"


class LoadInProgress(RuntimeError):
    """Another process is loading the same seed into this database right now."""


def _lock_key(seed: int) -> str:
    return f"{LOAD_LOCK_NAMESPACE}, {seed & 0x7FFFFFFF}"  # the two int4 keys


def _seed_runs(seed: int) -> str:
    """SQL for "the seed's runs marked loading": ids starting synth-<seed>-r, not those of a longer seed
    (``starts_with``, not ``LIKE``: a ``%`` would be a placeholder to psycopg's ``exec_driver_sql``)."""
    return f"state = '{LOADING_STATE}' AND starts_with(id, '{run_id_for(seed, 0)[:-5]}')"


def _take_load_lock(cursor: Any, seed: int) -> None:
    """Hold the seed's load lock on the append's first connection (released when it closes)."""
    cursor.execute(f"SELECT pg_try_advisory_lock({_lock_key(seed)})")
    if not cursor.fetchone()[0]:
        raise LoadInProgress(f"another synth is loading seed {seed} into this database right now")


def _mark_loaded(cursor: Any, seed: int) -> None:
    """The load's runs are complete: every batch is committed (the caller commits this too)."""
    cursor.execute(f"UPDATE runs SET state = '{LOADED_STATE}' WHERE {_seed_runs(seed)}")


def _release_load_lock(cursor: Any, seed: int) -> None:
    """Let go of the seed's load lock once the runs marked loaded are committed (not before: another load
    would take them for an interrupted one's). Closing the connection would too, but only as its backend
    exits, which a query just after the load can still see."""
    cursor.execute(f"SELECT pg_advisory_unlock({_lock_key(seed)})")


def _may_skip_key_checks(scalar: Callable[[str], Any]) -> bool:
    """Whether this role may turn the foreign-key triggers off (superuser, or granted the setting);
    ``scalar`` answers a query with its one value."""
    if scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        return True
    # Granting a setting (and asking about it) came with PostgreSQL 15.
    return int(scalar("SELECT current_setting('server_version_num')")) >= 150000 and bool(
        scalar("SELECT has_parameter_privilege('session_replication_role', 'SET')"))


def _delete_loading_runs(execute: Callable[[str], Any], seed: int, *, skip_key_checks: bool) -> None:
    """Delete the seed's runs still marked loading, with their tiers, phases and events, in the caller's
    transaction (``execute`` runs one statement on its connection).

    Children first, one set-based DELETE per table, with the foreign-key triggers off for the
    transaction. Letting the keys cascade from ``runs`` fires a trigger per deleted row, and each deleted
    tier then checks that no phase refers to it by scanning ``phases`` (Autopack's schema has no index
    on ``phases.tier_id``): removing a killed load's 500k events that way had not finished after ten
    minutes here. The tables are those a synthetic load writes, and the only ones whose keys refer to
    runs. A role that may not turn the triggers off gets the cascade, slow as it is."""
    where = _seed_runs(seed)
    if skip_key_checks:
        execute("SET LOCAL session_replication_role = replica")
        runs = f"SELECT id FROM runs WHERE {where}"
        for table in ("token_estimation_v2_events", "token_budget_escalation_events", "phases", "tiers"):
            execute(f"DELETE FROM {table} WHERE run_id IN ({runs})")
    execute(f"DELETE FROM runs WHERE {where}")


def _undo_load(connection: Any, seed: int, *, skip_key_checks: bool) -> None:
    """Delete the load's runs after a failure that left batches committed (they are still marked
    loading), with their tiers, phases and events. Best effort: when the server is unreachable too, the
    committed rows stay, marked loading, and the next load removes them (:func:`remove_interrupted_loads`)."""
    try:
        with connection.cursor() as cursor:
            _delete_loading_runs(cursor.execute, seed, skip_key_checks=skip_key_checks)
        connection.commit()
    except Exception:  # the original failure is the one to report
        logger.warning("could not remove the partly loaded synthetic runs of seed %d", seed, exc_info=True)


def unfinished_synthetic_runs(engine: Engine) -> int:
    """Synthetic runs still marked loading: a PostgreSQL append running now, or one killed between two
    commits that the next load will remove (read-only; ``doctor`` reports them)."""
    with engine.connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM runs WHERE {_ANY_SEED_LOADING}"),
                                      {"loading": LOADING_STATE}).scalar() or 0)


def remove_interrupted_loads(engine: Engine) -> dict[int, int]:
    """Delete the runs an append left marked loading when it was killed between two commits (SIGKILL, a
    lost machine) and no load of their seed is alive, with their tiers, phases and events
    (:func:`_delete_loading_runs`). Returns the runs removed per seed."""
    removed: dict[int, int] = {}
    with engine.connect() as connection:
        skip_key_checks = _may_skip_key_checks(lambda query: connection.exec_driver_sql(query).scalar())
        ids = connection.execute(text("SELECT DISTINCT substring(id from '^synth-(-?[0-9]+)-r') FROM runs "
                                      f"WHERE {_ANY_SEED_LOADING}"), {"loading": LOADING_STATE}).scalars().all()
        for seed in sorted(int(found) for found in ids if found and re.fullmatch(r"-?[0-9]+", found)):
            if not connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({_lock_key(seed)})").scalar():
                connection.commit()
                continue  # its load is still running
            try:
                deleted = connection.exec_driver_sql(f"SELECT count(*) FROM runs WHERE {_seed_runs(seed)}").scalar()
                _delete_loading_runs(connection.exec_driver_sql, seed, skip_key_checks=skip_key_checks)
                connection.commit()
            finally:
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_lock_key(seed)})")
                connection.commit()
            if deleted:
                removed[seed] = deleted
                logger.warning("removed %d runs of seed %d left by an interrupted synthetic load", deleted, seed)
    return removed


def _drop_for_load(cursor: Any, *, drop_foreign_keys: bool,
                   tables: tuple[str, ...] = ("phases", "token_estimation_v2_events")) -> list[str]:
    """Drop the secondary indexes (and with ``drop_foreign_keys`` the foreign keys) of ``tables``;
    return what rebuilds them.

    Runs inside the load's transaction (PostgreSQL DDL is transactional), so a failed load leaves
    every index and constraint as it was. Indexes backing a primary key or unique constraint stay.
    """
    relations = ", ".join(f"'{table}'::regclass" for table in tables)
    foreign_keys = []
    if drop_foreign_keys:
        cursor.execute("SELECT c.conname, c.conrelid::regclass::text, pg_get_constraintdef(c.oid) FROM pg_constraint c "
                       f"WHERE c.contype = 'f' AND c.conrelid IN ({relations}) ORDER BY c.conname")
        foreign_keys = cursor.fetchall()
    cursor.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        f"WHERE i.indrelid IN ({relations}) AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1")
    indexes = cursor.fetchall()
    for name, table, _definition in foreign_keys:
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _definition in indexes:
        cursor.execute(f"DROP INDEX {name}")
    return [definition for _name, definition in indexes] + [
        f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}' for name, table, definition in foreign_keys
    ]
