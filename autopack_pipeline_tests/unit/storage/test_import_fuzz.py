"""Fuzzed import: whatever the lines, the importer never crashes and never half-imports a line.

Every non-blank line must end up imported once (or recognised as already imported) or quarantined
verbatim, and the database must hold exactly the accepted events and the run/phase rows they need.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.transfer import LineRejected, import_file, parse_line
from autopack_pipeline_tests.support.databases import PG_ADMIN_URL, _admin_engine, fetch_all

DELETE = object()
KEYS = ["run_id", "phase_id", "timestamp", "category", "complexity", "deliverable_count", "deliverables",
        "predicted_output_tokens", "actual_output_tokens", "selected_budget", "success", "truncated",
        "stop_reason", "model", "smape_percent", "waste_ratio", "underestimated", "event_uid", "attempt",
        "actual_max_tokens", "is_truncated_output", "created_at"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
valid_records = st.fixed_dictionaries(
    {
        "run_id": st.sampled_from(["run-1", "run-2"]),
        "phase_id": st.sampled_from(["p1", "p2", "p3"]),
        "category": st.sampled_from(["implementation", "tests", "testing", "documentation", "docs"]),
        "complexity": st.sampled_from(["low", "medium", "high_complexity", "maintenance"]),
        "predicted_output_tokens": st.integers(0, 30_000),
        "actual_output_tokens": st.integers(0, 30_000),
        "success": st.booleans(),
    },
    optional={
        "timestamp": st.datetimes().map(lambda moment: moment.isoformat()),
        "deliverables": st.lists(st.text(max_size=30), max_size=25),
        "truncated": st.booleans(),
        "model": st.just("claude-sonnet-4-5"),
        "event_uid": st.text(min_size=1, max_size=70),
        "attempt": st.integers(-2, 5),
    },
)
mutations = st.lists(st.tuples(st.sampled_from([*KEYS, "unexpected"]), st.just(DELETE) | json_values), max_size=3)


def mutate(record: dict, changes: list) -> dict:
    record = dict(record)
    for key, value in changes:
        if value is DELETE:
            record.pop(key, None)
        else:
            record[key] = value
    return record


single_line = st.one_of(
    valid_records.map(json.dumps),
    st.tuples(valid_records, mutations).map(lambda pair: json.dumps(mutate(*pair))),
    json_values.map(json.dumps),
    st.text(max_size=40),
).map(lambda text: text.encode("utf-8", errors="surrogatepass")) | st.binary(max_size=40)
lines_strategy = st.lists(single_line.map(lambda b: b.replace(b"\n", b" ").replace(b"\r", b" ")), max_size=12)


@pytest.fixture
def fresh_database(engine: Engine, backend: str, tmp_path: Path) -> Iterator[Callable]:
    """Factory of empty migrated databases, copied from the fixture's (fast enough for many examples)."""
    engine.dispose()  # PostgreSQL copies a template only while nobody is connected to it
    made: list[str] = []

    @contextmanager
    def make() -> Iterator[Engine]:
        if backend == "sqlite":
            copy = tmp_path / f"copy-{uuid.uuid4().hex[:8]}.db"
            shutil.copyfile(engine.url.database, copy)
            url = f"sqlite:///{copy}"
        else:
            name = f"autopack_test_{uuid.uuid4().hex[:12]}_f"
            admin = _admin_engine()
            with admin.connect() as connection:
                connection.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{engine.url.database}"')
            admin.dispose()
            made.append(name)
            url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        fresh = make_engine(url)
        try:
            yield fresh
        finally:
            fresh.dispose()

    yield make
    if made:
        admin = _admin_engine()
        with admin.connect() as connection:
            for name in made:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def check_import(engine: Engine, lines: list[bytes], source: Path) -> None:
    source.write_bytes(b"".join(line + b"\n" for line in lines))
    report = import_file(engine, source, source.with_suffix(".rejected"))
    # A UTF-8 byte order mark opening the file is not part of its first line (import accepts it).
    read = [line.removeprefix(b"\xef\xbb\xbf") if number == 1 else line for number, line in enumerate(lines, start=1)]
    numbered = [(number, line) for number, line in enumerate(read, start=1) if line.strip()]
    assert report.lines == len(numbered) and report.aborted is None
    rejected = {item["line"]: item["reason"] for item in report.rejections}
    assert len(rejected) == report.rejected
    accepted = [(number, line) for number, line in numbered if number not in rejected]
    assert report.imported + report.duplicates == len(accepted)

    expected_rows = {}
    for number, line in numbered:
        if number in rejected:
            with pytest.raises(LineRejected):  # rejected for what the line says, not for a crash
                parse_line(line)
        else:
            row = parse_line(line)
            expected_rows.setdefault(row["event_uid"], row)
    stored = fetch_all(engine, "token_estimation_v2_events", "event_id")
    assert len(stored) == report.imported == len(expected_rows)
    assert {row["event_uid"] for row in stored} == set(expected_rows)
    # Nothing of a rejected line got in: run and phase rows exist exactly for the accepted events.
    phases = {(row["run_id"], row["phase_id"]) for row in fetch_all(engine, "phases", "id")}
    assert phases == {(row["run_id"], row["phase_id"]) for row in expected_rows.values()}
    assert {row["id"] for row in fetch_all(engine, "runs", "id")} == {run for run, _phase in phases}

    if report.rejected:
        quarantined = [json.loads(q) for q in Path(report.quarantine_file).read_text().splitlines()]
        assert [q["line"] for q in quarantined] == sorted(rejected)
        assert all(q["raw"].encode("utf-8", errors="surrogateescape") == lines[q["line"] - 1] for q in quarantined)

    again = import_file(engine, source, source.with_suffix(".rejected"))
    assert (again.imported, again.duplicates, again.rejected) == (0, len(accepted), report.rejected)


def run_fuzz(fresh_database: Callable, tmp_path: Path, lines: list[bytes]) -> None:
    with fresh_database() as engine:
        check_import(engine, lines, tmp_path / f"in-{uuid.uuid4().hex[:8]}.ndjson")


# Found by the fuzzer: a line whose event_uid is stored already names a phase nothing else has.
_DUPLICATE_IN_A_NEW_PHASE = [
    b'{"run_id": "run-1", "phase_id": "p1", "category": "implementation", "complexity": "low", '
    b'"predicted_output_tokens": 0, "actual_output_tokens": 0, "success": false, "event_uid": "0"}',
    b'{"run_id": "run-1", "phase_id": "p2", "category": "implementation", "complexity": "low", '
    b'"predicted_output_tokens": 0, "actual_output_tokens": 0, "success": false, "event_uid": "0"}',
]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=lines_strategy)
@example(lines=_DUPLICATE_IN_A_NEW_PHASE)
def test_fuzzed_import_never_crashes_or_half_imports(fresh_database, tmp_path: Path, lines: list[bytes]) -> None:
    run_fuzz(fresh_database, tmp_path, lines)


@pytest.mark.parametrize("database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=lines_strategy)
def test_fuzzed_import_on_postgresql(fresh_database, tmp_path: Path, lines: list[bytes]) -> None:
    run_fuzz(fresh_database, tmp_path, lines)
