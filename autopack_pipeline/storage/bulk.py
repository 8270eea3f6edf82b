"""Synthetic telemetry in bulk: runs, tiers, phases and estimation events, millions at a time.

What a team gathers over months of Autopack runs, generated in seconds, for benchmarks and for trying
the analysis at scale. The rows are what our own collection would have written:

* a phase's deliverables come from a pool of archetypes per (category, complexity, deliverable
  count), priced once each by the real :class:`~autopack_pipeline.domain.estimator.TokenEstimator`
  and ``select_budget`` with the coefficient file in ``seeds/``;
* the output a phase "wants" follows the simulated backend (``seeds/simulated_llm_profile.yaml``):
  a log-normal body per (category, complexity), a Pareto tail, malformed answers (a file missing,
  so no success) and degenerate near-empty answers (below 50 tokens, which the writer never stores);
* the Builder's rules decide each attempt: the first call runs under the selected budget, a
  truncated call escalates once to ``min(int(base * 1.25), 64000)``, a second truncation fails;
* columns derived by the writer (SMAPE, waste ratio, underestimated, ``is_truncated_output``) are
  computed the way :func:`~autopack_pipeline.storage.events.estimation_metrics` computes them.

A small share of events carries Autopack's legacy category spellings (``testing``,
``documentation``, ``IMPLEMENT_FEATURE``), as a database that Autopack itself wrote for a while does,
so the analysis has to normalise them. Phase outcomes and escalation rows are not synthesised.

Everything is drawn from numpy generators seeded by ``(seed, chunk number)``, so a seed gives the
same rows on SQLite and PostgreSQL, whatever the progress reporting. Event ids are the database's
own (autoincrement / sequence). Timestamps continue after the newest event already stored, so
appending a second batch to a database looks like more months of use.

Loading: SQLite through ``executemany`` on a dedicated ``sqlite3`` connection in large transactions,
with ``synchronous=OFF`` and foreign-key enforcement off for the load (the generator produces the
runs, tiers and phases every event refers to, and the tests check the keys); PostgreSQL through
``COPY ... FROM STDIN`` (CSV written by pyarrow) on the psycopg connection. A PostgreSQL append,
where every index is maintained row by row, copies the events on a second connection while the first
copies the phases (two backends, two cores); that needs the foreign-key triggers off for the load
(``session_replication_role``, superuser or granted), otherwise it runs on one connection with the
keys checked by the server.
"""

from __future__ import annotations

import io
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from autopack_pipeline.domain.coefficients import load_coefficients
from autopack_pipeline.domain.estimator import TokenEstimator, select_budget
from autopack_pipeline.llm.builder import ESCALATION_FACTOR, MAX_TOKENS_CAP
from autopack_pipeline.llm.simulated import DEGENERATE_TOKENS, SimulationProfile
from autopack_pipeline.settings import REPO_ROOT
from autopack_pipeline.storage.columnar import prefetch
from autopack_pipeline.storage.events import MAX_STORED_DELIVERABLES, MIN_VALID_OUTPUT_TOKENS
from autopack_pipeline.storage.models import Run, TokenEstimationV2Event

Progress = Callable[[int, int], None]
logger = logging.getLogger(__name__)

# Canonical categories and how often each occurs. Categories without their own row in the simulated
# profile answer with its "default" lengths, as the simulated backend does.
CATEGORY_WEIGHTS: dict[str, float] = {
    "implementation": 0.42,
    "tests": 0.24,
    "docs": 0.12,
    "refactoring": 0.07,
    "configuration": 0.06,
    "integration": 0.05,
    "frontend": 0.04,
}
COMPLEXITY_WEIGHTS: dict[str, float] = {"low": 0.34, "medium": 0.44, "high": 0.18, "critical": 0.03, "maintenance": 0.01}
# Deliverables per phase: mostly one file, sometimes many (1..10).
DELIVERABLE_WEIGHTS = np.array([0.52, 0.2, 0.1, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01, 0.005])
# Autopack stored raw spellings before it normalised them (pitfall P7).
LEGACY_SPELLINGS = {"tests": "testing", "docs": "documentation", "implementation": "IMPLEMENT_FEATURE"}
DEFAULT_LEGACY_FRACTION = 0.02
ARCHETYPE_VARIANTS = 4
SYNTH_MODEL = "claude-sonnet-4-5"
# Phases per generated chunk. Fixed: the random streams are seeded per chunk, so changing this would
# change the data a seed gives.
PHASES_PER_CHUNK = 50_000
# Mean seconds between two phase starts, and the spread of a retry after its first attempt.
PHASE_GAP_SECONDS = 1.5
RETRY_DELAY_SECONDS = (20.0, 120.0)
DEFAULT_START = datetime(2025, 1, 1)
# Events per transaction: large enough that commits cost nothing, small enough to bound memory.
SQLITE_TRANSACTION_EVENTS = 500_000
# Page cache while SQLite rebuilds the indexes after a fresh load, which is also the size of the sorter's
# in-memory runs; 4 MiB was fastest here from 1M to 3M events (64 MiB: 25-35% slower).
SQLITE_INDEX_SORT_KIB = 4096
PG_TRANSACTION_EVENTS = 500_000
# Phases per COPY (with their events): pieces of a chunk, so the first COPY starts sooner and the two
# connections of an append wait less for each other.
PG_PIECE_PHASES = 10_000


def default_run_count(events: int) -> int:
    """About 2,000 events per run, as a busy Autopack run with retries would give."""
    return max(1, math.ceil(events / 2_000))


class RunsAlreadyPresent(ValueError):
    """The runs a seed would create exist already: loading again would duplicate them."""


@dataclass(frozen=True)
class Archetypes:
    """Estimated phases, indexed ``[category, complexity, deliverables - 1, variant]``."""

    categories: tuple[str, ...]
    complexities: tuple[str, ...]
    predicted: np.ndarray  # int64
    selected: np.ndarray  # int64
    deliverables_json: np.ndarray  # object (str)
    medians: np.ndarray  # float64 [category, complexity]: simulated median output tokens
    profile: SimulationProfile
    coefficient_version: str


def _deliverable_paths(category: str, count: int, variant: int) -> list[str]:
    """``count`` file paths a phase of ``category`` would deliver; ``variant`` changes the mix."""
    stem = f"synth_app/{category}_{variant}"
    paths = []
    for i in range(count):
        slot = (i + variant) % 4
        if category == "tests":
            path = f"{stem}/tests/test_unit_{i}.py" if slot != 3 else f"{stem}/tests/conftest.py"
        elif category == "docs":
            path = f"docs/{category}_{variant}/guide_{i}.md"
        elif category == "configuration":
            path = f"{stem}/config/settings_{i}.yaml" if slot else f"{stem}/migrations/{i:04d}_schema.py"
        elif category == "frontend":
            path = f"{stem}/web/Widget{i}.tsx" if slot != 2 else f"{stem}/web/widget_{i}.test.ts"
        else:
            kinds = (f"{stem}/module_{i}.py", f"{stem}/module_{i}.py", f"{stem}/tests/test_module_{i}.py",
                     f"docs/{category}_{variant}/module_{i}.md")
            path = kinds[slot] if count > 1 else f"{stem}/module_{i}.py"
        paths.append(path)
    return paths


@lru_cache(maxsize=4)
def load_archetypes(seeds_dir: Path = REPO_ROOT / "seeds") -> Archetypes:
    """Price every archetype once with the real estimator (``seeds/estimator_coefficients.yaml``)."""
    coefficients = load_coefficients(seeds_dir / "estimator_coefficients.yaml")
    profile = SimulationProfile.load(seeds_dir)
    # A workspace that does not exist: every deliverable is a new file, whatever the current directory.
    estimator = TokenEstimator(coefficients, workspace=seeds_dir / "__no_workspace__")
    categories, complexities = tuple(CATEGORY_WEIGHTS), tuple(COMPLEXITY_WEIGHTS)
    shape = (len(categories), len(complexities), len(DELIVERABLE_WEIGHTS), ARCHETYPE_VARIANTS)
    predicted = np.zeros(shape, dtype=np.int64)
    selected = np.zeros(shape, dtype=np.int64)
    stored = np.empty(shape, dtype=object)
    medians = np.zeros(shape[:2], dtype=np.float64)
    for a, category in enumerate(categories):
        for b, complexity in enumerate(complexities):
            medians[a, b] = profile.median_for(category, complexity)
            for c in range(shape[2]):
                for v in range(ARCHETYPE_VARIANTS):
                    deliverables = _deliverable_paths(category, c + 1, v)
                    estimate = estimator.estimate(deliverables, category, complexity)
                    predicted[a, b, c, v] = estimate.estimated_tokens
                    selected[a, b, c, v] = select_budget(estimate, complexity, coefficients)
                    # Short paths: the writer's 200-character clipping never applies.
                    stored[a, b, c, v] = json.dumps(deliverables[:MAX_STORED_DELIVERABLES])
    return Archetypes(categories, complexities, predicted, selected, stored, medians, profile, coefficients.version)


@dataclass
class SynthChunk:
    """One chunk of generated rows, column by column (numpy arrays / lists)."""

    phases: dict[str, np.ndarray]
    events: dict[str, np.ndarray]


def _draw_phases(rng: np.random.Generator, n: int, arch: Archetypes, legacy_fraction: float) -> dict[str, np.ndarray]:
    """Per-phase draws and the Builder's outcome of up to two attempts, vectorised."""
    profile = arch.profile
    cat_p = np.array(list(CATEGORY_WEIGHTS.values()))
    cx_p = np.array(list(COMPLEXITY_WEIGHTS.values()))
    cat = rng.choice(len(cat_p), size=n, p=cat_p / cat_p.sum())
    cx = rng.choice(len(cx_p), size=n, p=cx_p / cx_p.sum())
    deliverables = rng.choice(len(DELIVERABLE_WEIGHTS), size=n, p=DELIVERABLE_WEIGHTS / DELIVERABLE_WEIGHTS.sum()) + 1
    variant = rng.integers(0, ARCHETYPE_VARIANTS, size=n)
    legacy = rng.random(n) < legacy_fraction
    # The simulated backend: median per group, +45% per extra deliverable, log-normal body, Pareto tail.
    median = arch.medians[cat, cx] * (1 + profile.extra_deliverable_fraction * (deliverables - 1))
    tokens = median * np.exp(rng.normal(0.0, profile.sigma, size=n))
    tail = rng.random(n) < profile.tail_probability
    tokens = np.where(tail, tokens * (rng.pareto(profile.tail_alpha, size=n) + 1.0), tokens)
    wanted = np.maximum(60, np.floor(tokens)).astype(np.int64)
    degenerate = rng.random((2, n)) < profile.degenerate_probability
    malformed = rng.random((2, n)) < profile.malformed_probability
    gaps = rng.exponential(PHASE_GAP_SECONDS, size=n)
    retry_delay = rng.uniform(*RETRY_DELAY_SECONDS, size=n)

    index = (cat, cx, deliverables - 1, variant)
    predicted = arch.predicted[index]
    selected = arch.selected[index]
    # Attempt 1 runs under the selected budget; a truncated one escalates once (Builder rules).
    ceiling1 = np.minimum(selected, MAX_TOKENS_CAP)
    ceiling2 = np.minimum(np.maximum((np.maximum(selected, ceiling1) * ESCALATION_FACTOR).astype(np.int64), selected),
                          MAX_TOKENS_CAP)
    out = []
    for attempt, ceiling in ((0, ceiling1), (1, ceiling2)):
        degenerate_now = degenerate[attempt]
        truncated = ~degenerate_now & (wanted >= ceiling)
        output = np.where(degenerate_now, DEGENERATE_TOKENS, np.minimum(wanted, ceiling))
        stop_max = ~degenerate_now & (wanted > ceiling)
        success = ~degenerate_now & ~truncated & ~malformed[attempt]
        out.append((ceiling, truncated, output, stop_max, success))
    (c1, t1, o1, s1, ok1), (c2, t2, o2, s2, ok2) = out
    second = t1  # only a truncation escalates; a malformed or degenerate answer fails the phase
    recorded1 = o1 >= MIN_VALID_OUTPUT_TOKENS
    recorded2 = second & (o2 >= MIN_VALID_OUTPUT_TOKENS)
    completed = np.where(second, ok2, ok1)
    return {
        "cat": cat, "cx": cx, "deliverables": deliverables, "variant": variant, "legacy": legacy,
        "predicted": predicted, "selected": selected, "gaps": gaps, "retry_delay": retry_delay,
        "ceiling": np.stack([c1, c2]), "truncated": np.stack([t1, t2]), "output": np.stack([o1, o2]),
        "stop_max": np.stack([s1, s2]), "success": np.stack([ok1, ok2]),
        "recorded": np.stack([recorded1, recorded2]), "attempts": 1 + second.astype(np.int64),
        "completed": completed,
    }


@dataclass
class _Cursor:
    """Where generation stands between chunks."""

    events_done: int = 0
    phases_done: int = 0
    clock_us: int = 0  # microseconds since the start time
    run: int = -1
    run_first_phase: int = 0


def generate_chunks(
    total_events: int,
    *,
    runs: int,
    seed: int,
    start: datetime = DEFAULT_START,
    legacy_fraction: float = DEFAULT_LEGACY_FRACTION,
    seeds_dir: Path = REPO_ROOT / "seeds",
) -> Iterator[SynthChunk]:
    """Yield chunks of phases and their events until exactly ``total_events`` events exist.

    Phases go to runs in order: a phase belongs to run ``events_before_it * runs // total_events``,
    so the runs are consecutive blocks of about equal size. Phase ids restart in every run
    (``phase-00001``...), as Autopack's do.
    """
    if total_events < 1:
        raise ValueError(f"the number of events must be at least 1, got {total_events}")
    runs = max(1, min(int(runs), total_events))
    arch = load_archetypes(seeds_dir)
    labels = np.array(arch.categories, dtype=object)
    legacy_labels = np.array([LEGACY_SPELLINGS.get(c, c) for c in arch.categories], dtype=object)
    complexities = np.array(arch.complexities, dtype=object)
    # Naive datetimes are UTC, as the telemetry columns hold them.
    start_us = int((start if start.tzinfo else start.replace(tzinfo=timezone.utc)).timestamp() * 1_000_000)
    state = _Cursor()
    chunk_number = 0
    while state.events_done < total_events:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, chunk_number])))
        chunk_number += 1
        draws = _draw_phases(rng, PHASES_PER_CHUNK, arch, legacy_fraction)
        recorded = draws["recorded"]
        per_phase = recorded.sum(axis=0)
        events_before = state.events_done + np.concatenate([[0], np.cumsum(per_phase)[:-1]])
        # Stop at the phase holding the last wanted event; that phase may lose its second attempt.
        keep_phases = int(np.searchsorted(events_before, total_events, side="left"))
        keep_phases = max(1, min(keep_phases, PHASES_PER_CHUNK))
        sl = slice(0, keep_phases)
        events_before = events_before[sl]
        run_of_phase = (events_before * runs) // total_events

        # Phase start times (µs after `start`), cumulative over the whole load.
        gaps_us = np.round(draws["gaps"][sl] * 1_000_000).astype(np.int64)
        started_us = state.clock_us + np.cumsum(gaps_us)
        state.clock_us = int(started_us[-1])
        retry_us = started_us + np.round(draws["retry_delay"][sl] * 1_000_000).astype(np.int64)

        # Phase number within its run.
        global_phase = state.phases_done + np.arange(keep_phases)
        new_run = np.empty(keep_phases, dtype=bool)
        new_run[0] = run_of_phase[0] != state.run
        new_run[1:] = run_of_phase[1:] != run_of_phase[:-1]
        first_of_run = np.where(new_run, global_phase, -1)
        first_of_run[0] = global_phase[0] if new_run[0] else state.run_first_phase
        first_of_run = np.maximum.accumulate(first_of_run)
        phase_index = global_phase - first_of_run
        state.run = int(run_of_phase[-1])
        state.run_first_phase = int(first_of_run[-1])

        # Events: attempt 1 then attempt 2 of each phase, in phase order, cut at total_events.
        rec = recorded[:, sl]
        phase_of_event = np.repeat(np.arange(keep_phases), rec.sum(axis=0))
        # A phase's first recorded event is its first attempt: attempt 1 always reaches 50 tokens unless
        # it was degenerate, and a degenerate answer is never retried.
        first_in_phase = np.ones(len(phase_of_event), dtype=bool)
        first_in_phase[1:] = phase_of_event[1:] != phase_of_event[:-1]
        attempt_of_event = np.where(first_in_phase, 0, 1)
        room = total_events - state.events_done
        if len(phase_of_event) > room:
            phase_of_event = phase_of_event[:room]
            attempt_of_event = attempt_of_event[:room]

        p, a = phase_of_event, attempt_of_event
        cat = draws["cat"][sl][p]
        category = np.where(draws["legacy"][sl][p], legacy_labels[cat], labels[cat])
        predicted = draws["predicted"][sl][p]
        actual = draws["output"][a, p]
        ceiling = draws["ceiling"][a, p]
        truncated = draws["truncated"][a, p]
        success = draws["success"][a, p]
        event_us = np.where(a == 0, started_us[p], retry_us[p])
        smape, waste, under = _writer_metrics(predicted, actual)
        events = {
            "run": run_of_phase[p],
            "phase_index": phase_index[p],
            "timestamp_us": start_us + event_us,
            "category": category,
            "complexity": complexities[draws["cx"][sl][p]],
            "deliverable_count": draws["deliverables"][sl][p],
            "deliverables_json": _archetype_json(draws, arch, sl, p),
            "predicted_output_tokens": predicted,
            "actual_output_tokens": actual,
            "selected_budget": draws["selected"][sl][p],
            "actual_max_tokens": ceiling,
            "success": success,
            "truncated": truncated,
            "stop_reason": np.where(draws["stop_max"][a, p], "max_tokens", "end_turn").astype(object),
            "smape_percent": smape,
            "waste_ratio": waste,
            "underestimated": under,
            "attempt": a + 1,
            "phase_completed": draws["completed"][sl][p],
            "event_number": state.events_done + np.arange(len(p)),
        }
        # Phase rows: state from the attempts that exist (a phase cut at the end is still running).
        attempts = draws["attempts"][sl].copy()
        completed = draws["completed"][sl].copy()
        if len(p) and len(p) < rec.sum():  # the load ends inside this phase: it has not completed
            last = int(p[-1])
            attempts[last] = int((p == last).sum())
            completed[last] = False
            events["phase_completed"] = np.where(p == last, False, events["phase_completed"])
        last_us = np.where(attempts == 2, retry_us, started_us)
        output_sum = draws["output"][0, sl] + np.where(attempts == 2, draws["output"][1, sl], 0)
        phases = {
            "run": run_of_phase,
            "phase_index": phase_index,
            "category": np.where(draws["legacy"][sl], legacy_labels[draws["cat"][sl]], labels[draws["cat"][sl]]),
            "complexity": complexities[draws["cx"][sl]],
            "deliverables": draws["deliverables"][sl],
            "started_us": start_us + started_us,
            "last_us": start_us + last_us,
            "attempts": attempts,
            "completed": completed,
            "tokens_used": output_sum,
            "escalated": attempts == 2,
        }
        state.events_done += len(p)
        state.phases_done += keep_phases
        yield SynthChunk(phases=phases, events=events)


def _archetype_json(draws: dict[str, np.ndarray], arch: Archetypes, sl: slice, p: np.ndarray) -> np.ndarray:
    index = (draws["cat"][sl][p], draws["cx"][sl][p], draws["deliverables"][sl][p] - 1, draws["variant"][sl][p])
    return arch.deliverables_json[index]


def _writer_metrics(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SMAPE, waste ratio and underestimated exactly as the writer's ``estimation_metrics``."""
    p = predicted.astype(np.float64)
    a = actual.astype(np.float64)
    smape = np.abs(a - p) / np.maximum(1.0, (np.abs(a) + np.abs(p)) / 2) * 100
    with np.errstate(divide="ignore", invalid="ignore"):
        waste = p / a
    return smape, waste, actual > predicted  # both are always positive here


# -- loading ----------------------------------------------------------------------------------------


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
    seconds: float
    events_per_second: float
    method: str = ""
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    coefficient_version: str = ""
    # Seconds per stage: "generate" (rows built in the helper thread, overlapping the rest),
    # "phases" and "events" (the database taking the rows; they overlap on a PostgreSQL append with two
    # connections), "indexes" (rebuilt after a fresh load).
    timings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def run_id_for(seed: int, run: int) -> str:
    return f"synth-{seed}-r{run:05d}"


def _latest_event_time(engine: Engine) -> datetime | None:
    table = TokenEstimationV2Event.__table__
    with engine.connect() as connection:
        latest = connection.execute(select(func.max(table.c.timestamp))).scalar()
    if isinstance(latest, str):  # a database written without SQLAlchemy's type processing
        latest = datetime.fromisoformat(latest)
    return latest


def _check_runs_absent(engine: Engine, seed: int, runs: int) -> None:
    ids = [run_id_for(seed, 0), run_id_for(seed, runs - 1)]
    with engine.connect() as connection:
        found = connection.execute(select(Run.__table__.c.id).where(Run.__table__.c.id.in_(ids))).scalars().all()
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
    seeds_dir: Path = REPO_ROOT / "seeds",
) -> SynthSummary:
    """Fill the (migrated) telemetry database behind ``engine`` with ``events`` synthetic events.

    Creates ``runs`` runs (default: one per ~2,000 events) named ``synth-<seed>-rNNNNN``, one tier
    each, a phase row for every phase and the events. Refuses with :class:`RunsAlreadyPresent` when
    the seed's runs exist. ``progress(events_written, events)`` is called after every chunk.

    Into an empty events table the load is one transaction that drops the secondary indexes (and, on
    PostgreSQL, the foreign keys), copies the rows and builds them again before committing, the
    usual way to populate a database; an interruption rolls all of it back. (On SQLite that needs the
    only connection to the file; with another one open, the load is incremental as below.) Into a
    table that holds events already, rows are inserted with the indexes in place, in transactions of
    500k events. On SQLite an interruption keeps the transactions committed before it; on PostgreSQL
    the loader then deletes its runs, which cascades to their tiers, phases and events (if the server
    cannot be reached for that either, the seed's runs stay and loading the seed again is refused).
    """
    if events < 1:
        raise ValueError(f"the number of events must be at least 1, got {events}")
    runs = max(1, min(int(runs or default_run_count(events)), events))
    _check_runs_absent(engine, seed, runs)
    latest = _latest_event_time(engine)
    # Continue a minute after the newest stored event, so a second batch reads as later use.
    start = DEFAULT_START if latest is None else latest.replace(tzinfo=None, microsecond=0) + timedelta(minutes=1)
    chunks = generate_chunks(events, runs=runs, seed=seed, start=start,
                             legacy_fraction=legacy_fraction, seeds_dir=seeds_dir)
    loader = _Loader(seed, runs, events, progress)
    backend = engine.dialect.name
    began = time.perf_counter()
    if backend == "sqlite":
        loader.load_sqlite(engine, chunks)
    elif backend == "postgresql":
        loader.load_postgresql(engine, chunks)
    else:
        raise ValueError(f"bulk loading supports SQLite and PostgreSQL, not {backend}")
    seconds = time.perf_counter() - began
    return SynthSummary(
        database=engine.url.render_as_string(hide_password=True),
        backend=backend,
        seed=seed,
        events=loader.events_written,
        phases=loader.phases_written,
        runs=runs,
        first_run_id=run_id_for(seed, 0),
        last_run_id=run_id_for(seed, runs - 1),
        seconds=round(seconds, 3),
        events_per_second=round(loader.events_written / seconds, 1) if seconds > 0 else 0.0,
        method=loader.method,
        first_timestamp=_text_timestamps(np.array([loader.first_us]))[0] if loader.first_us is not None else None,
        last_timestamp=_text_timestamps(np.array([loader.last_us]))[0] if loader.last_us is not None else None,
        coefficient_version=load_archetypes(seeds_dir).coefficient_version,
        timings={k: round(v, 3) for k, v in loader.timings.items()},
    )


# -- row columns --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Const:
    """A value every synthetic row shares: a literal in the SQL, a repeated column in a COPY."""

    value: object


# (column, source): the source names a column of :func:`_chunk_columns`, or is a constant.
_EVENT_SPEC: tuple[tuple[str, str | _Const], ...] = (
    ("run_id", "run_id"), ("phase_id", "phase_id"), ("timestamp", "timestamp"), ("category", "category"),
    ("complexity", "complexity"), ("deliverable_count", "deliverable_count"),
    ("deliverables_json", "deliverables_json"), ("predicted_output_tokens", "predicted_output_tokens"),
    ("actual_output_tokens", "actual_output_tokens"), ("selected_budget", "selected_budget"),
    ("actual_max_tokens", "actual_max_tokens"), ("success", "success"), ("truncated", "truncated"),
    ("stop_reason", "stop_reason"), ("model", _Const(SYNTH_MODEL)), ("smape_percent", "smape_percent"),
    ("waste_ratio", "waste_ratio"), ("underestimated", "underestimated"), ("is_truncated_output", "truncated"),
    ("is_sot_file", _Const(False)), ("created_at", "timestamp"), ("attempt", "attempt"),
    ("event_uid", "event_uid"), ("actual_is_total_tokens", _Const(False)), ("phase_completed", "phase_completed"),
)
_PHASE_SPEC: tuple[tuple[str, str | _Const], ...] = (
    ("phase_id", "phase_id"), ("run_id", "run_id"), ("tier_id", "tier_id"), ("phase_index", "phase_index"),
    ("name", "phase_id"), ("state", "state"), ("task_category", "category"), ("complexity", "complexity"),
    ("builder_mode", _Const("full_file")), ("max_builder_attempts", _Const(3)), ("max_auditor_attempts", _Const(2)),
    ("incident_token_cap", _Const(50_000)), ("builder_attempts", "attempts"), ("auditor_attempts", _Const(0)),
    ("tokens_used", "tokens_used"), ("minor_issues_count", _Const(0)), ("major_issues_count", _Const(0)),
    ("issue_state", _Const("no_issues")), ("quality_blocked", _Const(False)), ("retry_attempt", "retries"),
    ("revision_epoch", _Const(0)), ("escalation_level", "retries"), ("last_attempt_timestamp", "last"),
    ("last_failure_reason", "failure"), ("created_at", "started"), ("updated_at", "last"),
    ("started_at", "started"), ("completed_at", "completed_at"),
)
_RUN_COLUMNS = (
    "id", "state", "created_at", "updated_at", "started_at", "completed_at", "safety_profile", "run_scope",
    "token_cap", "max_phases", "max_duration_minutes", "tokens_used", "ci_runs_used", "minor_issues_count",
    "major_issues_count", "promotion_eligible_to_main", "goal_anchor",
)
_TIER_COLUMNS = (
    "tier_id", "run_id", "tier_index", "name", "state", "token_cap", "ci_run_cap", "max_major_issues_tolerated",
    "tokens_used", "ci_runs_used", "minor_issues_count", "major_issues_count", "cleanliness", "created_at",
    "updated_at",
)
_FAILURE_TEXT = "synthetic: the phase did not complete"


def _fixed_width_text(codes: np.ndarray) -> np.ndarray:
    """A (rows, width) uint32 array of code points as a numpy unicode array of that width."""
    codes = np.ascontiguousarray(codes, dtype=np.uint32)
    return codes.view(f"<U{codes.shape[1]}").ravel()


def _text_timestamps(us: np.ndarray) -> list[str]:
    """Microsecond UTC timestamps as SQLAlchemy's SQLite DATETIME text (``YYYY-MM-DD HH:MM:SS.ffffff``)."""
    text = np.datetime_as_string(np.asarray(us, dtype=np.int64).astype("datetime64[us]"), unit="us")
    codes = np.ascontiguousarray(text).view(np.uint32).reshape(len(text), -1).copy()
    codes[:, 10] = ord(" ")  # numpy writes the ISO "T"
    return _fixed_width_text(codes).tolist()


def _numbered(prefix: str, numbers: np.ndarray, digits: int) -> np.ndarray:
    """``prefix`` + zero-padded ``numbers``, built as code points without a Python loop."""
    head = np.frombuffer(prefix.encode("utf-32-le"), dtype=np.uint32)
    codes = np.empty((len(numbers), len(head) + digits), dtype=np.uint32)
    codes[:, : len(head)] = head
    rest = np.asarray(numbers, dtype=np.int64).copy()
    for position in range(len(head) + digits - 1, len(head) - 1, -1):
        codes[:, position] = 48 + rest % 10
        rest //= 10
    return _fixed_width_text(codes).astype(object)


def _chunk_columns(chunk: SynthChunk, run_ids: np.ndarray, tier_pk: np.ndarray, seed: int) -> tuple[dict, dict]:
    """The phases and events of one chunk as named numpy columns (timestamps as µs since the epoch)."""
    ph, ev = chunk.phases, chunk.events
    completed = ph["completed"]
    retries = ph["attempts"] - 1
    phase_cols = {
        "phase_id": _numbered("phase-", ph["phase_index"] + 1, 5),
        "run_id": run_ids[ph["run"]],
        "tier_id": tier_pk[ph["run"]],
        "phase_index": ph["phase_index"],
        "state": np.where(completed, "COMPLETE", "FAILED").astype(object),
        "category": ph["category"],
        "complexity": ph["complexity"],
        "attempts": ph["attempts"],
        "tokens_used": ph["tokens_used"],
        "retries": retries,
        "last": ph["last_us"],
        "started": ph["started_us"],
        "failure": np.where(completed, None, _FAILURE_TEXT),
        "completed_at": np.where(completed, ph["last_us"], -1),  # -1: NULL
    }
    event_cols = {
        "run_id": run_ids[ev["run"]],
        "phase_id": _numbered("phase-", ev["phase_index"] + 1, 5),
        "timestamp": ev["timestamp_us"],
        "category": ev["category"],
        "complexity": ev["complexity"],
        "deliverable_count": ev["deliverable_count"],
        "deliverables_json": ev["deliverables_json"],
        "predicted_output_tokens": ev["predicted_output_tokens"],
        "actual_output_tokens": ev["actual_output_tokens"],
        "selected_budget": ev["selected_budget"],
        "actual_max_tokens": ev["actual_max_tokens"],
        "success": ev["success"],
        "truncated": ev["truncated"],
        "stop_reason": ev["stop_reason"],
        "smape_percent": ev["smape_percent"],
        "waste_ratio": ev["waste_ratio"],
        "underestimated": ev["underestimated"],
        "attempt": ev["attempt"],
        "event_uid": _numbered(f"synth-{seed}-", ev["event_number"], 10),
        "phase_completed": ev["phase_completed"],
    }
    return phase_cols, event_cols


_TIMESTAMP_SOURCES = {"timestamp", "last", "started", "completed_at"}


def _python_columns(columns: dict[str, np.ndarray], spec: tuple) -> list[list]:
    """The distinct sources of ``spec`` as Python lists, in order of first use (for executemany)."""
    out = []
    for name in _sources(spec):
        values = columns[name]
        if name in _TIMESTAMP_SOURCES:
            text = _text_timestamps(np.maximum(values, 0))
            if name == "completed_at":
                text = [t if keep else None for t, keep in zip(text, (values >= 0).tolist())]
            out.append(text)
        else:
            out.append(values.tolist())
    return out


def _sources(spec: tuple) -> list[str]:
    seen: list[str] = []
    for _column, source in spec:
        if isinstance(source, str) and source not in seen:
            seen.append(source)
    return seen


def _sql_literal(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _sqlite_insert(table: str, spec: tuple) -> str:
    """INSERT with constants inlined and one numbered parameter per distinct source."""
    numbers = {name: i + 1 for i, name in enumerate(_sources(spec))}
    values = [_sql_literal(s.value) if isinstance(s, _Const) else f"?{numbers[s]}" for _c, s in spec]
    return f"INSERT INTO {table} ({', '.join(c for c, _s in spec)}) VALUES ({', '.join(values)})"


def _arrow_columns(columns: dict[str, np.ndarray], spec: tuple, n: int) -> pa.Table:
    arrays = {}
    for column, source in spec:
        if isinstance(source, _Const):
            arrays[column] = pa.array(np.full(n, source.value, dtype=object if isinstance(source.value, str) else None))
        elif source in _TIMESTAMP_SOURCES:
            values = columns[source]
            arrays[column] = pa.array(values, type=pa.timestamp("us"), mask=values < 0)
        else:
            values = columns[source]
            arrays[column] = pa.array(values, from_pandas=True) if values.dtype == object else pa.array(values)
    return pa.table(arrays)


def _csv_bytes(table: pa.Table) -> bytes:
    """A chunk as CSV for ``COPY ... (FORMAT csv)``: NULL is an unquoted empty field."""
    sink = io.BytesIO()
    pa_csv.write_csv(table, sink, write_options=pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    return sink.getvalue()


def _run_rows(seed: int, runs: int, start_text: str) -> list[tuple]:
    goal = f"synthetic telemetry (autopack-telemetry synth, seed {seed})"
    return [
        (run_id_for(seed, k), "DONE_SUCCESS", start_text, start_text, start_text, None, "normal", "multi_tier",
         5_000_000, 0, 120, 0, 0, 0, 0, "false", goal)
        for k in range(runs)
    ]


def _tier_rows(run_ids: list[str], start_text: str) -> list[tuple]:
    return [("T1", rid, 0, "Synthetic tier", "COMPLETE", 5_000_000, 20, 0, 0, 0, 0, 0, "clean", start_text, start_text)
            for rid in run_ids]


def _tier_keys(rows: list[tuple], run_ids: np.ndarray) -> np.ndarray:
    by_run = dict(rows)
    return np.array([by_run[r] for r in run_ids.tolist()], dtype=np.int64)


class _RunStats:
    """Per-run phase count, tokens and last activity, accumulated over chunks."""

    def __init__(self, runs: int) -> None:
        self.phases = np.zeros(runs, dtype=np.int64)
        self.tokens = np.zeros(runs, dtype=np.int64)
        self.last_us = np.zeros(runs, dtype=np.int64)

    def add(self, chunk: SynthChunk) -> None:
        ph = chunk.phases
        self.phases += np.bincount(ph["run"], minlength=len(self.phases))
        self.tokens += np.bincount(ph["run"], weights=ph["tokens_used"], minlength=len(self.phases)).astype(np.int64)
        np.maximum.at(self.last_us, ph["run"], ph["last_us"])

    def rows(self, run_ids: np.ndarray) -> list[tuple]:
        last = _text_timestamps(self.last_us)
        return [
            (int(n), int(min(t, 2**31 - 1)), stamp, stamp, rid)
            for n, t, stamp, rid in zip(self.phases.tolist(), self.tokens.tolist(), last, run_ids.tolist())
        ]


class _Loader:
    """Writes generated chunks into one database and counts what it wrote."""

    def __init__(self, seed: int, runs: int, total: int, progress: Progress | None) -> None:
        self.seed, self.runs, self.total, self.progress = seed, runs, total, progress
        self.run_ids = np.array([run_id_for(seed, k) for k in range(runs)], dtype=object)
        self.stats = _RunStats(runs)
        self.events_written = 0
        self.phases_written = 0
        self.first_us: int | None = None
        self.last_us: int | None = None
        self.method = ""
        self.timings = {"generate": 0.0, "phases": 0.0, "events": 0.0, "indexes": 0.0}

    def _timed(self, stage: str, work: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        try:
            return work()
        finally:
            self.timings[stage] += time.perf_counter() - began

    def _written(self, chunk: SynthChunk) -> None:
        self.stats.add(chunk)
        stamps = chunk.events["timestamp_us"]
        if len(stamps):
            self.first_us = int(stamps.min()) if self.first_us is None else min(self.first_us, int(stamps.min()))
            self.last_us = int(stamps.max()) if self.last_us is None else max(self.last_us, int(stamps.max()))
        self.events_written += len(chunk.events["run"])
        self.phases_written += len(chunk.phases["run"])
        if self.progress is not None:
            self.progress(self.events_written, self.total)

    # SQLite ----------------------------------------------------------------------------------------

    def load_sqlite(self, engine: Engine, chunks: Iterator[SynthChunk]) -> None:
        path = _sqlite_path(engine)
        engine.dispose()  # our own pooled connections let go of the file while the loader has it
        connection = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            empty = connection.execute("SELECT 1 FROM token_estimation_v2_events LIMIT 1").fetchone() is None
            fresh = empty and _leave_wal(connection)
            for pragma in SQLITE_LOAD_PRAGMAS:
                connection.execute(pragma)
            self.method = ("sqlite: one transaction, secondary indexes rebuilt after the rows" if fresh
                           else "sqlite: executemany with indexes in place, 500k events per transaction")
            cursor = connection.cursor()
            cursor.execute("BEGIN")
            chunks = iter(chunks)
            first = next(chunks)
            start_text = _text_timestamps(first.phases["started_us"][:1])[0]
            cursor.executemany(f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(_RUN_COLUMNS))})", _run_rows(self.seed, self.runs, start_text))
            cursor.executemany(f"INSERT INTO tiers ({', '.join(_TIER_COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(_TIER_COLUMNS))})", _tier_rows(self.run_ids.tolist(), start_text))
            tier_pk = _tier_keys(cursor.execute(
                "SELECT run_id, id FROM tiers WHERE tier_id = 'T1' AND run_id >= ? AND run_id <= ?",
                (self.run_ids[0], self.run_ids[-1])).fetchall(), self.run_ids)
            indexes = []
            if fresh:
                indexes = cursor.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
                    "AND tbl_name IN ('phases', 'token_estimation_v2_events')").fetchall()
                for name, _sql in indexes:
                    cursor.execute(f'DROP INDEX "{name}"')
            phase_sql = _sqlite_insert("phases", _PHASE_SPEC)
            event_sql = _sqlite_insert("token_estimation_v2_events", _EVENT_SPEC)

            def rows(chunk: SynthChunk) -> tuple[list, list]:
                def build() -> tuple[list, list]:
                    phase_cols, event_cols = _chunk_columns(chunk, self.run_ids, tier_pk, self.seed)
                    return _python_columns(phase_cols, _PHASE_SPEC), _python_columns(event_cols, _EVENT_SPEC)

                return self._timed("generate", build)

            in_transaction = 0
            for chunk, (phase_rows, event_rows) in prefetch(_chain(first, chunks), rows):
                self._timed("phases", lambda: cursor.executemany(phase_sql, zip(*phase_rows)))  # noqa: B023
                self._timed("events", lambda: cursor.executemany(event_sql, zip(*event_rows)))  # noqa: B023
                self._written(chunk)
                in_transaction += len(chunk.events["run"])
                if not fresh and in_transaction >= SQLITE_TRANSACTION_EVENTS:
                    cursor.execute("COMMIT")
                    cursor.execute("BEGIN")
                    in_transaction = 0
            if indexes:
                # CREATE INDEX's sorter keeps runs of cache_size bytes in memory: small runs are sorted
                # and merged by the worker threads (PRAGMA threads) while this one scans the table.
                cursor.execute(f"PRAGMA cache_size=-{SQLITE_INDEX_SORT_KIB}")
            for _name, sql in indexes:
                self._timed("indexes", lambda: cursor.execute(sql))  # noqa: B023
            cursor.executemany("UPDATE runs SET max_phases = ?, tokens_used = ?, completed_at = ?, updated_at = ? "
                               "WHERE id = ?", self.stats.rows(self.run_ids))
            cursor.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        finally:
            try:
                connection.execute("PRAGMA journal_mode=WAL")  # what make_engine's connections use
            except sqlite3.OperationalError:
                pass  # someone connected meanwhile; make_engine's connections switch it back to WAL
            finally:
                connection.close()

    # PostgreSQL ------------------------------------------------------------------------------------

    def load_postgresql(self, engine: Engine, chunks: Iterator[SynthChunk]) -> None:
        raw = engine.raw_connection()
        streams = _PgStreams(raw.driver_connection)
        try:
            cursor = streams.cursor
            _pg_begin(cursor, skip_key_checks=False)
            cursor.execute("SELECT NOT EXISTS (SELECT 1 FROM token_estimation_v2_events)")
            fresh = bool(cursor.fetchone()[0])
            # An append keeps every index, so the server's per-row work is what limits it. Events then go
            # through a second connection, in parallel with the phases (one backend per core); that
            # needs the foreign-key triggers off, as the events' phases are not committed yet.
            if not fresh and _may_skip_key_checks(cursor):
                streams.add_events_connection(engine)
            if fresh:
                self.method = "postgresql: COPY in one transaction, indexes and foreign keys rebuilt after the rows"
            else:
                self.method = "postgresql: COPY with indexes in place, 500k events per transaction" + (
                    ", events on a second connection" if streams.parallel else "")
            chunks = iter(chunks)
            first = next(chunks)
            start_text = _text_timestamps(first.phases["started_us"][:1])[0]
            with cursor.copy(f"COPY runs ({', '.join(_RUN_COLUMNS)}) FROM STDIN") as copy:
                for row in _run_rows(self.seed, self.runs, start_text):
                    copy.write_row(row)
            with cursor.copy(f"COPY tiers ({', '.join(_TIER_COLUMNS)}) FROM STDIN") as copy:
                for row in _tier_rows(self.run_ids.tolist(), start_text):
                    copy.write_row(row)
            cursor.execute("SELECT run_id, id FROM tiers WHERE tier_id = 'T1' AND run_id = ANY(%s)",
                           (self.run_ids.tolist(),))
            tier_pk = _tier_keys(cursor.fetchall(), self.run_ids)
            rebuild = _drop_for_load(cursor) if fresh else []

            def encode(chunk: SynthChunk) -> tuple[bytes, bytes]:
                def build() -> tuple[bytes, bytes]:
                    phase_cols, event_cols = _chunk_columns(chunk, self.run_ids, tier_pk, self.seed)
                    return (_csv_bytes(_arrow_columns(phase_cols, _PHASE_SPEC, len(chunk.phases["run"]))),
                            _csv_bytes(_arrow_columns(event_cols, _EVENT_SPEC, len(chunk.events["run"]))))

                return self._timed("generate", build)

            in_transaction = 0
            # Pieces smaller than a chunk: the first COPY starts sooner, the streams wait less for each other.
            pieces = _sliced(_chain(first, chunks), PG_PIECE_PHASES)
            for chunk, (phase_csv, event_csv) in prefetch(pieces, encode):
                streams.copy(phase_csv, event_csv, self._timed)
                self._written(chunk)
                in_transaction += len(chunk.events["run"])
                if not fresh and in_transaction >= PG_TRANSACTION_EVENTS:
                    streams.commit()
                    in_transaction = 0
            if rebuild:
                # Index builds sort in memory instead of spilling to disk (this transaction only).
                cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
            for statement in rebuild:
                self._timed("indexes", lambda: cursor.execute(statement))  # noqa: B023
            cursor.executemany(
                "UPDATE runs SET max_phases = %s, tokens_used = %s, completed_at = %s, updated_at = %s "
                "WHERE id = %s",
                self.stats.rows(self.run_ids),
            )
            streams.commit(last=True)
        except BaseException:
            try:
                streams.rollback()
            finally:
                if streams.committed:
                    _undo_load(raw.driver_connection, self.run_ids.tolist())
            raise
        finally:
            streams.close()
            raw.close()


_PHASE_COPY = f"COPY phases ({', '.join(c for c, _s in _PHASE_SPEC)}) FROM STDIN WITH (FORMAT csv)"
_EVENT_COPY = (f"COPY token_estimation_v2_events ({', '.join(c for c, _s in _EVENT_SPEC)}) "
               "FROM STDIN WITH (FORMAT csv)")


class _PgStreams:
    """The load's PostgreSQL connections: phases (and everything else) on the first; events on a
    second one when :meth:`add_events_connection` was called, copied by a worker thread meanwhile.

    Each batch commits the first connection, then the second, so whoever reads between the two
    commits sees phases without their events yet, never events without their phases, and event ids
    (one sequence, one connection) become visible in ascending order as the columnar refresh expects.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        self.events_raw: Any = None
        self.events_cursor = self.cursor
        self.worker: ThreadPoolExecutor | None = None
        self.committed = False  # a batch of this load is committed: a failure must undo it

    @property
    def parallel(self) -> bool:
        return self.events_raw is not None

    def add_events_connection(self, engine: Engine) -> None:
        self.events_raw = engine.raw_connection()
        self.events_cursor = self.events_raw.driver_connection.cursor()
        _pg_begin(self.events_cursor, skip_key_checks=True)
        _pg_begin(self.cursor, skip_key_checks=True)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synth-events")

    def copy(self, phase_csv: bytes, event_csv: bytes, timed: Callable[[str, Callable[[], Any]], Any]) -> None:
        if self.worker is None:
            timed("phases", lambda: _copy(self.cursor, _PHASE_COPY, phase_csv))
            timed("events", lambda: _copy(self.cursor, _EVENT_COPY, event_csv))
            return
        events = self.worker.submit(timed, "events", lambda: _copy(self.events_cursor, _EVENT_COPY, event_csv))
        try:
            timed("phases", lambda: _copy(self.cursor, _PHASE_COPY, phase_csv))
        except BaseException:
            wait([events])  # its connection must be idle before the rollback
            raise
        events.result()

    def commit(self, *, last: bool = False) -> None:
        self.connection.commit()
        self.committed = True
        if self.parallel:
            self.events_raw.driver_connection.commit()
        if not last:
            _pg_begin(self.cursor, skip_key_checks=self.parallel)
            if self.parallel:
                _pg_begin(self.events_cursor, skip_key_checks=True)

    def rollback(self) -> None:
        try:
            self.connection.rollback()
        finally:
            if self.parallel:
                self.events_raw.driver_connection.rollback()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()
        self.cursor.close()
        if self.events_raw is not None:
            self.events_cursor.close()
            self.events_raw.close()


def _pg_begin(cursor: Any, *, skip_key_checks: bool) -> None:
    """Settings for the transaction just begun (``SET LOCAL`` ends with it)."""
    # A crash may lose the last batches, which are copies of generated data anyway.
    cursor.execute("SET LOCAL synchronous_commit = off")
    if skip_key_checks:
        # The generator writes the runs, tiers and phases every event refers to (the tests check the
        # keys), as the SQLite load does with foreign_keys=OFF; this also saves a lookup per key and row.
        cursor.execute("SET LOCAL session_replication_role = replica")


def _may_skip_key_checks(cursor: Any) -> bool:
    """Whether this role may turn the foreign-key triggers off (superuser, or granted the setting)."""
    from psycopg.errors import InsufficientPrivilege

    cursor.execute("SAVEPOINT synth_probe")
    try:
        cursor.execute("SET LOCAL session_replication_role = replica")
    except InsufficientPrivilege:
        cursor.execute("ROLLBACK TO SAVEPOINT synth_probe")
        cursor.execute("RELEASE SAVEPOINT synth_probe")
        return False
    cursor.execute("ROLLBACK TO SAVEPOINT synth_probe")  # the setting is made per stream, per batch
    cursor.execute("RELEASE SAVEPOINT synth_probe")
    return True


def _undo_load(connection: Any, run_ids: list[str]) -> None:
    """Delete the load's runs after a failure that left batches committed; the keys cascade to tiers,
    phases and events. Best effort: when the server is unreachable too, the committed rows stay, and
    loading the same seed again is refused (:class:`RunsAlreadyPresent`)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM runs WHERE id = ANY(%s)", (run_ids,))
        connection.commit()
    except Exception:  # the original failure is the one to report
        logger.warning("could not remove the partly loaded synthetic runs %s .. %s", run_ids[0], run_ids[-1],
                       exc_info=True)


# Settings of the loader's own connection. The rows are copies of generated data, so a crash may lose
# them (synchronous=OFF); the keys are checked by the tests, not per row. A modest page cache: a large
# one only defers writing every new page to the commit, after paying to allocate it. Temporary files
# (not memory) let CREATE INDEX's sorter hand sorted runs to the worker threads; with
# temp_store=MEMORY it sorts everything at the end, on the one thread.
SQLITE_LOAD_PRAGMAS = ("PRAGMA synchronous=OFF", "PRAGMA foreign_keys=OFF", "PRAGMA cache_size=-65536",
                        "PRAGMA temp_store=FILE", "PRAGMA threads=2")


def _leave_wal(connection: sqlite3.Connection) -> bool:
    """Switch to a rollback journal for a one-transaction load; False if another connection is open.

    A rollback journal keeps the load crash-safe without the WAL holding a copy of every new page.
    SQLite refuses the switch ("database is locked", at once) while any other connection has the
    file open; the load then stays incremental, in WAL mode.
    """
    try:
        return connection.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    except sqlite3.OperationalError:
        return False


def _copy(cursor: Any, statement: str, data: bytes) -> None:
    with cursor.copy(statement) as copy:
        copy.write(data)


def _drop_for_load(cursor: Any) -> list[str]:
    """Drop the secondary indexes and foreign keys of phases and events; return what rebuilds them.

    Runs inside the load's transaction (PostgreSQL DDL is transactional), so a failed load leaves
    every index and constraint as it was. Indexes backing a primary key or unique constraint stay.
    """
    tables = ("phases", "token_estimation_v2_events")
    cursor.execute(
        "SELECT c.conname, c.conrelid::regclass::text, pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "WHERE c.contype = 'f' AND c.conrelid = ANY(%s::regclass[]) ORDER BY c.conname",
        (list(tables),),
    )
    foreign_keys = cursor.fetchall()
    cursor.execute(
        "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid) FROM pg_index i "
        "WHERE i.indrelid = ANY(%s::regclass[]) AND NOT EXISTS "
        "(SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) ORDER BY 1",
        (list(tables),),
    )
    indexes = cursor.fetchall()
    for name, table, _definition in foreign_keys:
        cursor.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
    for name, _definition in indexes:
        cursor.execute(f"DROP INDEX {name}")
    return [definition for _name, definition in indexes] + [
        f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}' for name, table, definition in foreign_keys
    ]


def _chain(first: SynthChunk, rest: Iterator[SynthChunk]) -> Iterator[SynthChunk]:
    yield first
    yield from rest


def _sliced(chunks: Iterator[SynthChunk], phases: int) -> Iterator[SynthChunk]:
    """The chunks cut into pieces of ``phases`` phases, each with the events of those phases."""
    for chunk in chunks:
        ph, ev = chunk.phases, chunk.events
        # (run, phase number) grows along both tables, so one search finds where a piece's events start.
        phase_keys = (ph["run"] << 32) + ph["phase_index"]
        event_keys = (ev["run"] << 32) + ev["phase_index"]
        starts = list(range(0, len(phase_keys), phases))
        event_starts = np.searchsorted(event_keys, phase_keys[starts]).tolist() + [len(event_keys)]
        for i, start in enumerate(starts):
            a, b = event_starts[i], event_starts[i + 1]
            yield SynthChunk(phases={k: v[start:start + phases] for k, v in ph.items()},
                             events={k: v[a:b] for k, v in ev.items()})


def _sqlite_path(engine: Engine) -> str:
    database = engine.url.database or ""
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        raise ValueError("bulk loading needs a SQLite file, not an in-memory database")
    return str(Path(database).expanduser().resolve())
