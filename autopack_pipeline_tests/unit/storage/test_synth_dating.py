"""When `synth` dates a batch: after the newest stored event, but never after now."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from autopack_pipeline.cli import main
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.synth import bulk_load
from autopack_pipeline.synth.generate import DEFAULT_START
from autopack_pipeline.synth.load import batch_start

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def test_a_batch_continues_after_the_newest_event_when_it_fits_before_now():
    assert batch_start(None, 1_000, NOW) == (DEFAULT_START, False)
    latest = datetime(2026, 1, 1, 8, 30, 15, 123)
    assert batch_start(latest, 1_000, NOW) == (datetime(2026, 1, 1, 8, 31, 15), False)


def test_a_batch_that_could_run_past_now_ends_before_it():
    latest = datetime(2026, 12, 7, 11, 40)  # 20 minutes ago: 1,000 phases of 1.5 s can take 25
    start, moved = batch_start(latest, 1_000, NOW)
    assert moved and start < latest
    assert start + timedelta(seconds=1_000 * 1.5) < NOW.replace(tzinfo=None)
    # An empty database whose default start is too early for a huge batch to end by now.
    start, moved = batch_start(None, 50_000_000, NOW)
    assert moved and start < DEFAULT_START


def _date_every_event(engine, moment: datetime) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE token_estimation_v2_events SET timestamp = :t"),
                           {"t": moment.replace(tzinfo=None)})


def test_synth_after_recent_events_stores_no_event_dated_after_now(engine):
    first = bulk_load(engine, 300, runs=2, seed=1)
    assert not first.ends_before_now  # an empty database: dated from the default start, in the past
    recent = datetime.now(timezone.utc) - timedelta(minutes=5)
    _date_every_event(engine, recent)  # as if collected just now
    second = bulk_load(engine, 2_000, runs=3, seed=2)
    assert second.ends_before_now
    stored = read_events(engine)
    assert len(stored) == 2_300
    newest = max(stored["timestamp"])
    assert newest.replace(tzinfo=None) <= datetime.now(timezone.utc).replace(tzinfo=None)
    assert second.first_timestamp < recent.replace(tzinfo=None).isoformat(sep=" ")  # among the stored events


def test_synth_command_says_when_it_dated_the_batch_to_end_before_now(sqlite_url, capsys):
    from autopack_pipeline.storage.database import make_engine

    assert main(["synth", "--events", "300", "--runs", "2", "--seed", "1", "--json"]) == 0
    capsys.readouterr()
    engine = make_engine(sqlite_url)
    _date_every_event(engine, datetime.now(timezone.utc) - timedelta(minutes=1))
    engine.dispose()
    assert main(["synth", "--events", "500", "--runs", "2", "--seed", "2"]) == 0
    assert "Dated to end before now" in capsys.readouterr().out
