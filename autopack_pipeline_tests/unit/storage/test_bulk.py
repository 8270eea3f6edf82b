"""Synthetic bulk loads: exactly what the generator says, keys that hold, the Builder's rules, the schema
left as it was, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import sqlalchemy as sa

from autopack_pipeline import synth
from autopack_pipeline.cli import main
from autopack_pipeline.domain.coefficients import load_coefficients
from autopack_pipeline.domain.escalation import MAX_TOKENS_CAP
from autopack_pipeline.domain.estimator import TokenEstimator, select_budget
from autopack_pipeline.settings import REPO_ROOT
from autopack_pipeline.storage import bulk
from autopack_pipeline.storage.bulk import phase_ids_for, run_id_for
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import estimation_metrics, read_events
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline.synth import LEGACY_SPELLINGS, RunsAlreadyPresent, bulk_load, generate_chunks
from autopack_pipeline_tests.support.databases import count_rows, fetch_all

N = 3000


def schema_objects(engine) -> set[tuple[str, str]]:
    """Index and foreign-key definitions of phases and events, as the database reports them."""
    inspector = sa.inspect(engine)
    found = set()
    for table in ("phases", "token_estimation_v2_events"):
        for index in inspector.get_indexes(table):
            found.add((table, f"index {index['name']} {index['column_names']} unique={bool(index['unique'])}"))
        for fk in inspector.get_foreign_keys(table):
            found.add((table, f"fk {fk['constrained_columns']}->{fk['referred_table']}{fk['referred_columns']}"))
    return found


def small_chunks(monkeypatch) -> None:
    """Chunks of 100 phases, the first one too: a few hundred events come in several."""
    monkeypatch.setattr(synth.generate, "FIRST_CHUNK_PHASES", 100)
    monkeypatch.setattr(synth.generate, "PHASES_PER_CHUNK", 100)


def generated_frame(events: int, runs: int, seed: int, phase_ids: str = "per-run") -> pd.DataFrame:
    """The generator's events (before any database), in the columns the loaders write, with their phase ids."""
    pieces = []
    for chunk in generate_chunks(events, runs=runs, seed=seed, phase_ids=phase_ids):
        piece = pd.DataFrame({k: v for k, v in chunk.events.items() if k != "deliverables_json"})
        piece["phase_id"] = phase_ids_for(chunk, seed, chunk.events["run"], chunk.events["phase_index"])
        pieces.append(piece)
    return pd.concat(pieces, ignore_index=True)


@pytest.mark.parametrize("phase_ids", ["per-run", "reused"])
def test_a_load_writes_exactly_the_generated_events_and_keeps_the_schema(engine, backend, phase_ids):
    before = schema_objects(engine)
    summary = bulk_load(engine, N, runs=4, seed=11, phase_ids=phase_ids)
    assert (summary.events, summary.runs, summary.backend) == (N, 4, backend)
    assert "rebuilt after the rows" in summary.method  # an empty table gets the one-transaction load
    assert schema_objects(engine) == before
    assert count_rows(engine, "token_estimation_v2_events") == N
    assert count_rows(engine, "runs") == 4 and count_rows(engine, "tiers") == 4
    assert count_rows(engine, "phases") == summary.phases

    stored = read_events(engine)
    expected = generated_frame(N, 4, 11, phase_ids)
    assert stored["event_id"].tolist() == list(range(1, N + 1))
    assert stored["run_id"].tolist() == [run_id_for(11, r) for r in expected["run"]]
    assert stored["phase_id"].tolist() == expected["phase_id"].tolist()
    if phase_ids == "reused":
        assert stored["phase_id"].tolist() == [f"phase-{i + 1:05d}" for i in expected["phase_index"]]
    for column in ("predicted_output_tokens", "actual_output_tokens", "selected_budget", "actual_max_tokens",
                   "attempt", "deliverable_count"):
        assert stored[column].tolist() == expected[column].tolist(), column
    assert stored["success"].tolist() == expected["success"].tolist()
    assert stored["truncated"].tolist() == expected["truncated"].tolist()
    assert stored["category"].tolist() == expected["category"].tolist()
    stamps = pd.to_datetime(expected["timestamp_us"], unit="us", utc=True)
    assert stored["timestamp"].tolist() == stamps.tolist()


def test_every_event_has_its_phase_and_run(engine, backend):
    bulk_load(engine, N, runs=3, seed=5)
    with engine.connect() as connection:
        orphans = connection.execute(sa.text(
            "SELECT count(*) FROM token_estimation_v2_events e LEFT JOIN phases p "
            "ON p.run_id = e.run_id AND p.phase_id = e.phase_id WHERE p.id IS NULL")).scalar()
        tierless = connection.execute(sa.text(
            "SELECT count(*) FROM phases p LEFT JOIN tiers t ON t.id = p.tier_id WHERE t.id IS NULL")).scalar()
        if backend == "sqlite":
            violations = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        else:
            violations = []
    assert (orphans, tierless, violations) == (0, 0, [])


def test_every_run_has_its_own_phase_ids_and_runs_differ_in_size_as_autopacks_do():
    """Autopack's shape: a database it wrote held ~29,400 runs and as many distinct phase ids as phases
    (no id in two runs); the reused shape restarts the ids in every run of equal size."""
    events = 60_000
    runs = synth.default_run_count(events)
    assert runs == 1765  # ~34 events per run
    frame = generated_frame(events, runs, 7)
    phases = frame.drop_duplicates(["run", "phase_index"])
    assert frame["phase_id"].nunique() == len(phases)  # every phase its own id
    assert phases.groupby("phase_id")["run"].nunique().max() == 1  # no id shared by two runs
    assert phases["phase_id"].str.startswith("s7-r").all()
    sizes = frame.groupby("run").size()
    assert frame["run"].nunique() >= 0.99 * runs and 25 <= sizes.mean() <= 40
    assert sizes.quantile(0.9) > 2.5 * sizes.quantile(0.1)  # a spread, not equal blocks

    reused = generated_frame(events, synth.default_run_count(events, "reused"), 7, "reused")
    assert reused.groupby("phase_id")["run"].nunique().max() > 1  # the same id in several runs
    assert reused["phase_id"].nunique() < 0.1 * reused.drop_duplicates(["run", "phase_index"]).shape[0]


def _fresh_load_failing_midway_leaves_nothing(engine, monkeypatch, loader) -> None:
    """A fresh load whose ``loader`` fails after the first chunk's rows: no row, the schema as it was,
    and the same seed loads afterwards."""
    def fail(self, chunk):
        raise RuntimeError("interrupted after the first chunk's rows")

    monkeypatch.setattr(loader, "_written", fail)
    before = schema_objects(engine)
    with pytest.raises(RuntimeError, match="interrupted"):
        bulk_load(engine, 2000, seed=1)
    assert [count_rows(engine, t) for t in ("runs", "tiers", "phases", "token_estimation_v2_events")] == [0] * 4
    assert schema_objects(engine) == before  # the dropped indexes are back
    monkeypatch.undo()
    assert bulk_load(engine, 2000, seed=1).events == 2000  # and the seed is free


def test_a_fresh_sqlite_load_that_fails_midway_leaves_nothing(sqlite_engine, monkeypatch):
    _fresh_load_failing_midway_leaves_nothing(sqlite_engine, monkeypatch, bulk.sqlite._SqliteLoader)


def test_a_sqlite_append_that_fails_midway_leaves_nothing(sqlite_engine, monkeypatch):
    """An append is one transaction too: a failure after the first chunk's rows rolls all of it back."""
    small_chunks(monkeypatch)  # several chunks, the failure after one
    bulk_load(sqlite_engine, 300, runs=1, seed=1)
    calls = []

    def fail_on_second_chunk(self, chunk):
        calls.append(chunk)
        if len(calls) > 1:
            raise RuntimeError("interrupted after the first chunk's rows")

    monkeypatch.setattr(bulk.sqlite._SqliteLoader, "_written", fail_on_second_chunk)
    with pytest.raises(RuntimeError, match="interrupted"):
        bulk_load(sqlite_engine, 1000, runs=2, seed=2)
    assert [count_rows(sqlite_engine, t) for t in ("runs", "tiers", "token_estimation_v2_events")] == [1, 1, 300]
    monkeypatch.undo()
    assert bulk_load(sqlite_engine, 1000, runs=2, seed=2).events == 1000  # the seed is free


def test_a_sqlite_append_whose_staging_fails_leaves_nothing_and_stops(sqlite_engine, monkeypatch):
    """The helper thread stages the pieces: a failure there reaches the load, which rolls back whole
    and returns (no thread left waiting for a stage)."""
    bulk_load(sqlite_engine, 300, runs=1, seed=1)
    monkeypatch.setattr(bulk.sqlite, "SQLITE_PIECE_PHASES", 50)  # several pieces, the failure after two
    real_fill = bulk.sqlite._Stages.fill
    filled = []

    def fill_then_fail(self, slot, tables):
        filled.append(slot)
        if len(filled) > 2:
            raise RuntimeError("staging failed")
        real_fill(self, slot, tables)

    monkeypatch.setattr(bulk.sqlite._Stages, "fill", fill_then_fail)
    with pytest.raises(RuntimeError, match="staging failed"):
        bulk_load(sqlite_engine, 1000, runs=2, seed=2)
    assert filled == [0, 1, 0]  # the two stages take turns
    assert [count_rows(sqlite_engine, t) for t in ("runs", "phases", "token_estimation_v2_events")][::2] == [1, 300]
    monkeypatch.undo()
    assert bulk_load(sqlite_engine, 1000, runs=2, seed=2).events == 1000  # the seed is free


def test_more_than_100k_runs_load(engine):
    """Run numbers of six digits (Autopack's shape gives ~294k runs for 10M events) do not sort
    between the first and the last run id as text; every run still gets its tier."""
    summary = bulk_load(engine, 100_002, runs=100_001, seed=3)
    assert (summary.runs, count_rows(engine, "tiers"), key_violations(engine)) == (100_001, 100_001, (0, 0, 0))


def test_rows_follow_the_builder_and_the_writer(sqlite_engine):
    engine = sqlite_engine
    bulk_load(engine, N, runs=2, seed=3)
    events = pd.DataFrame(fetch_all(engine, "token_estimation_v2_events", "event_id"))
    phases = pd.DataFrame(fetch_all(engine, "phases", "id")).set_index(["run_id", "phase_id"])
    assert (events["actual_output_tokens"] >= 50).all()  # the writer never stores less
    truncated = events["truncated"].astype(bool)
    assert (events.loc[truncated, "actual_output_tokens"] == events.loc[truncated, "actual_max_tokens"]).all()
    assert not (events["success"].astype(bool) & truncated).any()
    assert (events["is_truncated_output"].astype(bool) == truncated).all()
    first = events[events["attempt"] == 1]
    assert (first["actual_max_tokens"] == np.minimum(first["selected_budget"], MAX_TOKENS_CAP)).all()
    retries = events[events["attempt"] == 2]
    assert len(retries) > 0
    earlier = first.set_index(["run_id", "phase_id"]).loc[list(zip(retries["run_id"], retries["phase_id"]))]
    # Only a truncation, or a failure at 95% of the ceiling, escalates (the Builder's rule).
    near_ceiling = earlier["actual_output_tokens"] * 100 >= 95 * earlier["actual_max_tokens"]
    assert (earlier["truncated"].astype(bool) | (near_ceiling & ~earlier["success"].astype(bool))).all()
    assert (near_ceiling & ~earlier["truncated"].astype(bool)).any()  # the utilisation rule happened too
    out_of_room = first["truncated"].astype(bool) | (
        ~first["success"].astype(bool) & (first["actual_output_tokens"] * 100 >= 95 * first["actual_max_tokens"]))
    # ... and every such attempt did escalate (a degenerate retry is not stored, its phase counts it),
    # but in the phase the load ends in, whose retry may lie past its last event
    escalated = phases.loc[list(zip(first.loc[out_of_room, "run_id"], first.loc[out_of_room, "phase_id"]))]
    cut = escalated.index == (events["run_id"].iloc[-1], events["phase_id"].iloc[-1])
    assert (escalated.loc[~cut, "builder_attempts"] == 2).all() and len(escalated) > 1
    ceiling = np.minimum((retries["selected_budget"] * 1.25).astype(int), MAX_TOKENS_CAP).to_numpy()
    assert (retries["actual_max_tokens"].to_numpy() == np.maximum(ceiling, retries["selected_budget"])).all()
    for row in events.sample(50, random_state=1).itertuples():
        smape, waste, under = estimation_metrics(row.predicted_output_tokens, row.actual_output_tokens)
        assert (row.smape_percent, row.waste_ratio, bool(row.underestimated)) == (smape, waste, under)
        phase = phases.loc[(row.run_id, row.phase_id)]
        assert phase["task_category"] == row.category and phase["complexity"] == row.complexity
    last = events.groupby(["run_id", "phase_id"]).tail(1).set_index(["run_id", "phase_id"])
    assert ((phases.loc[last.index, "state"] == "COMPLETE") == last["success"].astype(bool)).all()


def test_predictions_and_budgets_are_the_real_estimators():
    coefficients = load_coefficients(REPO_ROOT / "seeds" / "estimator_coefficients.yaml")
    estimator = TokenEstimator(coefficients, workspace=REPO_ROOT / "seeds" / "__no_workspace__")
    chunk = next(generate_chunks(2000, runs=1, seed=9))
    ev = chunk.events
    canonical = {v: k for k, v in LEGACY_SPELLINGS.items()}
    for i in range(0, len(ev["run"]), 97):
        deliverables = json.loads(ev["deliverables_json"][i])
        category = canonical.get(ev["category"][i], ev["category"][i])
        estimate = estimator.estimate(deliverables, category, ev["complexity"][i])
        assert estimate.estimated_tokens == ev["predicted_output_tokens"][i]
        assert select_budget(estimate, ev["complexity"][i], coefficients) == ev["selected_budget"][i]
        assert len(deliverables) == ev["deliverable_count"][i]


def test_archetypes_priced_as_the_draws_ask_for_them_are_the_ones_priced_all_at_once():
    """The generator prices an archetype when a block first draws it: the order changes nothing."""
    from autopack_pipeline.synth.archetypes import ArchetypePricer

    seeds = REPO_ROOT / "seeds"
    lazy = ArchetypePricer(seeds)
    rng = np.random.default_rng(5)
    some = tuple(rng.integers(0, size, 200) for size in lazy.priced.shape)
    lazy.ensure(some)
    assert 0 < lazy.priced.sum() < lazy.priced.size and lazy.priced[some].all()
    lazy.ensure(some)  # nothing is priced twice
    eager = ArchetypePricer(seeds).ensure_all()
    lazy_all = lazy.ensure_all()
    assert lazy.priced.all()
    for name in ("predicted", "selected", "deliverables_json", "medians"):
        assert np.array_equal(getattr(lazy_all, name), getattr(eager, name)), name
    assert eager.predicted.min() > 0 and eager.selected.min() > 0


def test_distributions_look_like_the_simulated_backend():
    frame = generated_frame(40_000, 20, 2)
    shares = frame["category"].value_counts(normalize=True)
    assert 0.35 < shares["implementation"] < 0.45 and 0.18 < shares["tests"] < 0.26
    assert 0.005 < shares.get("testing", 0) < 0.02  # Autopack's legacy spellings, now and then
    assert 0.05 < frame["truncated"].mean() < 0.4
    assert 0.6 < frame["success"].mean() < 0.95
    assert (frame["deliverable_count"] == 1).mean() > 0.45 and frame["deliverable_count"].max() == 10
    ratio = frame["actual_output_tokens"] / frame["predicted_output_tokens"]
    assert 0.7 < ratio.median() < 1.5  # the estimator is roughly right, with heavy tails
    assert ratio.quantile(0.99) > 2 * ratio.median()


def test_a_seed_gives_the_same_events_and_loads_once(sqlite_engine):
    assert generated_frame(N, 3, 4).equals(generated_frame(N, 3, 4))
    assert not generated_frame(N, 3, 4).equals(generated_frame(N, 3, 5))
    bulk_load(sqlite_engine, 500, runs=2, seed=4)
    with pytest.raises(RunsAlreadyPresent, match="another --seed"):
        bulk_load(sqlite_engine, 500, runs=2, seed=4)


@pytest.mark.parametrize("phase_ids", ["per-run", "reused"])
def test_a_seed_gives_the_same_rows_however_they_are_cut_into_chunks(monkeypatch, phase_ids):
    """The draws come in blocks with their own streams, so a loader may pick its chunk sizes (a small
    first chunk starts its writing sooner) without changing the data."""
    def rows(first: int, per_chunk: int) -> tuple[pd.DataFrame, pd.DataFrame, int]:
        monkeypatch.setattr(synth.generate, "FIRST_CHUNK_PHASES", first)
        monkeypatch.setattr(synth.generate, "PHASES_PER_CHUNK", per_chunk)
        chunks = list(generate_chunks(30_000, runs=700, seed=6, phase_ids=phase_ids))
        return (pd.concat([pd.DataFrame(c.phases) for c in chunks], ignore_index=True),
                pd.concat([pd.DataFrame(c.events) for c in chunks], ignore_index=True), len(chunks))

    phases, events, count = rows(synth.generate.FIRST_CHUNK_PHASES, synth.generate.PHASES_PER_CHUNK)
    blocks = synth.generate.DRAW_BLOCK_PHASES
    for first, per_chunk in ((1, 1000), (777, 4321), (2 * blocks, blocks), (len(phases), len(phases))):
        other_phases, other_events, other_count = rows(first, per_chunk)
        assert other_count != count or (first, per_chunk) == (len(phases), len(phases))
        pd.testing.assert_frame_equal(other_phases, phases)
        pd.testing.assert_frame_equal(other_events, events)
    assert len(events) == 30_000 and len(phases) > 2 * blocks  # the rows span several draw blocks


def test_a_second_seed_appends_after_the_newest_event_with_indexes_in_place(engine):
    before = schema_objects(engine)
    first = bulk_load(engine, 800, runs=2, seed=1)
    second = bulk_load(engine, 700, runs=3, seed=2)
    assert "indexes in place" in second.method
    assert schema_objects(engine) == before
    stored = read_events(engine)
    assert len(stored) == 1500 and stored["event_id"].is_monotonic_increasing
    assert stored["timestamp"].iloc[800:].min() > stored["timestamp"].iloc[:800].max()
    assert second.first_timestamp > first.last_timestamp
    assert set(stored["run_id"]) == {run_id_for(1, 0), run_id_for(1, 1)} | {run_id_for(2, r) for r in range(3)}


def test_synth_command(sqlite_url, capsys):
    assert main(["synth", "--events", "400", "--runs", "2", "--seed", "8", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["events"], document["runs"], document["first_run_id"]) == (400, 2, "synth-8-r00000")
    assert main(["synth", "--events", "400", "--runs", "2", "--seed", "8"]) == 2
    assert "another --seed" in capsys.readouterr().err
    assert main(["synth", "--events", "10", "--runs", "20"]) == 2
    assert main(["synth", "--events", "300", "--seed", "9"]) == 0
    assert "Synthesised 300 events" in capsys.readouterr().out


def test_an_empty_database_another_connection_holds_open_gets_the_incremental_load(tmp_path):
    # Leaving WAL for the one-transaction load needs the only connection; with a reader holding the
    # file open, the load must still succeed, with the indexes in place.
    path = tmp_path / "telemetry.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade_database(engine)
    reader = sqlite3.connect(path)
    try:
        reader.execute("SELECT count(*) FROM runs").fetchone()
        summary = bulk_load(engine, 500, runs=1, seed=6)
    finally:
        reader.close()
    assert "indexes in place" in summary.method
    assert count_rows(engine, "token_estimation_v2_events") == 500
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


POSTGRES_ONLY = pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)


@POSTGRES_ONLY
def test_the_loaders_connections_know_the_built_in_types_without_reading_the_catalogue(engine):
    """The loader opens its connections with the driver's built-in type table (no catalogue queries),
    and they read and write every type its columns have as the default connections do."""
    import adbc_driver_postgresql.dbapi as driver

    from autopack_pipeline.storage import adbc

    query = ("SELECT 1::integer AS i, 2::bigint AS b, 3::smallint AS s, true AS t, 1.5::double precision AS d, "
             "0.5::real AS r, TIMESTAMP '2025-01-01 00:00:01.5' AS ts, 'x'::varchar AS v, 'y'::text AS x")
    tables = []
    for builtin in (True, False):
        with adbc.connect(engine, builtin_types=builtin) as connection, connection.cursor() as cursor:
            cursor.execute(query)
            tables.append(cursor.fetch_arrow_table())
    assert tables[0].equals(tables[1]) and tables[0].num_rows == 1
    assert adbc._version(driver) >= (1, 0)  # the installed driver's version is read
    summary = bulk_load(engine, 800, runs=2, seed=1)
    assert summary.events == count_rows(engine, "token_estimation_v2_events") == 800


def key_violations(engine) -> tuple[int, int, int]:
    """Events without their phase, events without their run, phases without their tier."""
    with engine.connect() as connection:
        return tuple(connection.execute(sa.text(query)).scalar() for query in (
            ("SELECT count(*) FROM token_estimation_v2_events e LEFT JOIN phases p "
             "ON p.run_id = e.run_id AND p.phase_id = e.phase_id WHERE p.id IS NULL"),
            "SELECT count(*) FROM token_estimation_v2_events e LEFT JOIN runs r ON r.id = e.run_id WHERE r.id IS NULL",
            "SELECT count(*) FROM phases p LEFT JOIN tiers t ON t.id = p.tier_id WHERE t.id IS NULL",
        ))


def phases_with_another_runs_tier(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT count(*) FROM phases p JOIN tiers t ON t.id = p.tier_id WHERE t.run_id <> p.run_id")).scalar()


@POSTGRES_ONLY
@pytest.mark.parametrize("may_skip_key_checks", [True, False])
def test_a_postgresql_append_copies_the_events_on_a_second_connection_when_the_role_may(
        engine, monkeypatch, may_skip_key_checks):
    if not may_skip_key_checks:  # a role that may not set session_replication_role
        monkeypatch.setattr(bulk.postgresql_open, "_may_skip_key_checks", lambda scalar: False)
    monkeypatch.setattr(bulk.postgresql, "PG_PIECE_PHASES", 97)  # chunks copied in many pieces
    # Each transaction's first piece (~115 events) on the first connection, with ids drawn beforehand.
    monkeypatch.setattr(bulk.postgresql, "PG_FIRST_CONNECTION_SHARE", 0.5)
    bulk_load(engine, 800, runs=2, seed=1)
    commits = []
    real_commit = bulk.postgresql._PgStreams.commit

    def counted_commit(streams, *, last=False):
        commits.append(last)
        real_commit(streams, last=last)

    monkeypatch.setattr(bulk.postgresql._PgStreams, "commit", counted_commit)
    reserved = []
    real_reserve = bulk.postgresql._PgStreams.reserve_event_ids

    def counted_reserve(streams, count):
        reserved.append(count)
        return real_reserve(streams, count)

    monkeypatch.setattr(bulk.postgresql._PgStreams, "reserve_event_ids", counted_reserve)
    monkeypatch.setattr(bulk.postgresql, "PG_TRANSACTION_EVENTS", 250)  # several transactions, each its COPYs
    second = bulk_load(engine, 700, runs=3, seed=2)
    assert commits == [False, False, True]
    assert ("events on a second connection" in second.method) == may_skip_key_checks
    assert (len(reserved) == 2) == may_skip_key_checks  # the first two transactions' first pieces
    stored = read_events(engine).iloc[800:]
    expected = generated_frame(700, 3, 2)
    assert stored["event_id"].is_monotonic_increasing  # ids in the order generated, as one connection gives
    assert stored["run_id"].tolist() == [run_id_for(2, r) for r in expected["run"]]
    assert stored["phase_id"].tolist() == expected["phase_id"].tolist()
    assert stored["actual_output_tokens"].tolist() == expected["actual_output_tokens"].tolist()
    assert key_violations(engine) == (0, 0, 0)
    assert phases_with_another_runs_tier(engine) == 0  # tier_id joined to a piece after it was built
    with engine.connect() as connection:
        counted = connection.execute(sa.text(
            "SELECT r.max_phases, count(p.id) FROM runs r JOIN phases p ON p.run_id = r.id "
            "WHERE r.id LIKE 'synth-2-%' GROUP BY r.id, r.max_phases")).all()
    assert len(counted) == 3 and all(declared == found for declared, found in counted)
    assert sum(found for _declared, found in counted) == second.phases
    # The triggers were off for the load's transactions only: no pooled connection keeps that.
    with engine.connect() as one, engine.connect() as other:
        roles = {c.exec_driver_sql("SHOW session_replication_role").scalar() for c in (one, other)}
    assert roles == {"origin"}


@POSTGRES_ONLY
@pytest.mark.parametrize("may_skip_key_checks", [True, False])
def test_a_fresh_postgresql_load_copies_and_rebuilds_each_table_on_its_own_connection_when_the_role_may(
        engine, monkeypatch, may_skip_key_checks):
    """With the key triggers off, the first connection drops and rebuilds the phases' indexes, the second
    the events': each table's whole load on one connection, both at once. Otherwise one transaction
    drops the foreign keys too. Either way the schema, the rows and their keys end as an append's do."""
    if not may_skip_key_checks:
        monkeypatch.setattr(bulk.postgresql_open, "_may_skip_key_checks", lambda scalar: False)
    dropped = []
    real_drop = bulk.postgresql._drop_for_load

    def recorded_drop(cursor, *, drop_foreign_keys, **tables):
        dropped.append((tables.get("tables"), drop_foreign_keys))
        return real_drop(cursor, drop_foreign_keys=drop_foreign_keys, **tables)

    monkeypatch.setattr(bulk.postgresql, "_drop_for_load", recorded_drop)
    monkeypatch.setattr(bulk.postgresql, "PG_PIECE_PHASES", 97)  # many pieces, the events COPY fed by several
    before = schema_objects(engine)
    summary = bulk_load(engine, 1500, runs=3, seed=4)
    assert ("two connections at once" in summary.method) == may_skip_key_checks
    assert sorted(dropped, key=str) == (
        [(("phases",), False), (("token_estimation_v2_events",), False)] if may_skip_key_checks
        else [(None, True)])  # one call for both tables, foreign keys included
    assert schema_objects(engine) == before
    stored = read_events(engine)
    expected = generated_frame(1500, 3, 4)
    assert stored["event_id"].tolist() == list(range(1, 1501))
    assert stored["phase_id"].tolist() == expected["phase_id"].tolist()
    assert stored["actual_output_tokens"].tolist() == expected["actual_output_tokens"].tolist()
    assert count_rows(engine, "phases") == summary.phases
    assert key_violations(engine) == (0, 0, 0) and phases_with_another_runs_tier(engine) == 0
    with engine.connect() as connection:
        states = connection.execute(sa.text("SELECT DISTINCT state FROM runs")).scalars().all()
        locks = connection.exec_driver_sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").scalar()
    assert (states, locks) == ([bulk.rows.LOADED_STATE], 0)


@contextlib.contextmanager
def a_role(database_url: str, *, owns_database: bool):
    """The URL of ``database_url`` as a new role that is not a superuser, which owns the database (and so
    the tables it migrates) or was only granted the rows of the tables already there; dropped afterwards,
    what it owned handed back first."""
    from autopack_pipeline_tests.support.databases import _admin_engine

    role = f"autopack_test_role_{uuid.uuid4().hex[:8]}"
    url = sa.engine.make_url(database_url)
    admin, here = _admin_engine(), sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER')
        if owns_database:
            connection.exec_driver_sql(f'ALTER DATABASE "{url.database}" OWNER TO "{role}"')
    if not owns_database:
        with here.connect() as connection:
            for kind in ("TABLES", "SEQUENCES"):
                connection.exec_driver_sql(f'GRANT ALL ON ALL {kind} IN SCHEMA public TO "{role}"')
    try:
        yield url.set(username=role).render_as_string(hide_password=False)
    finally:
        with here.connect() as connection:
            connection.exec_driver_sql(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
            connection.exec_driver_sql(f'DROP OWNED BY "{role}"')
        here.dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP ROLE "{role}"')
        admin.dispose()


@POSTGRES_ONLY
@pytest.mark.parametrize("granted", [False, True])
def test_a_role_that_is_not_a_superuser_loads_as_its_privileges_allow(database_url, granted):
    """A role owning the database: whether it may turn the key triggers off is asked of the server (the
    setting granted or not). Without it, the fresh load is one transaction that adds the foreign keys again
    and the append keeps them checked on one connection; with it, both use two connections."""
    with a_role(database_url, owns_database=True) as role_url:
        if granted:  # PostgreSQL 15 lets a setting be granted
            with sa.create_engine(database_url, isolation_level="AUTOCOMMIT").connect() as connection:
                role = sa.engine.make_url(role_url).username
                connection.exec_driver_sql(f'GRANT SET ON PARAMETER session_replication_role TO "{role}"')
        _load_fresh_then_append(role_url, two_connections=granted, rebuilt=True, keys_added_again=not granted)


@POSTGRES_ONLY
def test_a_role_granted_only_the_rows_loads_an_empty_database_with_the_indexes_in_place(engine, database_url, capsys):
    """A role that does not own the tables may not drop their indexes: the empty database is loaded as an
    append is. A table it may not write is a one-line database error, exit 1, and nothing is left."""
    with a_role(database_url, owns_database=False) as role_url:
        _load_fresh_then_append(role_url, two_connections=False, rebuilt=False, keys_added_again=False)
        with sa.create_engine(database_url, isolation_level="AUTOCOMMIT").connect() as connection:
            connection.exec_driver_sql(f'REVOKE INSERT ON phases FROM "{sa.engine.make_url(role_url).username}"')
        code = main(["--database-url", role_url, "synth", "--events", "300", "--runs", "1", "--seed", "3"])
        assert code == 1
        assert capsys.readouterr().err.strip() == "autopack-telemetry: database error: permission denied for table phases"
        assert count_rows(engine, "runs") == 4 and count_rows(engine, "token_estimation_v2_events") == 1000


def _load_fresh_then_append(url: str, *, two_connections: bool, rebuilt: bool, keys_added_again: bool) -> None:
    """Seed 1 into the empty database at ``url``, then seed 2, each loaded as the method says; the schema,
    the rows and their keys as they should be."""
    engine = make_engine(url)
    try:
        upgrade_database(engine)
        before = schema_objects(engine)
        fresh = bulk_load(engine, 600, runs=2, seed=1)
        append = bulk_load(engine, 400, runs=2, seed=2)
        assert ("two connections at once" in fresh.method) == two_connections
        assert ("rebuilt after the rows" in fresh.method) == rebuilt
        assert ("foreign keys added again" in fresh.method) == keys_added_again
        assert ("events on a second connection" in append.method) == two_connections
        assert schema_objects(engine) == before
        assert count_rows(engine, "token_estimation_v2_events") == 1000
        assert key_violations(engine) == (0, 0, 0)
    finally:
        engine.dispose()


@POSTGRES_ONLY
def test_a_postgresql_append_that_fails_after_committing_batches_removes_its_runs(engine, monkeypatch):
    bulk_load(engine, 300, runs=1, seed=1)
    # Small chunks and batches, so that several batches are committed before the failure.
    small_chunks(monkeypatch)
    monkeypatch.setattr(bulk.postgresql, "PG_TRANSACTION_EVENTS", 100)
    copies = []
    real_ingest = bulk.postgresql._ingest

    def copy_then_fail(cursor, table, rows):
        copies.append(table)
        if len(copies) > 6:  # runs, tiers, then two batches of phases and events committed
            raise RuntimeError("connection lost")
        real_ingest(cursor, table, rows)

    monkeypatch.setattr(bulk.postgresql, "_ingest", copy_then_fail)
    with pytest.raises(RuntimeError, match="connection lost"):
        bulk_load(engine, 1000, runs=2, seed=2)
    assert count_rows(engine, "runs") == 1 and count_rows(engine, "tiers") == 1
    assert count_rows(engine, "token_estimation_v2_events") == 300
    with engine.connect() as connection:
        phases = connection.execute(sa.text("SELECT count(*) FROM phases WHERE run_id LIKE 'synth-2-%'")).scalar()
    assert phases == 0
    monkeypatch.setattr(bulk.postgresql, "_ingest", real_ingest)
    assert bulk_load(engine, 1000, runs=2, seed=2).events == 1000  # the seed is free again


@POSTGRES_ONLY
def test_a_fresh_postgresql_load_that_fails_midway_leaves_nothing(engine, monkeypatch):
    _fresh_load_failing_midway_leaves_nothing(engine, monkeypatch, bulk.postgresql._PostgresqlLoader)


@POSTGRES_ONLY
def test_a_postgresql_append_whose_events_copy_fails_while_the_phases_go_on_leaves_nothing(engine, monkeypatch):
    """The events connection copies a transaction's events as one stream, fed piece by piece in a worker
    thread: a failure in the middle of it reaches the load, which rolls both connections back (nothing
    was committed yet), and stops handing it pieces."""
    bulk_load(engine, 300, runs=1, seed=1)
    monkeypatch.setattr(bulk.postgresql, "PG_PIECE_PHASES", 50)  # many pieces
    real_ingest = bulk.postgresql._ingest
    phases = []
    first_connection_events = []

    def fail_after_two_event_pieces(cursor, table, rows):
        if table != "token_estimation_v2_events":
            phases.append(len(rows))
            return real_ingest(cursor, table, rows)
        if isinstance(rows, pa.Table):  # the transaction's first pieces, on the first connection
            first_connection_events.append(len(rows))
            return real_ingest(cursor, table, rows)
        assert isinstance(rows, pa.RecordBatchReader)  # one COPY for the rest of the transaction's pieces
        rows.read_next_batch()
        rows.read_next_batch()
        raise RuntimeError("events copy failed")

    monkeypatch.setattr(bulk.postgresql, "_ingest", fail_after_two_event_pieces)
    with pytest.raises(RuntimeError, match="events copy failed"):
        bulk_load(engine, 2000, runs=3, seed=2)
    # Noticed when the queue was full again, not after all ~34 pieces' phases: runs and tiers, the pieces
    # copied whole on the first connection, then the phases of the two pieces read, of those in the
    # queue and of the one being handed over.
    assert 0 < sum(first_connection_events) < 0.2 * 2000
    assert len(phases) <= 2 + len(first_connection_events) + 2 + bulk.postgresql.PG_EVENTS_AHEAD + 1
    assert [count_rows(engine, t) for t in ("runs", "tiers", "token_estimation_v2_events")] == [1, 1, 300]
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM phases WHERE run_id LIKE 'synth-2-%'")).scalar() == 0
    monkeypatch.setattr(bulk.postgresql, "_ingest", real_ingest)
    assert bulk_load(engine, 2000, runs=3, seed=2).events == 2000
    assert key_violations(engine) == (0, 0, 0) and phases_with_another_runs_tier(engine) == 0
