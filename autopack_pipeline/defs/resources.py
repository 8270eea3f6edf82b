"""Dagster resources: the telemetry database and the LLM backend, each one swappable by config.

Secrets are never resource fields: the Anthropic key is read from the environment by the backend
when it is built, so it cannot show up in the UI's run config or in metadata.
"""

from __future__ import annotations

from functools import lru_cache

import dagster as dg
from sqlalchemy.engine import Engine

from autopack_pipeline.llm.backends import LLMBackend
from autopack_pipeline.llm.factory import make_backend
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.database import (
    DatabaseIdentity,
    describe_database,
    make_engine,
    resolve_database_url,
)
from autopack_pipeline.storage.migrate import prepare_database


@lru_cache(maxsize=8)
def _engine_for(url: str) -> Engine:
    engine = make_engine(url)
    # The embedded default must work from the UI with no set-up, so a new database gets the schema
    # here; an older one raises SchemaOutOfDate (whose message says to run `db upgrade`) and, as the
    # cache only keeps returned values, is checked again on the next run after the upgrade.
    try:
        prepare_database(engine)
    except Exception:
        engine.dispose()
        raise
    return engine


class TelemetryDatabase(dg.ConfigurableResource):
    """The telemetry database. Empty ``database_url`` means ``DATABASE_URL``, else ``sqlite:///autopack.db``."""

    database_url: str | None = None

    def resolved_url(self) -> str:
        return resolve_database_url(self.database_url)

    def engine(self) -> Engine:
        return _engine_for(self.resolved_url())

    def identity(self) -> DatabaseIdentity:
        return describe_database(self.engine())


class LLMBackendResource(dg.ConfigurableResource):
    """Which LLM answers the Builder: ``simulated`` (default, offline) or ``anthropic`` (needs ANTHROPIC_API_KEY)."""

    backend: str | None = None

    def build(self, backend: str | None = None, seed: int | None = None) -> LLMBackend:
        return make_backend(load_settings(), backend or self.backend, seed)
