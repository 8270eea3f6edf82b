"""Our additions to Autopack's schema: nullable columns and two indexes.

Revision: 0002 (follows 0001).

- ``token_estimation_v2_events``: ``attempt``, ``event_uid`` (unique index, for idempotent
  import/replay), ``actual_is_total_tokens`` (pitfall P10), ``phase_completed`` (pitfall P12).
- ``generated_tasks``: ``requires_approval``, ``estimated_cost``, ``kind``, ``evidence``,
  ``confidence``, ``fingerprint`` (indexed, for dedup across runs).

Autopack grew some columns after its tables were first created (``actual_max_tokens`` came with a
separate script, BUILD-142). A database from before that lacks them, and our writer fills them, so
this revision also adds those if they are missing; they are nullable, and downgrade leaves them.

Every step looks at the live schema first, so a half-migrated database (or one where a person added
a column by hand) upgrades cleanly. Batch operations keep the file valid for SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _our_columns() -> dict[str, list[sa.Column]]:
    return {
        "token_estimation_v2_events": [
            sa.Column("attempt", sa.Integer(), nullable=True),
            sa.Column("event_uid", sa.String(length=64), nullable=True),
            sa.Column("actual_is_total_tokens", sa.Boolean(), nullable=True),
            sa.Column("phase_completed", sa.Boolean(), nullable=True),
        ],
        "generated_tasks": [
            sa.Column("requires_approval", sa.Boolean(), nullable=True),
            sa.Column("estimated_cost", sa.Integer(), nullable=True),
            sa.Column("kind", sa.String(), nullable=True),
            sa.Column("evidence", sa.JSON(), nullable=True),
            sa.Column("confidence", sa.Float(), nullable=True),
            sa.Column("fingerprint", sa.String(length=64), nullable=True),
        ],
    }


def _late_autopack_columns() -> dict[str, list[sa.Column]]:
    """Autopack columns that older Autopack databases do not have yet."""
    return {
        "token_estimation_v2_events": [sa.Column("actual_max_tokens", sa.Integer(), nullable=True)],
        "phases": [sa.Column("phase_type", sa.String(), nullable=True)],
        "phase_outcome_events": [
            sa.Column("context_injected", sa.Boolean(), nullable=True),
            sa.Column("context_item_count", sa.Integer(), nullable=True),
        ],
    }


# (index name, table, columns, unique)
_OUR_INDEXES: tuple[tuple[str, str, list[str], bool], ...] = (
    ("ix_token_estimation_v2_events_event_uid", "token_estimation_v2_events", ["event_uid"], True),
    ("ix_generated_tasks_fingerprint", "generated_tasks", ["fingerprint"], False),
)


def _add_missing_columns(columns_by_table: dict[str, list[sa.Column]]) -> None:
    inspector = sa.inspect(op.get_bind())
    for table, columns in columns_by_table.items():
        present = {column["name"] for column in inspector.get_columns(table)}
        missing = [column for column in columns if column.name not in present]
        if not missing:
            continue
        # On SQLite, adding a nullable column is a plain ALTER TABLE; batch mode only rebuilds the
        # table for operations SQLite cannot do in place.
        with op.batch_alter_table(table) as batch:
            for column in missing:
                batch.add_column(column)


def upgrade() -> None:
    _add_missing_columns(_late_autopack_columns())
    _add_missing_columns(_our_columns())
    inspector = sa.inspect(op.get_bind())
    for name, table, columns, unique in _OUR_INDEXES:
        if name not in {index["name"] for index in inspector.get_indexes(table)}:
            op.create_index(name, table, columns, unique=unique)


def downgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    for name, table, _columns, _unique in _OUR_INDEXES:
        if name in {index["name"] for index in inspector.get_indexes(table)}:
            op.drop_index(name, table_name=table)
    for table, columns in _our_columns().items():
        present = {column["name"] for column in inspector.get_columns(table)}
        doomed = [column.name for column in columns if column.name in present]
        if doomed:
            with op.batch_alter_table(table) as batch:
                for name in doomed:
                    batch.drop_column(name)
