"""The coefficient file version that predicted each event.

Revision: 0004 (follows 0003).

- ``token_estimation_v2_events.coefficients_version`` (nullable text): written by our Builder with
  every event, so calibration re-expresses old predictions under the coefficients in force instead
  of multiplying a multiplier that is already applied. Autopack's readers ignore it; its writer
  leaves it NULL, and such events are re-predicted from their stored features.

The step looks at the live schema first (a column added by hand is kept), as 0002 does.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TABLE = "token_estimation_v2_events"
_COLUMN = "coefficients_version"


def _present() -> bool:
    return _COLUMN in {column["name"] for column in sa.inspect(op.get_bind()).get_columns(_TABLE)}


def upgrade() -> None:
    if not _present():
        with op.batch_alter_table(_TABLE) as batch:
            batch.add_column(sa.Column(_COLUMN, sa.String(), nullable=True))


def downgrade() -> None:
    if _present():
        with op.batch_alter_table(_TABLE) as batch:
            batch.drop_column(_COLUMN)
