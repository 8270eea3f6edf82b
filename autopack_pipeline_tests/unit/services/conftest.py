"""The databases of the services tests that read stored events (a SQLite file, and PostgreSQL as a second
parameter), from support/."""

from autopack_pipeline_tests.support.databases import (  # noqa: F401 - re-exported fixtures
    backend,
    blank_engine,
    database_url,
    engine,
    make_event,
    seeded,
)
