"""What the PostgreSQL loader does besides copying rows: dropping the secondary indexes (and foreign
keys) of a fresh load and rebuilding them, and deleting an append's runs again after a failure that
left some of its batches committed."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa

logger = logging.getLogger(__name__)


def _undo_load(connection: Any, run_ids: list[str]) -> None:
    """Delete the load's runs after a failure that left batches committed; the keys cascade to tiers,
    phases and events. Best effort: when the server is unreachable too, the committed rows stay, and
    loading the same seed again is refused (:class:`RunsAlreadyPresent`)."""
    try:
        with connection.cursor() as cursor:
            cursor.adbc_ingest("synth_undo", pa.table({"id": pa.array(run_ids, pa.string())}), mode="create",
                               temporary=True)
            cursor.execute("DELETE FROM runs WHERE id IN (SELECT id FROM synth_undo)")
            cursor.execute("DROP TABLE synth_undo")
        connection.commit()
    except Exception:  # the original failure is the one to report
        logger.warning("could not remove the partly loaded synthetic runs %s .. %s", run_ids[0], run_ids[-1],
                       exc_info=True)


def _drop_for_load(cursor: Any, *, drop_foreign_keys: bool) -> list[str]:
    """Drop the secondary indexes (and with ``drop_foreign_keys`` the foreign keys) of phases and events;
    return what rebuilds them.

    Runs inside the load's transaction (PostgreSQL DDL is transactional), so a failed load leaves
    every index and constraint as it was. Indexes backing a primary key or unique constraint stay.
    """
    tables = "'phases'::regclass, 'token_estimation_v2_events'::regclass"
    foreign_keys = []
    if drop_foreign_keys:
        cursor.execute("SELECT c.conname, c.conrelid::regclass::text, pg_get_constraintdef(c.oid) FROM pg_constraint c "
                       f"WHERE c.contype = 'f' AND c.conrelid IN ({tables}) ORDER BY c.conname")
        foreign_keys = cursor.fetchall()
    cursor.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        f"WHERE i.indrelid IN ({tables}) AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1")
    indexes = cursor.fetchall()
    for name, table, _definition in foreign_keys:
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _definition in indexes:
        cursor.execute(f"DROP INDEX {name}")
    return [definition for _name, definition in indexes] + [
        f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}' for name, table, definition in foreign_keys
    ]
