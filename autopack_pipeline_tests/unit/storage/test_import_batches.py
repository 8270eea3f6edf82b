"""The NDJSON import writes each batch of lines in a few statements (``storage.phase_rows``,
``events.insert_estimation_rows``): the runs, tiers and phases an event needs numbered as one at a time
would number them, duplicates within a batch and of stored events counted, and the same rows whether the
lines come in one batch or one by one."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta

from autopack_pipeline.storage import transfer
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import ensure_run_and_phase, record_estimation_event
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline_tests.support.databases import fetch_all

EVENTS = "token_estimation_v2_events"
START = datetime(2025, 11, 3, 9, 0)


def _record(n: int, run_id: str, phase_id: str, **extra) -> dict:
    record = {"run_id": run_id, "phase_id": phase_id, "category": ["tests", "docs", "implementation"][n % 3],
              "complexity": ["low", "medium", "high"][n % 3], "predicted_output_tokens": 1000 + n,
              "actual_output_tokens": 900 + 7 * n, "success": n % 4 != 0, "truncated": n % 5 == 0,
              "timestamp": (START + timedelta(minutes=n)).isoformat(), "event_uid": f"uid-{n}",
              "created_at": (START + timedelta(minutes=n, seconds=3)).isoformat()}
    if n % 2:  # half the lines carry their own metrics: two sets of columns in one batch
        record |= {"smape_percent": 12.5, "waste_ratio": 1.25, "underestimated": False}
    return record | extra


def _file(records: list[dict]) -> io.BytesIO:
    return io.BytesIO(b"".join(json.dumps(record).encode() + b"\n" for record in records))


def _records() -> list[dict]:
    """Events of a run already stored (a new phase of it, an event of a stored phase), of two new runs,
    one line twice, an event_uid again with a phase of its own (a duplicate: it creates no phase), and the
    event stored before the import."""
    records = [_record(0, "run-old", "p-b"), _record(1, "run-old", "p-c"), _record(2, "run-new", "p-1"),
               _record(3, "run-new", "p-2"), _record(4, "run-new", "p-1"), _record(5, "run-two", "p-x")]
    return [*records, records[3], _record(3, "run-two", "p-z"), _record(6, "run-old", "p-b", event_uid="stored-uid"),
            _record(7, "run-two", "p-y")]


def _stored(engine, make_event) -> None:
    ensure_run_and_phase(engine, "run-old", "p-a")
    ensure_run_and_phase(engine, "run-old", "p-b")
    assert record_estimation_event(engine, make_event(run_id="run-old", phase_id="p-b", event_uid="stored-uid"),
                                   respect_flag=False)


def _phases(engine) -> list[tuple]:
    tiers = {row["id"]: (row["run_id"], row["tier_id"], row["tier_index"]) for row in fetch_all(engine, "tiers", "id")}
    return [(row["run_id"], row["phase_id"], row["phase_index"], tiers[row["tier_id"]], row["name"], row["state"],
             row["task_category"], row["complexity"]) for row in fetch_all(engine, "phases", "id")]


def _events(engine) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "event_id"} for row in fetch_all(engine, EVENTS, "event_id")]


def test_a_batch_numbers_new_tiers_and_phases_after_the_stored_ones(engine, make_event, tmp_path):
    _stored(engine, make_event)
    report = transfer.import_events(engine, _file(_records()), tmp_path / "rejected.ndjson")
    assert (report.lines, report.imported, report.duplicates, report.rejected) == (10, 7, 3, 0)
    assert _phases(engine) == [
        ("run-old", "p-a", 0, ("run-old", "T1", 0), "p-a", "QUEUED", None, None),
        ("run-old", "p-b", 1, ("run-old", "T1", 0), "p-b", "QUEUED", None, None),
        ("run-old", "p-c", 2, ("run-old", "T1", 0), "p-c", "QUEUED", "docs", "medium"),
        ("run-new", "p-1", 0, ("run-new", "T1", 0), "p-1", "QUEUED", "implementation", "high"),
        ("run-new", "p-2", 1, ("run-new", "T1", 0), "p-2", "QUEUED", "tests", "low"),
        ("run-two", "p-x", 0, ("run-two", "T1", 0), "p-x", "QUEUED", "implementation", "high"),
        ("run-two", "p-y", 1, ("run-two", "T1", 0), "p-y", "QUEUED", "docs", "medium"),
    ]
    assert [row["state"] for row in fetch_all(engine, "runs", "id")] == ["RUN_CREATED"] * 3
    assert [row["event_uid"] for row in fetch_all(engine, EVENTS, "event_id")] == [
        "stored-uid", "uid-0", "uid-1", "uid-2", "uid-3", "uid-4", "uid-5", "uid-7"]
    again = transfer.import_events(engine, _file(_records()), tmp_path / "rejected.ndjson")
    assert (again.imported, again.duplicates) == (0, 10)


def test_one_batch_and_line_by_line_store_the_same_rows(engine, make_event, tmp_path):
    single = make_engine(f"sqlite:///{tmp_path / 'line-by-line.db'}")
    try:
        upgrade_database(single)
        for target, batch_size in ((engine, 500), (single, 1)):
            _stored(target, make_event)
            report = transfer.import_events(target, _file(_records()), tmp_path / "rejected.ndjson",
                                            batch_size=batch_size)
            assert (report.imported, report.duplicates) == (7, 3)
        assert _phases(engine) == _phases(single)
        batched, one_by_one = _events(engine), _events(single)
        assert len(batched) == 8
        for row in (*batched, *one_by_one):  # the stored event's times: when it was recorded
            if row["event_uid"] == "stored-uid":
                del row["created_at"], row["timestamp"]
        assert batched == one_by_one
    finally:
        single.dispose()
