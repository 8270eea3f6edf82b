"""The entry point of a synthetic load, :func:`bulk_load`: it refuses a seed whose runs exist already,
dates the batch (:func:`batch_start`: a minute after the newest stored event, so a second batch reads
as later use, but never after now), hands the chunks to the SQLite or PostgreSQL loader and returns a
:class:`SynthSummary` of what was written and how fast."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy.engine import Engine

from autopack_pipeline.settings import PACKAGED_SEEDS_DIR
from autopack_pipeline.storage.bulk.loader import Progress
from autopack_pipeline.storage.bulk.loading import latest_event_time, make_loader, stored_run_ids, text_timestamp
from autopack_pipeline.storage.bulk.postgresql_steps import remove_interrupted_loads
from autopack_pipeline.storage.bulk.rows import run_id_for
from autopack_pipeline.synth.archetypes import DEFAULT_LEGACY_FRACTION, archetype_pricer
from autopack_pipeline.synth.generate import (
    DEFAULT_START,
    EVENTS_PER_RUN,
    PHASE_GAP_SECONDS,
    RETRY_DELAY_SECONDS,
    generate_chunks,
    price_first_block,
)

# Added to a batch's longest span: the sum of a few phases' random gaps can exceed their mean by minutes.
BATCH_SPAN_MARGIN = timedelta(minutes=10)


def default_run_count(events: int, phase_ids: str = "per-run") -> int:
    """Runs for ``events``: about 34 events per run in Autopack's shape (what a database Autopack wrote
    holds), 2,000 with reused phase ids (the older synthetic shape)."""
    return max(1, math.ceil(events / EVENTS_PER_RUN[phase_ids]))


class RunsAlreadyPresent(ValueError):
    """The runs a seed would create exist already: loading again would duplicate them."""


@dataclass
class SynthSummary:
    """What a bulk load wrote, and how fast."""

    database: str
    backend: str
    seed: int
    events: int
    phases: int
    runs: int
    first_run_id: str
    last_run_id: str
    seconds: float  # the whole call, its questions to the database before the load included
    events_per_second: float
    method: str = ""
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    coefficient_version: str = ""
    phase_ids: str = "per-run"  # generate.PHASE_ID_SCHEMES
    # Seconds per stage: "generate" (rows built in the helper thread, overlapping the rest), "stage"
    # (a SQLite append: the rows put in an in-memory table by that thread), "phases" and "events" (the database
    # taking the rows; they overlap on a PostgreSQL append with two connections, where "events" is the
    # events COPYs' whole time, waits for pieces included), "indexes" (rebuilt after a fresh load).
    timings: dict = field(default_factory=dict)
    # Continuing after the newest stored event would have dated rows after now: the batch ends before now.
    ends_before_now: bool = False
    # Runs removed before the load, per seed: left by a PostgreSQL append killed between two commits.
    interrupted_loads_removed: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def batch_start(latest: datetime | None, events: int, now: datetime) -> tuple[datetime, bool]:
    """When a batch of ``events`` starts (naive UTC), and whether it was moved to end before ``now``.

    A minute after the newest stored event, so a second batch reads as later use (``DEFAULT_START`` in an
    empty database), unless the batch could then run past ``now``: then it ends before now, among the
    stored events. Rows dated in the future would stay out of the drift's windows, and a real event
    collected next would be older than them. The span is bounded from above: a phase per event at most,
    the mean gap each, with a margin for the gaps' spread and the last retry's delay.
    """
    now = now.astimezone(timezone.utc).replace(tzinfo=None, microsecond=0)
    longest = timedelta(seconds=events * PHASE_GAP_SECONDS + RETRY_DELAY_SECONDS[1]) + BATCH_SPAN_MARGIN
    start = DEFAULT_START if latest is None else latest.replace(tzinfo=None, microsecond=0) + timedelta(minutes=1)
    if start + longest > now:
        return now - longest, True
    return start, False


def _check_runs_absent(engine: Engine, seed: int, runs: int) -> None:
    found = stored_run_ids(engine, [run_id_for(seed, 0), run_id_for(seed, runs - 1)])
    if found:
        raise RunsAlreadyPresent(
            f"runs {', '.join(sorted(found))} exist already: this database was filled with seed {seed} before; "
            "pass another --seed to add more events"
        )


def bulk_load(
    engine: Engine,
    events: int,
    *,
    runs: int | None = None,
    seed: int = 1,
    legacy_fraction: float = DEFAULT_LEGACY_FRACTION,
    progress: Progress | None = None,
    seeds_dir: Path = PACKAGED_SEEDS_DIR,
    phase_ids: str = "per-run",
) -> SynthSummary:
    """Fill the (migrated) telemetry database behind ``engine`` with ``events`` synthetic events.

    Creates ``runs`` runs (default: :func:`default_run_count`) named ``synth-<seed>-rNNNNN``, one tier
    each, a phase row for every phase and the events. Refuses with :class:`RunsAlreadyPresent` when
    the seed's runs exist. ``progress(events_written, events)`` is called after every chunk.

    Into an empty events table the load drops the secondary indexes, copies the rows and builds them
    again before committing, the usual way to populate a database. On SQLite that is one transaction,
    which an interruption rolls back whole; it needs the only connection to the file (with another one
    open, the load keeps the indexes in place as below). On PostgreSQL the foreign keys stay, their
    triggers off for the load, and two connections work at once, one transaction each: the phases (with
    the runs and tiers) on one, the events on the other, each dropping and rebuilding its own table's
    indexes; when the role may not turn the triggers off, the load is one transaction that drops the
    foreign keys too and adds them again. Into a table that holds events already, rows are inserted
    with the indexes in place: on SQLite in one transaction, rolled back whole on an interruption; on
    PostgreSQL in transactions of 500k events. A PostgreSQL load that commits more than once (an append,
    a fresh load on two connections) deletes its runs after an interruption that follows a commit, which
    cascades to their tiers, phases and events; until its last commit its runs are marked loading, under
    an advisory lock its connection holds: when the process was killed in between, or the server could
    not be reached to delete them, the next load into the database removes them
    (``interrupted_loads_removed``).
    """
    if events < 1:
        raise ValueError(f"the number of events must be at least 1, got {events}")
    runs = max(1, min(int(runs or default_run_count(events, phase_ids)), events))
    began = time.perf_counter()
    # The first chunk waits for its archetypes' prices (and the pricer for its seed files): priced by a
    # helper thread while the database is asked what follows and the loader opens its connections.
    pricing = threading.Thread(target=price_first_block, args=(seed,), daemon=True, name="synth-pricing",
                               kwargs={"legacy_fraction": legacy_fraction, "seeds_dir": seeds_dir})
    pricing.start()
    loader = make_loader(engine, seed=seed, runs=runs, events=events, progress=progress)
    # The PostgreSQL loader opens its connections meanwhile, in a helper thread too.
    loader.prepare(engine)
    try:
        # A PostgreSQL append killed between two of its commits left runs marked loading: gone before the
        # seed's runs are looked for, so the seed that was interrupted loads again.
        interrupted = remove_interrupted_loads(engine) if engine.dialect.name == "postgresql" else {}
        _check_runs_absent(engine, seed, runs)
        start, ends_before_now = batch_start(latest_event_time(engine), events, datetime.now(timezone.utc))
        chunks = generate_chunks(events, runs=runs, seed=seed, start=start,
                                 legacy_fraction=legacy_fraction, seeds_dir=seeds_dir, phase_ids=phase_ids,
                                 first_chunk_phases=loader.first_chunk_phases)
        loader.load(engine, chunks)
    finally:
        loader.close()
    seconds = time.perf_counter() - began
    return SynthSummary(
        database=engine.url.render_as_string(hide_password=True),
        backend=engine.dialect.name,
        seed=seed,
        events=loader.events_written,
        phases=loader.phases_written,
        runs=runs,
        first_run_id=run_id_for(seed, 0),
        last_run_id=run_id_for(seed, runs - 1),
        seconds=round(seconds, 3),
        events_per_second=round(loader.events_written / seconds, 1) if seconds > 0 else 0.0,
        method=loader.method,
        first_timestamp=text_timestamp(loader.first_us),
        last_timestamp=text_timestamp(loader.last_us),
        coefficient_version=archetype_pricer(seeds_dir).archetypes.coefficient_version,
        phase_ids=phase_ids,
        ends_before_now=ends_before_now,
        timings={k: round(v, 3) for k, v in loader.timings.items()},
        interrupted_loads_removed=[{"seed": s, "runs": n} for s, n in interrupted.items()],
    )
