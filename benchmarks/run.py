"""Every figure of issues 8 and 17, measured in one run on this machine, each printed with its bound and a ratio.

    .venv/bin/python benchmarks/run.py [--data-dir /tmp/autopack-bench] [--json-out FILE]

Each measurement runs in its own child process, so its wall time, CPU time and peak memory (the
child's own ``ru_maxrss``, from ``os.wait4``) are its alone. Data lives under ``--data-dir`` (never in
the repository): synthetic SQLite histories of 1M, 3M and 10M events are built there on the first run
(``autopack-telemetry synth``'s loader, about 6 minutes for 10M here) and reused afterwards; every run
appends 100k events per history for the incremental figures. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # for autopack_pipeline_tests.support.messages_server

PG_ADMIN_URL = os.environ.get("AUTOPACK_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
HISTORY_SIZES = (1_000_000, 3_000_000, 10_000_000)
NEW_EVENTS = 100_000


def size_name(events: int) -> str:
    return f"{events // 1_000_000}m" if events % 1_000_000 == 0 else f"{events // 1000}k"

# The bounds of issue 17 (Autopack-shaped data, this 2-core machine).
SYNTH_FLOOR_SHARE = 0.9  # synth into SQLite: at least this share of SQLite's own INSERT ... SELECT floor
SYNTH_PG_PER_S = 50_000
ANALYSIS_S = 5.0  # the full analysis of 10M events in a fresh process, after the extraction
ANALYSIS_MB = 1536
COLD_EXTRACTION_S = 30.0
REFRESH_S = 1.0
CALIBRATE_SPEEDUP = 25.0  # calibrate at 1M against Autopack's per-row ORM way: at least this much faster
CALIBRATE_MEMORY_SHARE = 1 / 8  # ... and at most this share of its memory
DAGSTER_ANALYSIS_S = 8.0
RECORD_MS = 5.0
COLLECTION_S = 2.5
# The two shapes of history: Autopack's (every run its own phase ids, ~34 events per run) and the
# older synthetic one (phase ids reused by every run of 2,000 events).
SHAPES = ("per-run", "reused")


def history_file(data: Path, name: str, shape: str) -> Path:
    return data / (f"events-autopack-{name}.db" if shape == "per-run" else f"events-reused-{name}.db")


# -- children -----------------------------------------------------------------------------------------


def child_synth(db: str, events: int, seed: int, phase_ids: str = "per-run") -> dict:
    from autopack_pipeline.storage.database import make_engine
    from autopack_pipeline.storage.migrate import upgrade_database
    from autopack_pipeline.synth import bulk_load

    engine = make_engine(db)
    upgrade_database(engine)
    cpu = time.process_time()
    summary = bulk_load(engine, events, seed=seed, phase_ids=phase_ids).as_dict()
    # CPU seconds of this process (all its threads) during the load: on SQLite, the database's work too.
    return {**summary, "cpu_s": time.process_time() - cpu}


def child_pg_floor(source: str, target: str, seed: int) -> dict:
    """PostgreSQL's own cost of an append the loader made, with no Python per row: ``seed``'s runs, tiers,
    phases and events read from ``source`` (where the loader appended them) by binary COPY, then copied
    into ``target`` (the same database before that append) as the loader does it: one transaction per
    connection, the events on one from the start but for their first share (``PG_FIRST_CONNECTION_SHARE``),
    which the other copies with the runs, tiers and phases meanwhile, foreign-key triggers off, indexes
    in place. Only the copy into ``target`` is timed."""
    import threading

    import psycopg

    from autopack_pipeline.storage.bulk.postgresql import PG_FIRST_CONNECTION_SHARE

    def url(u: str) -> str:
        return u.replace("postgresql+psycopg://", "postgresql://")

    prefix = f"synth-{seed}-%"
    events_table = "token_estimation_v2_events"
    data = {}
    with psycopg.connect(url(source)) as connection, connection.cursor() as cursor:
        events = cursor.execute(f"SELECT count(*) FROM {events_table} WHERE run_id LIKE '{prefix}'").fetchone()[0]
        cut = cursor.execute(f"SELECT event_id FROM {events_table} WHERE run_id LIKE '{prefix}' ORDER BY event_id "
                             f"OFFSET {int(events * PG_FIRST_CONNECTION_SHARE)} LIMIT 1").fetchone()[0]
        queries = {"runs": f"runs WHERE id LIKE '{prefix}'", "tiers": f"tiers WHERE run_id LIKE '{prefix}'",
                   "phases": f"phases WHERE run_id LIKE '{prefix}'",
                   "first events": f"{events_table} WHERE run_id LIKE '{prefix}' AND event_id < {cut}",
                   "events": f"{events_table} WHERE run_id LIKE '{prefix}' AND event_id >= {cut}"}
        for name, query in queries.items():
            with cursor.copy(f"COPY (SELECT * FROM {query}) TO STDOUT (FORMAT binary)") as copy:
                data[name] = b"".join(bytes(block) for block in copy)
    first, second = psycopg.connect(url(target)), psycopg.connect(url(target))
    try:
        for connection in (first, second):
            connection.execute("SET synchronous_commit = off")
            connection.execute("SET session_replication_role = replica")
        cpu = time.process_time()
        began = time.perf_counter()

        def copy(connection, name: str) -> None:
            table = events_table if name.endswith("events") else name
            with connection.cursor() as cursor, cursor.copy(f"COPY {table} FROM STDIN (FORMAT binary)") as c:
                c.write(data[name])

        worker = threading.Thread(target=copy, args=(second, "events"))
        worker.start()
        for name in ("runs", "tiers", "phases", "first events"):
            copy(first, name)
        worker.join()
        first.commit()
        second.commit()
        seconds = time.perf_counter() - began
        return {"events": events, "seconds": seconds, "events_per_second": events / seconds,
                "cpu_s": time.process_time() - cpu}
    finally:
        first.close()
        second.close()


def child_sqlite_floor(source: str, target: str, stage: str, events: int, phases: int) -> dict:
    """SQLite's own cost of storing rows the loader wrote, with no Python per row: a lower bound for any loader.

    ``stage="empty"`` copies the first ``events`` events and ``phases`` phases of ``source`` (with their
    runs and tiers) into a new database at ``target`` the way the loader fills an empty one: rollback
    journal, secondary indexes dropped, ``INSERT ... SELECT``, indexes rebuilt, one commit.
    ``stage="append"`` copies the rest of ``source`` (the rows of the loader's append) into ``target``, a
    byte copy of the database the loader appended to, taken before that append, with every index in
    place, in WAL mode, as the loader appends. Same rows, schema and pragmas as the loader; only the row
    building and binding in Python are gone.
    """
    import sqlite3

    from autopack_pipeline.storage.bulk import SQLITE_INDEX_SORT_KIB, SQLITE_LOAD_PRAGMAS
    from autopack_pipeline.storage.database import make_engine
    from autopack_pipeline.storage.migrate import upgrade_database

    loaded = ("phases", "token_estimation_v2_events")
    if stage == "empty":
        engine = make_engine(f"sqlite:///{target}")
        upgrade_database(engine)
        engine.dispose()
    connection = sqlite3.connect(target, isolation_level=None)
    if stage == "empty":
        connection.execute("PRAGMA journal_mode=DELETE")
    for pragma in SQLITE_LOAD_PRAGMAS:
        connection.execute(pragma)
    connection.execute("ATTACH ? AS src", (source,))
    first = stage == "empty"
    keep = "<=" if first else ">"
    began = time.perf_counter()
    cpu = time.process_time()
    connection.execute("BEGIN")
    connection.execute("INSERT INTO runs SELECT * FROM src.runs WHERE id NOT IN (SELECT id FROM runs)")
    connection.execute("INSERT INTO tiers SELECT * FROM src.tiers WHERE id NOT IN (SELECT id FROM tiers)")
    indexes = []
    if first:
        indexes = connection.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
            f"AND tbl_name IN {loaded}").fetchall()
        for name, _sql in indexes:
            connection.execute(f'DROP INDEX "{name}"')
    connection.execute(f"INSERT INTO phases SELECT * FROM src.phases WHERE id {keep} ?", (phases,))
    connection.execute(f"INSERT INTO token_estimation_v2_events SELECT * FROM src.token_estimation_v2_events "
                       f"WHERE event_id {keep} ?", (events,))
    rows = time.perf_counter()
    if indexes:
        connection.execute(f"PRAGMA cache_size=-{SQLITE_INDEX_SORT_KIB}")
    for _name, sql in indexes:
        connection.execute(sql)
    built = time.perf_counter()
    connection.execute("COMMIT")
    done = time.perf_counter()
    cpu = time.process_time() - cpu
    copied = connection.execute("SELECT count(*) FROM token_estimation_v2_events WHERE event_id "
                                f"{keep} ?", (events,)).fetchone()[0]
    connection.execute("PRAGMA journal_mode=WAL")  # the loader leaves the file in WAL mode too
    connection.close()
    return {"events": copied, "rows_s": rows - began, "indexes_s": built - rows, "commit_s": done - built,
            "seconds": done - began, "events_per_second": copied / (done - began), "indexes": len(indexes),
            "cpu_s": cpu}


def child_extract(db: str, store: str, full: bool) -> dict:
    import resource

    from autopack_pipeline.storage.columnar import ColumnarStore
    from autopack_pipeline.storage.database import make_engine

    result = ColumnarStore(store).refresh(make_engine(db), full=full).as_dict()
    # A cold extraction reads through reading child processes (storage/columnar/sqlite_children.py) that
    # run beside this one: wait4 reports only the largest process' peak, so the figure adds theirs.
    result["children_maxrss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


def child_analyse(store: str) -> dict:
    began = time.perf_counter()
    from autopack_pipeline.cli.common import collector_paused
    from autopack_pipeline.services.analysis import WindowedEvents
    from autopack_pipeline.services.pipeline import analyse_events
    from autopack_pipeline.settings import load_settings
    from autopack_pipeline.storage.columnar import ColumnarStore

    imported = time.perf_counter()
    with collector_paused():
        arrays = ColumnarStore(store).event_arrays()
        loaded = time.perf_counter()
        # The product's one chain (services.pipeline) over every event, with no database: predictions as
        # recorded (no re-prediction), the gate forced open, no report written.
        analysis = analyse_events(load_settings(), WindowedEvents(arrays, None), arrays, force=True, write_reports=False)
        done = time.perf_counter()
    tier1 = analysis.metrics.tier1
    gate = analysis.calibration.gate
    # The gate's line names every group whose breach is certain; the note only counts them.
    breaches = gate.observed.get("group_breaches") or []
    gate_line = gate.summary().split("; Tier 1 certainly breached")[0] + (
        f"; Tier 1 certainly breached in {len(breaches)} groups" if breaches else "")
    return {
        "import_s": imported - began, "load_s": loaded - imported, "analyse_s": done - loaded,
        "load_and_analyse_s": done - imported, "steps": {**analysis.timings, "total": done - loaded},
        "events": tier1["total_samples"], "clean_samples": analysis.samples.count,
        "gate": gate_line,
        "groups": {name: len(result.groups) for name, result in (analysis.calibration.results or {}).items()},
        "underestimation_rate_pct": tier1["underestimation_rate_pct"],
    }


def child_drift(store: str) -> dict:
    """The drift checks' statistics over every event of the copy, as the daily drift schedule computes
    them, with the recent window the history's last 7 days (the histories are dated in the past, so by
    the clock's window no group would have a recent event and nothing would be compared)."""
    from datetime import timedelta

    began = time.perf_counter()
    from autopack_pipeline.services.pipeline import drift_report
    from autopack_pipeline.settings import load_settings
    from autopack_pipeline.storage.columnar import ColumnarStore

    arrays = ColumnarStore(store).event_arrays()
    loaded = time.perf_counter()
    newest = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=int(arrays.timestamp_us.values.max()))
    report = drift_report(arrays, load_settings(), now=newest)
    return {"import_and_load_s": loaded - began, "drift_s": time.perf_counter() - loaded,
            "groups": len(report.groups), "drifted": len(report.drifted()),
            "recent": sum(g.n_recent for g in report.groups), "considered": report.events_considered}


def child_cli(db: str, store: str, args: list[str]) -> dict:
    """One ``autopack-telemetry`` command, as a user runs it (its output kept out of the result line)."""
    import contextlib
    import io
    import resource

    os.environ["DATABASE_URL"] = db
    os.environ["AUTOPACK_COLUMNAR_DIR"] = store
    # Every event, as the per-row ORM way reads them: the default 28-day window ends on the newest day,
    # which after a run has appended its 100k events (dated later) holds only those.
    os.environ["AUTOPACK_METRICS_WINDOW_DAYS"] = "0"
    from autopack_pipeline.cli import main

    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main(args)
    # The peak of the largest process this command started and waited for, if any: the parent's wait4
    # reports only the larger of the two peaks, and a helper process runs beside the command, so the memory
    # figure adds it. (A child's peak includes this process' size when it was started.)
    own_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"exit": code, "seconds": time.perf_counter() - began, "output_chars": len(out.getvalue()),
            "own_maxrss_mb": own_mb, "children_maxrss_mb": children_mb}


def child_orm_calibrate(db: str, out: str) -> dict:
    """Autopack's ``calibrate_token_estimator.py`` (autopack_spec.md section 4), the per-row ORM way: every
    clean event as an ORM object, grouped by (category, complexity) in Python, the medians, confidence
    and budget waste over Python lists, and the markdown and JSON reports."""
    import statistics
    from collections import defaultdict

    from sqlalchemy.orm import Session

    from autopack_pipeline.storage.database import make_engine
    from autopack_pipeline.storage.models import TokenEstimationV2Event as Event

    began = time.perf_counter()
    groups: dict[tuple[str, str], list] = defaultdict(list)
    with Session(make_engine(db)) as session:
        query = session.query(Event).filter(
            Event.success.is_(True), Event.truncated.is_(False), Event.predicted_output_tokens.isnot(None),
            Event.actual_output_tokens.isnot(None))
        for event in query:
            if not event.phase_id or not event.run_id:
                continue
            sample = {"phase_id": event.phase_id, "run_id": event.run_id, "category": event.category or "unknown",
                      "complexity": event.complexity or "unknown", "deliverable_count": event.deliverable_count,
                      "estimated": event.predicted_output_tokens, "actual": event.actual_output_tokens,
                      "selected_budget": event.selected_budget, "actual_max_tokens": event.actual_max_tokens,
                      "success": event.success, "truncated": event.truncated, "timestamp": event.timestamp}
            groups[(sample["category"], sample["complexity"])].append(sample)
    results = []
    for (category, complexity), samples in groups.items():
        n = len(samples)
        if n < 5:
            continue
        ratios = [s["actual"] / s["estimated"] if s["estimated"] else 0.0 for s in samples]
        waste = sorted((s["actual_max_tokens"] or s["selected_budget"] or 0) / s["actual"] if s["actual"] else 0.0
                       for s in samples)
        confidence = 0.6 * min(1.0, n / 12) + 0.4 / (1 + statistics.pstdev(ratios))
        results.append({"category": category, "complexity": complexity, "sample_count": n,
                        "avg_actual": statistics.fmean(s["actual"] for s in samples),
                        "avg_estimated": statistics.fmean(s["estimated"] for s in samples),
                        "median_ratio": sorted(ratios)[n // 2], "confidence": confidence,
                        "median_budget_waste": waste[n // 2], "p90_budget_waste": waste[min(int(0.9 * n), n - 1)]})
    results.sort(key=lambda r: (-r["sample_count"], r["category"], r["complexity"]))
    lines = ["# Token Estimator Calibration Report", "", "| Category | Complexity | Samples | Median Ratio | Confidence |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['category']} | {r['complexity']} | {r['sample_count']} | {r['median_ratio']:.3f} | "
              f"{r['confidence']:.3f} |" for r in results]
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "orm_calibration.md").write_text("\n".join(lines))
    (Path(out) / "orm_calibration.json").write_text(json.dumps(
        {"proposed_changes": [r for r in results if r["confidence"] >= 0.7]}, default=str))
    return {"seconds": time.perf_counter() - began, "samples": sum(r["sample_count"] for r in results),
            "groups": len(results)}


def child_record(db: str, calls: int) -> dict:
    import statistics

    from autopack_pipeline.storage.database import make_engine
    from autopack_pipeline.storage.events import EstimationEvent, ensure_run_and_phase, record_estimation_event
    from autopack_pipeline.storage.migrate import upgrade_database

    engine = make_engine(db)
    upgrade_database(engine)
    run_id = f"bench-record-{os.getpid()}-{time.time_ns()}"
    ensure_run_and_phase(engine, run_id, "phase-1", category="implementation", complexity="low")
    times = []
    for i in range(calls + 20):
        event = EstimationEvent(run_id=run_id, phase_id="phase-1", category="implementation", complexity="low",
                                deliverables=["src/a.py"], predicted_output_tokens=1200, actual_output_tokens=900 + i,
                                selected_budget=8192, actual_max_tokens=8192, success=True, model="claude-sonnet-4-5",
                                attempt=1 + i)
        began = time.perf_counter()
        stored = record_estimation_event(engine, event, respect_flag=False)
        elapsed = time.perf_counter() - began
        if not stored:
            raise RuntimeError("record_estimation_event did not store the event")
        if i >= 20:  # the first calls open connections and warm caches
            times.append(elapsed * 1000)
    # Take the events out again: dated now, they would become the newest day of the history, and the
    # analysis window (the 28 days up to the newest event) of every later Dagster figure on this
    # history would hold these 320 events instead of the synthetic months.
    import sqlalchemy as sa

    with engine.begin() as connection:
        for table, column in (("token_estimation_v2_events", "run_id"), ("phases", "run_id"), ("tiers", "run_id"),
                              ("runs", "id")):
            connection.execute(sa.text(f"DELETE FROM {table} WHERE {column} = :run"), {"run": run_id})
    times.sort()
    return {"calls": calls, "median_ms": statistics.median(times), "p90_ms": times[int(0.9 * len(times))],
            "max_ms": times[-1]}


def child_collection(db: str, latency: float, concurrency: int) -> dict:
    from autopack_pipeline.collection.phases import load_phase_file
    from autopack_pipeline.collection.run import run_collection
    from autopack_pipeline.domain.coefficients import load_coefficients
    from autopack_pipeline.domain.estimator import TokenEstimator
    from autopack_pipeline.llm.anthropic_backend import AnthropicBackend
    from autopack_pipeline.llm.builder import Builder
    from autopack_pipeline.llm.prompt import render_files
    from autopack_pipeline.settings import REPO_ROOT
    from autopack_pipeline.storage.database import make_engine
    from autopack_pipeline.storage.migrate import upgrade_database
    from autopack_pipeline_tests.support.messages_server import Answer, MessagesServer, Slow

    run, phases = load_phase_file(REPO_ROOT / "seeds" / "telemetry_collection_phases.yaml")
    phases = phases[:10]
    text = render_files({path: f"# {path}\nprint('ok')\n" for phase in phases for path in phase.deliverables})
    server = MessagesServer().start()
    server.answer_all_with(lambda body: Slow(latency, Answer(text)))
    try:
        engine = make_engine(db)
        upgrade_database(engine)
        builder = Builder(TokenEstimator(load_coefficients(REPO_ROOT / "seeds" / "estimator_coefficients.yaml")),
                          AnthropicBackend("bench-key", base_url=server.url, max_retries=0), "claude-sonnet-4-5")
        run = run.model_copy(update={"run_id": f"bench-collection-{time.time_ns()}"})
        began = time.perf_counter()
        summary = run_collection(engine, run, phases, builder, concurrency=concurrency)
        seconds = time.perf_counter() - began
    finally:
        server.stop()
    return {"seconds": seconds, "phases": summary.phases_total, "completed": summary.phases_completed,
            "events_written": summary.events_written, "requests": len(server.message_requests())}


def child_dagster(db: str, workdir: str, outputs: str | None = None) -> dict:
    """Every asset after collection and every check, as "Materialize all" runs them, in process.
    ``outputs``: also write what every asset and check reported (metadata, check verdicts) there as
    JSON, to compare two versions' results."""
    os.environ["AUTOPACK_REPORTS_DIR"] = str(Path(workdir) / "reports")

    from autopack_pipeline.defs.asset_graph import ALL_CHECKS
    from autopack_pipeline.defs.calibration.assets import calibration_recommendations
    from autopack_pipeline.defs.events.assets import raw_events
    from autopack_pipeline.defs.events.io_manager import event_io_resources
    from autopack_pipeline.defs.metrics.assets import tier_metrics
    from autopack_pipeline.defs.resources import TelemetryDatabase
    from autopack_pipeline.defs.samples.assets import success_samples
    from autopack_pipeline.defs.tasks.assets import generated_tasks

    return _materialize_and_split(
        [raw_events, success_samples, tier_metrics, calibration_recommendations, generated_tasks, *ALL_CHECKS],
        {"telemetry_db": TelemetryDatabase(database_url=db), **event_io_resources()}, workdir, outputs)


def _reported(result: Any) -> dict:
    """What each asset and check of a run reported, as text (paths, times and run ids vary per run)."""
    varying = ("extraction_seconds", "report_markdown", "report_json", "report_plot", "plot", "patch_json", "apply",
               "columnar_store", "next_step", "dagster_run_id", "tasks", "tasks_new", "tasks_refreshed", "no_patch")
    found: dict[str, Any] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        found[materialization.asset_key.to_user_string()] = {
            k: str(v.value) for k, v in sorted(materialization.metadata.items()) if k not in varying}
    for evaluation in result.get_asset_check_evaluations():
        found[f"check {evaluation.check_name}"] = {
            "passed": evaluation.passed, "description": evaluation.description,
            **{k: str(v.value) for k, v in sorted(evaluation.metadata.items())}}
    return found


def _materialize_and_split(assets: list, resources: dict, workdir: str, outputs: str | None = None) -> dict:
    """Materialise in process with the pickle IO manager; split the wall time with the event log."""
    import dagster as dg

    instance = dg.DagsterInstance.ephemeral(tempdir=workdir)
    # CPU seconds of the process at each step's events: the in-process executor runs the steps one
    # after the other, so a step's CPU is the difference between its first and last event (wall time
    # alone misleads on a shared machine).
    cpu_marks: dict[str, dict[str, float]] = {}
    handle = instance.handle_new_event

    def marked(event: Any, **kwargs: Any) -> None:
        dagster_event = event.dagster_event
        if dagster_event is not None and dagster_event.step_key:
            cpu_marks.setdefault(dagster_event.step_key, {})[dagster_event.event_type_value] = time.process_time()
        handle(event, **kwargs)

    instance.handle_new_event = marked
    began = time.perf_counter()
    result = dg.materialize(
        assets,
        instance=instance,
        resources={**resources, "io_manager": dg.FilesystemIOManager(base_dir=str(Path(workdir) / "io"))},
        raise_on_error=False,
    )
    wall = time.perf_counter() - began
    steps: dict[str, dict[str, float]] = {}
    for record in instance.all_logs(result.run_id):
        event = record.dagster_event
        if event is None or not event.step_key:
            continue
        marks = steps.setdefault(event.step_key, {})
        kind = event.event_type_value
        if kind in ("STEP_START", "STEP_OUTPUT", "HANDLED_OUTPUT", "STEP_SUCCESS", "STEP_FAILURE"):
            marks.setdefault(kind, record.timestamp)
        if kind == "LOADED_INPUT":
            marks["LOADED_INPUT"] = record.timestamp  # the last input loaded
    figures = {}
    compute = io = 0.0
    for step, marks in steps.items():
        start = marks.get("STEP_START")
        loaded = marks.get("LOADED_INPUT", start)
        output = marks.get("STEP_OUTPUT", loaded)
        handled = marks.get("HANDLED_OUTPUT", output)
        end = marks.get("STEP_SUCCESS") or marks.get("STEP_FAILURE") or handled
        cpu = cpu_marks.get(step, {})
        cpu_end = cpu.get("STEP_SUCCESS") or cpu.get("STEP_FAILURE")
        figures[step] = {"load_inputs_s": loaded - start, "compute_s": output - loaded,
                         "handle_output_s": handled - output, "step_s": end - start,
                         "step_cpu_s": cpu_end - cpu["STEP_START"] if cpu_end and "STEP_START" in cpu else None}
        compute += output - loaded
        io += (loaded - start) + (handled - output)
    if outputs:
        Path(outputs).write_text(json.dumps(_reported(result), indent=1, sort_keys=True))
    pickles = sum(p.stat().st_size for p in (Path(workdir) / "io").rglob("*") if p.is_file())
    return {"success": result.success, "wall_s": wall, "compute_s": compute, "io_s": io,
            "dagster_overhead_s": wall - compute, "framework_s": wall - compute - io, "steps": figures,
            "pickle_bytes": pickles}


def child_probe() -> dict:
    """The same fixed work in every run: the host's speed at that moment. A machine of this kind shares its
    host, which ran the same one-thread loop 1.3 to 2.1 s from one minute to the next (2026-12-06), so a run's
    figures are read against the probes taken at its start and its end."""
    import numpy as np

    began = time.perf_counter()
    total = 0
    for i in range(5_000_000):
        total += i
    python_s = time.perf_counter() - began
    values = np.random.default_rng(7).random(4_000_000)
    began = time.perf_counter()
    np.sort(values)
    return {"python_s": python_s, "numpy_sort_s": time.perf_counter() - began}


CHILDREN = {
    "probe": child_probe, "synth": child_synth, "sqlite_floor": child_sqlite_floor, "pg_floor": child_pg_floor, "extract": child_extract, "analyse": child_analyse, "drift": child_drift, "cli": child_cli,
    "orm_calibrate": child_orm_calibrate,
    "record": child_record, "collection": child_collection, "dagster": child_dagster,
}


@dataclass
class ChildResult:
    result: dict
    wall_s: float
    cpu_s: float
    maxrss_mb: float


def run_child(task: str, timeout: float = 3600, **kwargs: Any) -> ChildResult:
    """Run one measurement in a fresh interpreter; its rusage is read with wait4, so it is its own.

    Its output goes to temporary files, not pipes: nobody reads a pipe while the child runs, and a
    child that logs more than a pipe holds (Dagster's does) would block until the timeout.
    """
    import threading

    # Every dirty page written out first, so no figure pays for the write-back of what the steps before it
    # wrote (gigabytes after a load or an extraction), which competes with whatever runs next: unsettled,
    # the SQLite 100k append's loader and floor swung between 0.72x and 1.09x of each other from round to
    # round here; settled, 0.95-1.02x in four quiet pairs. The 10M analysis right after its extraction took
    # 6.6 and 5.6 s unsettled, 5.7 and 5.1 s settled (alternating, 2026-12-06).
    os.sync()
    began = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        # As a module (``-m``), not by path: its byte-compiled file is used (``compile_package``), where a
        # script is compiled again in every child, ~0.01 s of each figure that no user's command pays.
        process = subprocess.Popen([sys.executable, "-m", "benchmarks.run", "--child", task, json.dumps(kwargs)],
                                   stdout=out, stderr=err, text=True, cwd=REPO)
        # A blocking wait4, its end seen at once (polling every 20 ms added ~0.01 s to every figure on
        # average); a timer kills a child that takes too long.
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            process.kill()

        overdue = threading.Timer(timeout, kill)
        overdue.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            overdue.cancel()
        wall = time.perf_counter() - began
        if killed.is_set():
            raise TimeoutError(f"benchmark step {task} took longer than {timeout:.0f} s")
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise RuntimeError(f"benchmark step {task} failed:\n{stderr[-3000:]}")
    return ChildResult(json.loads(stdout.strip().splitlines()[-1]), wall, usage.ru_utime + usage.ru_stime,
                       usage.ru_maxrss / 1024)


# -- the run ------------------------------------------------------------------------------------------


@dataclass
class Report:
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict = field(default_factory=dict)

    def add(self, name: str, value: float, unit: str, bound: str = "", ratio: str = "", holds: bool | None = None,
            detail: str = "") -> None:
        row = {"figure": name, "value": value, "unit": unit, "bound": bound, "ratio": ratio, "holds": holds,
               "detail": detail}
        self.rows.append(row)
        verdict = "" if holds is None else ("HOLDS" if holds else "MISSED")
        print(f"  {name:<58} {_fmt(value):>10} {unit:<8} {bound:<14} {ratio:<22} {verdict:<6} {detail}", flush=True)


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import numpy
    import pandas
    import pyarrow
    import sqlalchemy

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(), "cpu": model,
        "ram_gib": round(memory, 1), "python": platform.python_version(), "sqlite": __import__("sqlite3").sqlite_version,
        "numpy": numpy.__version__, "pandas": pandas.__version__, "pyarrow": pyarrow.__version__,
        "sqlalchemy": sqlalchemy.__version__, "load_average_before": os.getloadavg(),
    }


def host_probe(when: str) -> dict:
    """:func:`child_probe` in a fresh process, printed: the host's speed ``when`` (before or after the figures)."""
    probe = run_child("probe").result
    print(f"host speed probe {when}: 5M-step Python loop {probe['python_s']:.3f} s, numpy sort of 4M floats "
          f"{probe['numpy_sort_s']:.3f} s (the same work every run: higher means a slower host)", flush=True)
    return probe


def args_sizes(args: argparse.Namespace, sizes: list[int]) -> list[int]:
    """The history sizes ``--histories`` names (at the run's scale)."""
    wanted = {name.strip() for name in args.histories.split(",") if name.strip()}
    return [n for n, full in zip(sizes, HISTORY_SIZES) if size_name(full) in wanted]


def free_seed(db: str) -> int:
    """A synth seed whose runs are not in the database yet."""
    import sqlite3

    path = db.removeprefix("sqlite:///")
    connection = sqlite3.connect(path)
    try:
        seed = 1000
        while connection.execute("SELECT 1 FROM runs WHERE id = ?", (f"synth-{seed}-r00000",)).fetchone():
            seed += 1
        return seed
    finally:
        connection.close()


def remove_seed(db: str, seed: int) -> None:
    """Delete what ``synth --seed seed`` appended to a history, so that the history keeps the size its name
    says for the next run (the columnar copies, now ahead of the database, are rebuilt by that run: the 10M
    one by the cold extraction, the others when the refresh benchmark catches them up)."""
    import sqlite3

    connection = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        with connection:
            # The seed's rows came last: its ids are above every earlier row's (ranges over the keys).
            for table, key in (("token_estimation_v2_events", "event_id"), ("phases", "id"), ("tiers", "id")):
                first = connection.execute(f"SELECT min({key}) FROM {table} WHERE run_id = ?",
                                           (f"synth-{seed}-r00000",)).fetchone()[0]
                if first is not None:
                    connection.execute(f"DELETE FROM {table} WHERE {key} >= ?", (first,))
            connection.execute("DELETE FROM runs WHERE id >= ? AND id < ?", (f"synth-{seed}-", f"synth-{seed}."))
    finally:
        connection.close()


def event_count(db: str) -> int:
    import sqlite3

    connection = sqlite3.connect(db.removeprefix("sqlite:///"))
    try:
        return int(connection.execute("SELECT count(*) FROM token_estimation_v2_events").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        connection.close()


def ensure_history(data: Path, name: str, events: int, report: Report, shape: str = "per-run") -> str:
    db = f"sqlite:///{history_file(data, name, shape)}"
    have = event_count(db)
    if have >= events:
        report.notes.append(f"history {name} ({shape} phase ids): reused {have:,} events in {db}")
        return db
    if have:
        raise SystemExit(f"{db} holds {have} events, fewer than {events}: delete it to rebuild")
    print(f"building the {name} history ({events:,} events, {shape} phase ids) in {db} ...", flush=True)
    built = run_child("synth", timeout=7200, db=db, events=events, seed=1, phase_ids=shape)
    report.notes.append(f"history {name} ({shape} phase ids): built {events:,} events in {built.wall_s:.0f} s "
                        f"({built.result['events_per_second']:,.0f} events/s)")
    return db


def postgres_available() -> bool:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(PG_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means: no server to measure
        return False


def _stages(result: dict) -> str:
    t = result.get("timings") or {}
    staged = f" + staging {t['stage']:.1f} s" if t.get("stage") else ""
    return (f"database: phases {t.get('phases', 0):.1f} s + events {t.get('events', 0):.1f} s + index rebuild "
            f"{t.get('indexes', 0):.1f} s; row generation {t.get('generate', 0):.1f} s{staged} in a helper thread")


def _overall_rate(rounds: list[dict]) -> float:
    """Events per second over every round together: their events over their seconds, not a mean of rates."""
    return sum(r["events"] for r in rounds) / sum(r["seconds"] for r in rounds)


def _round_rates(rounds: list[dict]) -> str:
    return f"{len(rounds)} rounds: " + ", ".join(f"{r['events_per_second']:,.0f}/s" for r in rounds)


def _round_seconds(rounds: list[dict], key: str) -> str:
    return ", ".join(f"{r[key]:.1f} s" for r in rounds)


def _sqlite_files(path: Path) -> list[Path]:
    return [Path(f"{path}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]


def _sqlite_copy(source: Path, target: Path) -> None:
    """A byte copy of the SQLite file ``source`` (its WAL checkpointed into it first) at ``target``."""
    import sqlite3

    for name in _sqlite_files(target):
        name.unlink(missing_ok=True)
    connection = sqlite3.connect(source)
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    subprocess.run(["cp", "--reflink=auto", str(source), str(target)], check=True)


# Rounds of the SQLite figures: the loader and its floor alternate, each into its own database, so neither
# always runs second (page cache, WAL and checkpoint state, other work on the machine); every round is reported
# and the verdict is on their sums. A 100k append takes about a second, and its commit (the WAL checkpoint)
# moved between 0.23 and 0.65 s from round to round here: five rounds. A load of a million events into an
# empty file takes 10-13 s, two thirds of it the 21 index rebuilds both sides share, and one load against one
# floor gave the same code 1.03x and 0.83x in two runs an hour apart (the floor 82,300 and 94,800 events/s):
# three rounds.
SQLITE_APPEND_ROUNDS = 5
SQLITE_FRESH_ROUNDS = 3
# Rounds of the PostgreSQL append, each into its own copy of the database the fresh load left, followed by its
# floor: one append gave the same code 34,700, 38,900 and 46,800 events/s in three runs (its floor 44,700-61,200).
PG_APPEND_ROUNDS = 3


def bench_synth(report: Report, work: Path, scale: int) -> None:
    print("synth: bulk load rates", flush=True)
    path = work / "synth-rate.db"
    floor_path = work / "synth-floor.db"
    db = f"sqlite:///{path}"

    def add_floor(loaded: list[dict], floors: list[dict], rows: str) -> None:
        events, floor_rate = sum(f["events"] for f in floors), _overall_rate(floors)
        share = _overall_rate(loaded) / floor_rate
        # CPU seconds per event, floor over loader: the work each did, which other load on the machine
        # does not change as much as it changes wall time (the loader's includes making the rows).
        floor_cpu, loader_cpu = sum(f["cpu_s"] for f in floors), sum(r["cpu_s"] for r in loaded)
        cpu_share = (floor_cpu / events) / (loader_cpu / sum(r["events"] for r in loaded))
        rounds = "" if len(floors) == 1 else " (rounds: " + ", ".join(
            f"floor {f['events_per_second']:,.0f}/s, loader at {r['events_per_second'] / f['events_per_second']:.2f}x"
            for r, f in zip(loaded, floors, strict=True)) + ")"
        report.add("  SQLite's floor: the same rows by INSERT..SELECT", floor_rate, "events/s",
                   f"loader >= {SYNTH_FLOOR_SHARE}x", f"loader at {share:.2f}x of it", share >= SYNTH_FLOOR_SHARE,
                   f"no Python per row: {rows}; CPU: floor {floor_cpu:.1f} s, loader {loader_cpu:.1f} s "
                   f"(loader at {cpu_share:.2f}x by CPU){rounds}")

    fresh, fresh_floors = [], []
    for _round in range(SQLITE_FRESH_ROUNDS):
        for name in (*_sqlite_files(path), *_sqlite_files(floor_path)):
            name.unlink(missing_ok=True)
        fresh.append(run_child("synth", db=db, events=1_000_000 // scale, seed=1).result)
        fresh_floors.append(run_child("sqlite_floor", source=str(path), target=str(floor_path), stage="empty",
                                      events=fresh[-1]["events"], phases=fresh[-1]["phases"]).result)
    base_load = fresh[-1]  # what the database the append rounds below start from holds
    report.add(f"synth into SQLite, {size_name(1_000_000 // scale)} events into an empty DB", _overall_rate(fresh),
               "events/s", "", "", None, f"{base_load['phases']:,} phases, {base_load['runs']:,} runs too; "
               f"{_round_rates(fresh)}; last {_stages(base_load)}")
    add_floor(fresh, fresh_floors, f"rows {_round_seconds(fresh_floors, 'rows_s')} + {fresh_floors[-1]['indexes']} "
              f"index rebuilds {_round_seconds(fresh_floors, 'indexes_s')} + commit "
              f"{_round_seconds(fresh_floors, 'commit_s')}")
    # The append: the loader and the floor each into a byte copy of the database the fresh load left.
    base = work / "synth-append-base.db"
    _sqlite_copy(path, base)
    # The fresh load's database and its floor's are done with. Left in place, the append rounds after them ran
    # slower here, the first 1.3-1.8x (the floor 1.3x, the loader more); removed, not (three rounds each way).
    for name in (*_sqlite_files(path), *_sqlite_files(floor_path)):
        name.unlink(missing_ok=True)
    loaded, floors = [], []
    for round_ in range(SQLITE_APPEND_ROUNDS):
        target = work / f"synth-append-{round_}.db"
        _sqlite_copy(base, target)
        loaded.append(run_child("synth", db=f"sqlite:///{target}", events=NEW_EVENTS, seed=2).result)
        _sqlite_copy(base, floor_path)
        floors.append(run_child("sqlite_floor", source=str(target), target=str(floor_path), stage="append",
                                events=base_load["events"], phases=base_load["phases"]).result)
        for name in _sqlite_files(target):
            name.unlink(missing_ok=True)
    report.add(f"synth into SQLite, {size_name(NEW_EVENTS)} more (indexes in place)", _overall_rate(loaded),
               "events/s", "", "", None, f"{_round_rates(loaded)}; last {_stages(loaded[-1])}")
    add_floor(loaded, floors, f"rows with their index entries {_round_seconds(floors, 'rows_s')} + commit "
              f"{_round_seconds(floors, 'commit_s')}")
    for name in (path, floor_path, base):
        for file in _sqlite_files(name):
            file.unlink(missing_ok=True)
    if not postgres_available():
        report.notes.append(f"PostgreSQL synth not measured: no server at {PG_ADMIN_URL}")
        return
    import sqlalchemy as sa

    from autopack_pipeline.storage.bulk.postgresql import PG_FIRST_CONNECTION_SHARE

    name = f"autopack_bench_{os.getpid()}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        url = sa.engine.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        fresh = run_child("synth", db=url, events=500_000 // scale, seed=1)
        rate = fresh.result["events_per_second"]
        report.add(f"synth into PostgreSQL (COPY), {size_name(500_000 // scale)} into an empty DB", rate, "events/s",
                   f">= {SYNTH_PG_PER_S:,}/s", f"{rate / SYNTH_PG_PER_S:.2f}x of bound", rate >= SYNTH_PG_PER_S,
                   _stages(fresh.result))
        appends, floors = [], []
        for _round in range(PG_APPEND_ROUNDS):
            # Two copies of the database as the append finds it: the loader's and the floor's (a template
            # needs no open connection). FILE_COPY copies the files after a checkpoint instead of writing the
            # whole database to the WAL, which the append would otherwise find still being flushed.
            copies = (f"{name}_append", f"{name}_floor")
            with admin.connect() as connection:
                for database in copies:
                    connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
                    connection.exec_driver_sql(f'CREATE DATABASE "{database}" TEMPLATE "{name}" STRATEGY = FILE_COPY')
            target_url, floor_url = (
                sa.engine.make_url(url).set(database=database).render_as_string(hide_password=False) for database in copies)
            appends.append(run_child("synth", db=target_url, events=NEW_EVENTS, seed=2).result)
            floors.append(run_child("pg_floor", source=target_url, target=floor_url, seed=2).result)
        rate = _overall_rate(appends)
        report.add(f"synth into PostgreSQL, {size_name(NEW_EVENTS)} more (indexes in place)", rate, "events/s",
                   f">= {SYNTH_PG_PER_S:,}/s", f"{rate / SYNTH_PG_PER_S:.2f}x of bound", rate >= SYNTH_PG_PER_S,
                   f"{_round_rates(appends)}; last {_stages(appends[-1])}")
        floor_rate = _overall_rate(floors)
        report.add("  PostgreSQL's floor: the same rows by binary COPY", floor_rate, "events/s",
                   "", f"loader at {rate / floor_rate:.2f}x of it", None,
                   f"no Python per row: events on one connection, runs, tiers, phases and the first "
                   f"{PG_FIRST_CONNECTION_SHARE:.0%} of the events on another at once, indexes in place, foreign-key "
                   "triggers off; rounds: " + ", ".join(
                       f"{f['seconds']:.2f} s, loader at {r['events_per_second'] / f['events_per_second']:.2f}x"
                       for r, f in zip(appends, floors, strict=True)))
        # What a PostgreSQL user's first `metrics` waits for (the 30 s is for SQLite's 10M): the
        # columnar copy of the 500k database, read on two connections.
        store = work / "postgresql-store"
        cold = run_child("extract", db=url, store=str(store), full=True)
        shutil.rmtree(store, ignore_errors=True)
        rows = cold.result["rows_after"]
        report.add(f"cold extraction of {size_name(rows)} events from PostgreSQL", cold.result["seconds"], "s", "", "",
                   None, f"{rows / cold.result['seconds']:,.0f} events/s; process wall {cold.wall_s:.1f} s, peak "
                   f"{cold.maxrss_mb:,.0f} MB, cpu {cold.cpu_s:.1f} s (the server's not included)")
    finally:
        with admin.connect() as connection:
            for database in (name, f"{name}_append", f"{name}_floor"):
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()


def bench_columnar(report: Report, data: Path, histories: dict[str, str]) -> dict:
    largest = list(histories)[-1]
    big = histories[largest]
    store = str(data / "stores" / largest)
    print("cold extraction and analysis over the 10M history", flush=True)
    cold = run_child("extract", db=big, store=store, full=True)
    rows = cold.result["rows_after"]
    report.add(f"cold extraction of {rows / 1e6:.1f}M events from SQLite", cold.wall_s, "s", f"<= {COLD_EXTRACTION_S:.0f} s",
               f"{COLD_EXTRACTION_S / cold.wall_s:.1f}x headroom", cold.wall_s <= COLD_EXTRACTION_S,
               f"peak {cold.maxrss_mb:,.0f} MB + {cold.result['children_maxrss_mb']:,.0f} MB in each reading "
               f"process beside it, cpu {cold.cpu_s:.0f} s (theirs included)")
    analysis = run_child("analyse", store=store)
    figures = analysis.result
    report.add(f"full analysis of {figures['events'] / 1e6:.1f}M events (process wall)", analysis.wall_s, "s",
               f"<= {ANALYSIS_S:.0f} s", f"{ANALYSIS_S / analysis.wall_s:.2f}x headroom", analysis.wall_s <= ANALYSIS_S,
               f"imports {figures['import_s']:.1f} + load {figures['load_s']:.1f} + analysis {figures['analyse_s']:.1f} s; "
               f"cpu {analysis.cpu_s:.1f} s")
    report.add("full analysis, peak memory", analysis.maxrss_mb, "MB", f"<= {ANALYSIS_MB:,} MB",
               f"{ANALYSIS_MB / analysis.maxrss_mb:.2f}x headroom", analysis.maxrss_mb <= ANALYSIS_MB)
    drift = run_child("drift", store=store)
    figures_drift = drift.result
    report.add(f"drift checks' statistics over {figures_drift['considered'] / 1e6:.1f}M phases (process wall)",
               drift.wall_s, "s", "", "", None,
               f"imports and load {figures_drift['import_and_load_s']:.1f} + drift {figures_drift['drift_s']:.1f} s; "
               f"{figures_drift['groups']} groups compared over the history's last 7 days ({figures_drift['recent']:,} "
               f"phases), {figures_drift['drifted']} drifted; cpu {drift.cpu_s:.1f} s; peak {drift.maxrss_mb:,.0f} MB")
    report.notes.append("analysis steps (services.pipeline's stages, one after the other): " + ", ".join(
        f"{k} {v:.2f} s" for k, v in figures["steps"].items()))
    report.notes.append(f"analysis result: {figures['clean_samples']:,} clean samples; {figures['gate']}; "
                        f"groups per method {figures['groups']}")
    return {"analysis_wall": analysis.wall_s, "extract_wall": cold.wall_s, "rows": figures["events"]}


def bench_incremental(report: Report, data: Path, histories: dict[str, str], appended: list[tuple[str, int]]) -> None:
    """The refresh after 100k new events appended to each history; ``appended`` gets (history, seed) of each
    append, which the run deletes at its end (:func:`remove_seed`), after the benchmarks that read the copies
    these refreshes brought up to date."""
    print("incremental refresh after 100k new events", flush=True)
    times = {}
    for name, db in histories.items():
        store = str(data / "stores" / name)
        run_child("extract", db=db, store=store, full=False)  # catch up with the history first
        seed = free_seed(db)
        added = run_child("synth", db=db, events=NEW_EVENTS, seed=seed)
        refresh = run_child("extract", db=db, store=store, full=False)
        appended.append((db, seed))
        seconds = refresh.result["seconds"]
        times[name] = seconds
        report.add(f"refresh after {NEW_EVENTS // 1000}k new events, {refresh.result['rows_before'] / 1e6:.1f}M history",
                   seconds, "s",
                   f"<= {REFRESH_S:.0f} s", f"{REFRESH_S / seconds:.1f}x headroom", seconds <= REFRESH_S,
                   f"process wall {refresh.wall_s:.1f} s, peak {refresh.maxrss_mb:,.0f} MB; "
                   f"append {added.result['events_per_second']:,.0f} events/s")
    names = list(times)
    ratio = times[names[-1]] / times[names[0]]
    report.add(f"refresh time, {names[-1]} history / {names[0]} history", ratio, "x", "flat (~1x)",
               f"{ratio:.2f}x for 10x history", ratio < 2.0)


# Rounds of the `calibrate` figure: ours (afterwards) and the per-row ORM way alternate, so the host's drift
# over the ORM way's half minute falls on both sides; every round is reported and the verdict is on their sums.
# One of each gave the same code 28.4x and 24.3x in two runs an hour apart (ours 0.95 and 1.11 s).
CALIBRATE_ROUNDS = 3


def bench_shapes(report: Report, data: Path, shapes: dict[str, str], size: str) -> None:
    """At 1M, on both shapes: the first ``metrics`` (the extraction into a new columnar copy), ``metrics``
    afterwards and ``calibrate``, each a fresh process as a user runs them; on Autopack's shape also
    Autopack's per-row ORM calibration, in rounds alternating with ``calibrate``."""
    stores = {}
    for shape, db in shapes.items():
        print(f"metrics and calibrate at {size}, {shape} phase ids", flush=True)
        store = stores[shape] = data / "stores" / f"cli-{shape}"
        shutil.rmtree(store, ignore_errors=True)
        first = run_child("cli", db=db, store=str(store), args=["metrics", "--stratify", "--json"])
        again = run_child("cli", db=db, store=str(store), args=["metrics", "--stratify", "--json"])
        with tempfile.TemporaryDirectory(dir=data) as reports:
            args = ["calibrate", "--force", "--json", "--output-dir", reports]
            # The first calibrate on a copy also extracts the prediction inputs, once (storage/columnar).
            first_calibrate = run_child("cli", db=db, store=str(store), args=args)
            calibrate = run_child("cli", db=db, store=str(store), args=args)
        for label, run in (("first `metrics` (extraction into the columnar copy)", first),
                           ("`metrics` afterwards", again),
                           ("first `calibrate` (extracting the prediction inputs), report and plot", first_calibrate),
                           ("`calibrate` afterwards, report and plot", calibrate)):
            children = run.result["children_maxrss_mb"]
            helper = f" + {children:,.0f} MB in its child process" if children else ""
            report.add(f"{size} {shape}: {label}", run.wall_s, "s", "", "", None,
                       f"exit {run.result['exit']}; peak {run.result['own_maxrss_mb']:,.0f} MB{helper}; "
                       f"cpu {run.cpu_s:.1f} s")
    if "per-run" not in shapes:
        return
    print(f"Autopack's per-row ORM calibration at {size}, {CALIBRATE_ROUNDS} rounds alternating with `calibrate`",
          flush=True)
    mine, orm = [], []
    with tempfile.TemporaryDirectory(dir=data) as out, tempfile.TemporaryDirectory(dir=data) as reports:
        for _round in range(CALIBRATE_ROUNDS):
            mine.append(run_child("cli", db=shapes["per-run"], store=str(stores["per-run"]),
                                  args=["calibrate", "--force", "--json", "--output-dir", reports]))
            orm.append(run_child("orm_calibrate", db=shapes["per-run"], out=out))
    mine_s, orm_s = sum(run.wall_s for run in mine), sum(run.wall_s for run in orm)
    speedup = orm_s / mine_s
    # Our calibrate's processes at their peaks (a helper process would overlap it), the largest of the rounds,
    # against the ORM way's smallest.
    mine_mb = max(run.result["own_maxrss_mb"] + run.result["children_maxrss_mb"] for run in mine)
    orm_mb = min(run.maxrss_mb for run in orm)
    memory = mine_mb / orm_mb
    report.add(f"{size} per-run: the per-row ORM way (Autopack's calibrate)", orm_s / len(orm), "s", "", "", None,
               f"mean of {len(orm)} rounds: " + ", ".join(f"{run.wall_s:.1f} s" for run in orm)
               + f"; peak {orm_mb:,.0f} MB; {orm[-1].result['samples']:,} samples, {orm[-1].result['groups']} groups")
    report.add("  `calibrate` speed-up over the ORM way", speedup, "x", f">= {CALIBRATE_SPEEDUP:.0f}x",
               f"{speedup / CALIBRATE_SPEEDUP:.2f}x of bound", speedup >= CALIBRATE_SPEEDUP,
               f"{mine_s:.2f} s against {orm_s:.1f} s over {len(mine)} rounds, alternating: "
               + ", ".join(f"{o.wall_s / m.wall_s:.1f}x ({m.wall_s:.2f} s)" for m, o in zip(mine, orm, strict=True)))
    report.add("  `calibrate` memory / the ORM way's", memory, "x", f"<= {CALIBRATE_MEMORY_SHARE:.3f}",
               f"1/{1 / memory:.1f}", memory <= CALIBRATE_MEMORY_SHARE,
               f"{mine_mb:,.0f} MB against {orm_mb:,.0f} MB")


def bench_record(report: Report, work: Path, histories: dict[str, str]) -> None:
    print("recording one event from the Builder", flush=True)
    fresh = run_child("record", db=f"sqlite:///{work / 'record.db'}", calls=300)
    report.add("record_estimation_event on SQLite, median added time", fresh.result["median_ms"], "ms",
               f"<= {RECORD_MS:.0f} ms", f"{RECORD_MS / fresh.result['median_ms']:.1f}x headroom",
               fresh.result["median_ms"] <= RECORD_MS,
               f"p90 {fresh.result['p90_ms']:.2f} ms; fresh database, 300 calls")
    big = run_child("record", db=list(histories.values())[-1], calls=300)
    report.add(f"record_estimation_event on the {list(histories)[-1]}-event SQLite DB, median", big.result["median_ms"],
               "ms",
               f"<= {RECORD_MS:.0f} ms", f"{RECORD_MS / big.result['median_ms']:.1f}x headroom",
               big.result["median_ms"] <= RECORD_MS, f"p90 {big.result['p90_ms']:.2f} ms")


def bench_collection(report: Report, work: Path) -> None:
    print("a 10-phase collection run against a 1 s server at concurrency 10", flush=True)
    run = run_child("collection", db=f"sqlite:///{work / 'collection.db'}", latency=1.0, concurrency=10)
    seconds = run.result["seconds"]
    report.add("collection run, 10 phases, 1 s latency, concurrency 10", seconds, "s", f"<= {COLLECTION_S} s",
               f"{COLLECTION_S / seconds:.2f}x headroom", seconds <= COLLECTION_S,
               f"{run.result['requests']} requests, {run.result['completed']}/{run.result['phases']} phases completed, "
               f"{run.result['events_written']} events; serial would be >= 10 s")


# The steps of the "full analysis" (tier metrics, strata, both calibrations) and the
# data-quality checks that gate them; generated_tasks and the drift checks come on top.
ANALYSIS_STEPS = ("raw_events", "success_samples", "tier_metrics", "calibration_recommendations",
                  "raw_events_events_exist", "raw_events_not_all_failures", "raw_events_token_counts_plausible")


def bench_dagster(report: Report, data: Path, work: Path, name: str) -> None:
    """Two "Materialize all" runs, each in a fresh process: the first after the extraction pays a
    one-time cost (the window's prediction inputs extracted from the database; the parts were tallied
    as the extraction wrote them); the second is every later run's cost with nothing new collected."""
    label = "Dagster: every asset after collection, with its checks"
    print(f"{label}, on the {name} history", flush=True)
    workdir = work / f"dagster-{name}"
    os.environ["AUTOPACK_COLUMNAR_DIR"] = str(data / "stores" / name)  # the store the benchmarks refreshed
    try:
        for run_label in ("first run after the extraction", "a later run"):
            workdir.mkdir(parents=True, exist_ok=True)
            try:
                run = run_child("dagster", timeout=7200, db=f"sqlite:///{history_file(data, name, 'per-run')}",
                                workdir=str(workdir))
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            _report_dagster(report, f"{label}, {name}, {run_label}", run)
    finally:
        os.environ.pop("AUTOPACK_COLUMNAR_DIR", None)


def _report_dagster(report: Report, label: str, run: ChildResult) -> None:
    figures = run.result
    steps = figures["steps"]
    analysis = sum(v["step_s"] for k, v in steps.items() if k in ANALYSIS_STEPS)
    report.add(label, figures["wall_s"], "s", "", "", None,
               f"{'succeeded' if figures['success'] else 'FAILED'}; CPU {run.cpu_s:.1f} s; peak {run.maxrss_mb:,.0f} MB; "
               f"pickles {figures['pickle_bytes'] / 2**20:,.2f} MB")
    analysis_cpu = sum(v.get("step_cpu_s") or 0.0 for k, v in steps.items() if k in ANALYSIS_STEPS)
    report.add("  analysis steps (raw_events..calibration, data-quality checks)", analysis, "s",
               f"<= {DAGSTER_ANALYSIS_S:.0f} s", f"{DAGSTER_ANALYSIS_S / analysis:.2f}x headroom",
               bool(figures["success"] and analysis <= DAGSTER_ANALYSIS_S),
               f"CPU {analysis_cpu:.2f} s; " + "; ".join(f"{k} {v['step_s']:.2f}" for k, v in steps.items()
                                                        if k in ANALYSIS_STEPS))
    report.add("  generated_tasks, the drift and Tier checks (drift and generated_tasks read every event)",
               sum(v["step_s"] for k, v in steps.items() if k not in ANALYSIS_STEPS), "s", "", "", None,
               "; ".join(f"{k} {v['step_s']:.2f}" for k, v in steps.items() if k not in ANALYSIS_STEPS))
    report.add("  Dagster's own time (wall - asset bodies - IO)", figures["framework_s"], "s", "", "", None,
               f"IO managers {figures['io_s']:.2f} s")


def compile_package(report: Report) -> None:
    """Byte-compile the package before any child runs, as an installed package is: a checkout run with
    ``PYTHONDONTWRITEBYTECODE`` set (this machine sets it) would otherwise compile every module from
    source in every fresh child, 0.15-0.3 s of CPU per command that no user of an install pays."""
    import compileall

    # This module too: every child runs it (``run_child``), and a script run by path is compiled every time.
    compiled = compileall.compile_dir(REPO / "autopack_pipeline", quiet=1) and compileall.compile_file(
        Path(__file__), quiet=1)
    report.notes.append("package byte-compiled before measuring" if compiled else
                        "byte-compiling the package failed: children compile their modules from source")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "autopack-bench")
    parser.add_argument("--histories", default="1m,3m,10m",
                        help="the Autopack-shaped histories the extraction, analysis and refresh figures use")
    parser.add_argument("--skip-shapes", action="store_true",
                        help="leave out the 1M figures on both shapes and the per-row ORM comparison")
    parser.add_argument("--dagster-events", type=int, default=10_000_000,
                        choices=[0, 1_000_000, 3_000_000, 10_000_000],
                        help="history the Dagster materialisation runs on (0: skip)")
    parser.add_argument("--skip-synth", action="store_true", help="do not measure the bulk-load rates")
    parser.add_argument("--synth-only", action="store_true",
                        help="measure only the bulk-load rates and SQLite's floor (no histories needed)")
    parser.add_argument("--scale", type=int, default=1,
                        help="divide every data size by this (a quick rehearsal; the bounds are for scale 1)")
    parser.add_argument("--json-out", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("child_args", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](**json.loads(args.child_args or "{}"))
        print(json.dumps(result, default=str))
        return 0

    data = args.data_dir.resolve()
    if data == REPO or REPO in data.parents:
        raise SystemExit("--data-dir must be outside the repository")
    (data / "stores").mkdir(parents=True, exist_ok=True)
    report = Report(machine=machine())
    compile_package(report)
    m = report.machine
    print(f"machine: {m['nproc']} x {m['cpu']}, {m['ram_gib']} GiB RAM; load average {m['load_average_before']}")
    m["probe_before"] = host_probe("before")
    began = time.perf_counter()
    global NEW_EVENTS
    NEW_EVENTS = NEW_EVENTS // args.scale
    sizes = [n // args.scale for n in HISTORY_SIZES]
    histories = {} if args.synth_only else {
        size_name(n): ensure_history(data, size_name(n), n, report) for n in sizes if n in args_sizes(args, sizes)}
    shapes = {} if args.synth_only or args.skip_shapes else {
        shape: ensure_history(data, size_name(sizes[0]), sizes[0], report, shape) for shape in SHAPES}
    appended: list[tuple[str, int]] = []
    with tempfile.TemporaryDirectory(dir=data, prefix="run-") as scratch:
        work = Path(scratch)
        print(f"  {'figure':<58} {'value':>10} {'unit':<8} {'bound':<14} {'ratio':<22}")
        if not args.skip_synth:
            bench_synth(report, work, args.scale)
        if not args.synth_only:
            if shapes:
                bench_shapes(report, data, shapes, size_name(sizes[0]))
            try:
                bench_columnar(report, data, histories)
                bench_incremental(report, data, histories, appended)
                bench_record(report, work, histories)
                bench_collection(report, work)
                if args.dagster_events:
                    bench_dagster(report, data, work, size_name(args.dagster_events // args.scale))
            finally:
                for db, seed in appended:
                    remove_seed(db, seed)
    m["load_average_after"] = os.getloadavg()
    m["probe_after"] = host_probe("after")
    m["benchmark_minutes"] = round((time.perf_counter() - began) / 60, 1)
    print(f"load average after: {m['load_average_after']}; {m['benchmark_minutes']} minutes")
    for note in report.notes:
        print(f"note: {note}")
    held = [r for r in report.rows if r["holds"] is True]
    missed = [r for r in report.rows if r["holds"] is False]
    print(f"bounds: {len(held)} hold, {len(missed)} missed" + (": " + "; ".join(r["figure"] for r in missed)
                                                             if missed else ""))
    if args.json_out:
        args.json_out.write_text(json.dumps({"machine": m, "figures": report.rows, "notes": report.notes}, indent=1,
                                            default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
