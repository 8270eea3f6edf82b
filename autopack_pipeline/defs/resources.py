"""Dagster resources: the telemetry database and the LLM backend, each one swappable by config.

Built from the settings by :func:`build_resources`: a value a user sets in the environment enters as
``dg.EnvVar``, so the UI's launchpad and the run's config name the variable, never its value (the
database URL may carry a password). The Anthropic key is not a resource field at all: the backend
reads it from the settings when it is built, so it cannot show up in run config or metadata.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from autopack_pipeline.llm.backends import LLMBackend
from autopack_pipeline.llm.factory import make_backend
from autopack_pipeline.settings import DATABASE_URL_VARIABLE, StorageSettings, load_settings, load_storage_settings
from autopack_pipeline.storage.database import DatabaseIdentity, make_engine
from autopack_pipeline.storage.handle import describe_database
from autopack_pipeline.storage.migrate import prepare_database


def _prepared_engine(url: str) -> Engine:
    engine = make_engine(url)
    # The embedded default must work from the UI with no set-up, so a new database gets the schema
    # here; an older one raises SchemaOutOfDate (whose message says to run `db upgrade`), and as no
    # engine is kept after a failure, the next call checks again (after the upgrade, it works).
    try:
        prepare_database(engine)
    except Exception:
        engine.dispose()
        raise
    return engine


class TelemetryDatabase(dg.ConfigurableResource):
    """The telemetry database. Empty ``database_url`` means ``DATABASE_URL``, else ``sqlite:///autopack.db``.

    The engine is made (and the schema prepared) on first use and kept for the resource's lifetime,
    one step or one sensor tick, then disposed: no engine outlives the run that opened it.
    """

    # repr=False: in a run the resolved value (with its password) would otherwise show in a repr.
    database_url: str | None = Field(default=None, repr=False)
    _engine: Engine | None = PrivateAttr(default=None)

    def resolved_url(self) -> str:
        """The connectable URL (with its password): for the engine only, never for a log line."""
        return load_storage_settings().resolved_database_url(self.database_url)

    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = _prepared_engine(self.resolved_url())
        return self._engine

    def identity(self) -> DatabaseIdentity:
        return describe_database(self.engine())

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


class LLMBackendResource(dg.ConfigurableResource):
    """Which LLM answers the Builder: ``simulated`` (default, offline) or ``anthropic`` (needs ANTHROPIC_API_KEY)."""

    backend: str | None = None

    def build(self, backend: str | None = None, seed: int | None = None) -> LLMBackend:
        return make_backend(load_settings(), backend or self.backend, seed)


def build_resources(settings: StorageSettings | None = None) -> dict[str, dg.ConfigurableResource]:
    """The resources of the definitions, from ``settings`` (default: the environment's, at load).

    A ``DATABASE_URL`` that is set enters as ``dg.EnvVar``: Dagster reads it when a run launches, and
    the launchpad shows the variable's name. Unset, the resource falls back to the settings' rule at
    run time (the default SQLite file), so the definitions load with no set-up at all.
    """
    settings = settings if settings is not None else load_storage_settings()
    database_url = dg.EnvVar(DATABASE_URL_VARIABLE) if settings.database_url else None
    return {
        "telemetry_db": TelemetryDatabase(database_url=database_url),
        "llm": LLMBackendResource(),
    }
