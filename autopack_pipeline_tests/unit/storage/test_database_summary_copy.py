"""``db-check``'s and ``doctor``'s event counts (storage.summary) from the columnar copy: the same document as
the grouped query gives, and the query whenever the copy does not hold every row of the table."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from autopack_pipeline.services.event_reading import copied_events
from autopack_pipeline.services.telemetry_database import summarise
from autopack_pipeline.storage import columnar, summary
from autopack_pipeline.storage.events import ensure_run_and_phase, estimation_row, insert_estimation_row
from autopack_pipeline.storage.summary import database_summary
from autopack_pipeline_tests.support.databases import PHASE_ID, RUN_ID

# Raw spellings as Autopack and older versions wrote them: canonical ones, synonyms, unknown values.
_KINDS = [("implementation", "medium"), ("documentation", "low"), ("docs", "high"), ("testing", "low"),
          ("tests", "extreme"), ("Refactoring", "MEDIUM"), ("misc", "critical")]


def _add_events(engine, make_event, count: int) -> None:
    """Events of every raw spelling, each as written (the recorder would store canonical ones)."""
    with engine.begin() as connection:
        for i in range(count):
            insert_estimation_row(connection, estimation_row(make_event(
                event_uid=f"e{i}", success=i % 3 != 0, truncated=i % 4 == 0)))
            category, complexity = _KINDS[i % len(_KINDS)]
            connection.execute(sa.text("UPDATE token_estimation_v2_events SET category = :category, "
                                       "complexity = :complexity WHERE event_uid = :uid"),
                               {"category": category, "complexity": complexity, "uid": f"e{i}"})


@pytest.fixture
def copy_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(columnar.COLUMNAR_DIR_VARIABLE, str(tmp_path / "columnar"))
    return tmp_path / "columnar"


def _query_only(monkeypatch) -> None:
    """The copy's counting refuses: what follows must come from the grouped query."""
    def refuse(arrays):
        raise AssertionError("the copy was counted")

    monkeypatch.setattr(summary, "_copied_breakdown", refuse)


def test_the_copy_gives_the_query_s_counts(seeded, make_event, copy_dir, monkeypatch):
    _add_events(seeded, make_event, 60)
    by_query = database_summary(seeded)
    assert by_query["events"]["total"] == 60
    assert by_query["events"]["by_category"]["docs"] > 0 and "extreme" in by_query["events"]["by_complexity"]

    def no_query(connection):
        raise AssertionError("the events table was grouped")

    monkeypatch.setattr(summary, "_event_breakdown", no_query)
    assert database_summary(seeded, copied_events(seeded)) == by_query
    assert summarise(seeded) == by_query  # db-check's route
    assert (copy_dir / "manifest.json").exists()


def test_a_copy_without_every_row_leaves_the_counts_to_the_query(seeded, make_event, copy_dir, monkeypatch):
    _add_events(seeded, make_event, 30)
    by_query = database_summary(seeded)
    arrays = copied_events(seeded)()
    assert arrays is not None and len(arrays) == 30
    _query_only(monkeypatch)
    fewer = arrays.take(arrays.event_id.values != arrays.event_id.values[0])
    assert database_summary(seeded, lambda: fewer) == by_query
    assert database_summary(seeded, lambda: None) == by_query  # no usable copy


def test_an_in_memory_database_has_no_copy_and_is_grouped_in_sql(make_event, monkeypatch):
    from autopack_pipeline.storage.database import make_engine
    from autopack_pipeline.storage.migrate import upgrade_database

    engine = make_engine("sqlite://")
    upgrade_database(engine)
    ensure_run_and_phase(engine, RUN_ID, PHASE_ID)
    _add_events(engine, make_event, 10)
    assert copied_events(engine)() is None
    _query_only(monkeypatch)
    assert summarise(engine)["events"]["total"] == 10
