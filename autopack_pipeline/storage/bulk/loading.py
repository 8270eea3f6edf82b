"""The loaders' entry point and what a load asks the database first.

:func:`make_loader` gives the SQLite or PostgreSQL loader; :func:`load_chunks` hands generated chunks to
it and returns it, holding what it wrote; :func:`latest_event_time` and :func:`stored_run_ids` are the
two questions a synthetic load asks before it starts (where its timestamps continue, whether its runs
exist already).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.bulk.chunk import SynthChunk
from autopack_pipeline.storage.bulk.loader import Progress, _Loader
from autopack_pipeline.storage.bulk.postgresql import _PostgresqlLoader
from autopack_pipeline.storage.bulk.rows import _text_timestamps
from autopack_pipeline.storage.bulk.sqlite import _SqliteLoader
from autopack_pipeline.storage.models import Run, TokenEstimationV2Event

_LOADERS: dict[str, type[_Loader]] = {"sqlite": _SqliteLoader, "postgresql": _PostgresqlLoader}


def check_bulk_backend(engine: Engine) -> str:
    """The dialect name when a loader exists for it; ``ValueError`` otherwise."""
    backend = engine.dialect.name
    if backend not in _LOADERS:
        raise ValueError(f"bulk loading supports SQLite and PostgreSQL, not {backend}")
    return backend


def make_loader(engine: Engine, *, seed: int, runs: int, events: int, progress: Progress | None) -> _Loader:
    """The loader for ``engine``'s database, to write ``events`` events in ``runs`` runs of ``seed``."""
    return _LOADERS[check_bulk_backend(engine)](seed, runs, events, progress)


def load_chunks(
    engine: Engine, chunks: Iterator[SynthChunk], *, seed: int, runs: int, events: int, progress: Progress | None,
) -> _Loader:
    """Write ``chunks`` (``events`` events in ``runs`` runs of ``seed``); the loader, with what it wrote."""
    loader = make_loader(engine, seed=seed, runs=runs, events=events, progress=progress)
    try:
        loader.load(engine, chunks)
    finally:
        loader.close()
    return loader


def text_timestamp(microseconds: int | None) -> str | None:
    """A load's first or last event time (µs since the epoch) as the DATETIME text the rows hold."""
    return None if microseconds is None else _text_timestamps(np.array([microseconds]))[0]


def latest_event_time(engine: Engine) -> datetime | None:
    """The newest estimation event's timestamp, or ``None`` when there is none."""
    table = TokenEstimationV2Event.__table__
    with engine.connect() as connection:
        latest = connection.execute(select(func.max(table.c.timestamp))).scalar()
    if isinstance(latest, str):  # a database written without SQLAlchemy's type processing
        latest = datetime.fromisoformat(latest)
    return latest


def stored_run_ids(engine: Engine, ids: Iterable[str]) -> list[str]:
    """Which of ``ids`` name runs stored already."""
    runs = Run.__table__
    with engine.connect() as connection:
        return list(connection.execute(select(runs.c.id).where(runs.c.id.in_(list(ids)))).scalars().all())
