"""Whether a database's schema is the one this code needs, read through a catalog (``storage.catalog``).

"Current" means the head revision *and* every table and column of the models: the revision stamp
alone is not trusted, because an older ``db upgrade`` stamped Autopack's databases without adding
some of Autopack's columns. Only the reading and the verdict are here; creating, completing and
refusing a schema are ``storage.migrate``'s, which reads it through SQLAlchemy.
"""

from __future__ import annotations

from dataclasses import dataclass

from autopack_pipeline.storage.catalog import Catalog
from autopack_pipeline.storage.model_columns import MODEL_COLUMNS, TELEMETRY_TABLES

# The newest revision under migrations/versions, spelled out so that opening a database at it (every
# command, every asset) needs no Alembic: importing it and reading the scripts cost a tenth of a second.
# test_migrations checks it is Alembic's head; a database at any other revision still asks Alembic.
HEAD_REVISION = "0004"
VERSION_TABLE = "alembic_version"  # Alembic's default, which migrations/env.py keeps
# Tables whose presence means the database already holds a telemetry schema. Not llm_usage_events:
# Autopack's executor has created that table alone in a stray file (pitfall P1), which is still new.
SCHEMA_MARKERS = (set(TELEMETRY_TABLES) - {"llm_usage_events"}) | {VERSION_TABLE}


def missing_columns_of(catalog: Catalog, present: set[str] | None = None) -> dict[str, list[str]]:
    """Columns of the models that the database's telemetry tables lack, by table (``present``: its
    tables, when read already). Read from the live tables, never from the revision stamp. Absent tables
    are not listed here: they are a finding of their own (see :func:`schema_gaps_of`)."""
    present = catalog.table_names() if present is None else present
    missing: dict[str, list[str]] = {}
    for name in TELEMETRY_TABLES:
        if name not in present:
            continue
        live = catalog.column_names(name)
        lacking = [column for column in MODEL_COLUMNS[name] if column not in live]
        if lacking:
            missing[name] = lacking
    return missing


def schema_gaps_of(catalog: Catalog, present: set[str] | None = None) -> list[str]:
    """What the database lacks of the models, as ``table NAME`` and ``TABLE.COLUMN`` items."""
    present = catalog.table_names() if present is None else present
    gaps = [f"table {name}" for name in TELEMETRY_TABLES if name not in present]
    for table, columns in missing_columns_of(catalog, present).items():
        gaps += [f"{table}.{column}" for column in columns]
    return gaps


@dataclass(frozen=True)
class SchemaReading:
    """What a catalog shows of the schema: its tables, the revision rows, what it lacks of the models."""

    tables: frozenset[str]
    revisions: tuple[str, ...]
    gaps: tuple[str, ...]

    @property
    def holds_schema(self) -> bool:
        """Any telemetry table or a revision stamp: not a new database."""
        return bool(self.tables & SCHEMA_MARKERS)

    @property
    def ready(self) -> bool:
        """At the head revision this code was written for, with every table and column: nothing to do."""
        return self.holds_schema and self.revisions == (HEAD_REVISION,) and not self.gaps


def read_schema(catalog: Catalog) -> SchemaReading:
    """The :class:`SchemaReading` of ``catalog``'s database."""
    tables = catalog.table_names()
    revisions = catalog.first_values(f"SELECT version_num FROM {VERSION_TABLE}") if VERSION_TABLE in tables else []
    return SchemaReading(frozenset(tables), tuple(revisions), tuple(schema_gaps_of(catalog, tables)))
