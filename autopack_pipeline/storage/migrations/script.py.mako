"""${message}

Revision: ${up_revision} (follows ${down_revision | comma,n}), written ${create_date}.

Rules for this schema: Autopack's tables and columns are never renamed or dropped; new columns are
nullable; use batch operations so the revision runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
${imports if imports else ""}

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}


def downgrade() -> None:
    ${downgrades if downgrades else "pass"}
