"""Reading ``phase_outcome_events`` (how each phase ended) over a time window, for the outcome analyser."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.models import PhaseOutcomeEvent, naive_utc

if TYPE_CHECKING:
    import pandas as pd

_OUTCOMES = PhaseOutcomeEvent.__table__
OUTCOME_COLUMNS: tuple[str, ...] = tuple(column.key for column in _OUTCOMES.columns)


def read_phase_outcome_rows(engine: Engine, *, since: datetime | None = None,
                            until: datetime | None = None) -> list[dict[str, Any]]:
    """Rows with ``since <= timestamp <= until`` (either bound optional), oldest first, as dicts by column name
    (what the outcome analyser reads).

    Rows without a timestamp are left out when a bound is given, as Autopack's ``timestamp >= :cutoff`` does.
    """
    statement = select(_OUTCOMES).order_by(_OUTCOMES.c.timestamp, _OUTCOMES.c.id)
    if since is not None:
        statement = statement.where(_OUTCOMES.c.timestamp >= naive_utc(since))
    if until is not None:
        statement = statement.where(_OUTCOMES.c.timestamp <= naive_utc(until))
    with engine.connect() as connection:
        rows = connection.execute(statement).mappings().all()
    return [dict(row) for row in rows]


def read_phase_outcomes(engine: Engine, *, since: datetime | None = None, until: datetime | None = None) -> pd.DataFrame:
    """:func:`read_phase_outcome_rows` as a frame, one column per table column."""
    import pandas as pd

    return pd.DataFrame(read_phase_outcome_rows(engine, since=since, until=until), columns=list(OUTCOME_COLUMNS))
