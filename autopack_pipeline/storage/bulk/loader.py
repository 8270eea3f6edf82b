"""What every bulk loader shares: the run ids of the load, the per-run phase counts and tokens written
back to ``runs`` at the end, the events and phases written so far with their time span, the seconds
spent per stage, and the progress callback called after every chunk. The SQLite and PostgreSQL loaders
subclass :class:`_Loader` and add their ``load`` method."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from autopack_pipeline.storage.bulk.chunk import SynthChunk
from autopack_pipeline.storage.bulk.rows import _ascii_text, _timestamp_codes, run_id_for

Progress = Callable[[int, int], None]


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

    def table(self, run_ids: pa.Array, *, text_timestamps: bool) -> pa.Table:
        """Per run: id, phase count, tokens (held to the column's 32 bits) and last activity, the
        timestamps as DATETIME text or ``timestamp[us]``."""
        last = _ascii_text(_timestamp_codes(self.last_us)) if text_timestamps else pa.array(
            self.last_us, type=pa.timestamp("us"))
        return pa.table({"id": run_ids, "max_phases": pa.array(self.phases, pa.int32()),
                         "tokens_used": pa.array(np.minimum(self.tokens, 2**31 - 1), pa.int32()),
                         "completed_at": last, "updated_at": last})


class _Loader:
    """Writes generated chunks into one database and counts what it wrote."""

    # Phases of the first generated chunk it asks for (synth.generate); None: the generator's default.
    first_chunk_phases: int | None = None

    def __init__(self, seed: int, runs: int, total: int, progress: Progress | None) -> None:
        self.seed, self.runs, self.total, self.progress = seed, runs, total, progress
        self.run_ids = np.array([run_id_for(seed, k) for k in range(runs)], dtype=object)
        self.run_id_text = pa.array(self.run_ids, type=pa.string())  # taken by run number into each chunk
        self.stats = _RunStats(runs)
        self.events_written = 0
        self.phases_written = 0
        self.first_us: int | None = None
        self.last_us: int | None = None
        self.method = ""
        self.timings = {"generate": 0.0, "stage": 0.0, "phases": 0.0, "events": 0.0, "indexes": 0.0}
        self._timings_lock = threading.Lock()

    def prepare(self, engine: Any) -> None:
        """Begin what the load needs before its first rows while the caller still asks the database its
        own questions (the PostgreSQL loader opens its connections); :meth:`close` ends it when
        :meth:`load` is not reached."""

    def close(self) -> None:
        """Let go of what :meth:`prepare` began and :meth:`load` did not take over."""

    def _update_runs(self, cursor: Any, *, text_timestamps: bool) -> None:
        """Every run's phase count, tokens and last activity, by one UPDATE from a temporary table
        (both SQLite and PostgreSQL take ``UPDATE ... FROM``), in the load's transaction."""
        cursor.adbc_ingest("synth_run_stats", self.stats.table(self.run_id_text, text_timestamps=text_timestamps),
                           mode="create", temporary=True)
        cursor.execute("UPDATE runs SET max_phases = s.max_phases, tokens_used = s.tokens_used, "
                       "completed_at = s.completed_at, updated_at = s.updated_at FROM synth_run_stats AS s "
                       "WHERE runs.id = s.id")
        cursor.execute("DROP TABLE synth_run_stats")

    def _timed(self, stage: str, work: Callable[[], Any]) -> Any:
        began = time.perf_counter()
        try:
            return work()
        finally:
            with self._timings_lock:  # threads of a load add to the same stage
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


def _chain(first: SynthChunk, rest: Iterator[SynthChunk]) -> Iterator[SynthChunk]:
    yield first
    yield from rest


def _sliced(chunks: Iterator[SynthChunk], phases: int, *, small: int = 0, small_until: int = 0) -> Iterator[SynthChunk]:
    """The chunks cut into pieces of ``phases`` phases, each with the events of those phases; the first
    ``small_until`` phases of all in pieces of ``small``."""
    done = 0  # phases in the pieces so far
    for chunk in chunks:
        ph, ev = chunk.phases, chunk.events
        # (run, phase number) grows along both tables, so one search finds where a piece's events start.
        phase_keys = (ph["run"] << 32) + ph["phase_index"]
        event_keys = (ev["run"] << 32) + ev["phase_index"]
        starts = []
        at = 0
        while at < len(phase_keys):
            starts.append(at)
            at += small if done + at < small_until else phases
        ends = starts[1:] + [len(phase_keys)]
        event_starts = np.searchsorted(event_keys, phase_keys[starts]).tolist() + [len(event_keys)]
        for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
            a, b = event_starts[i], event_starts[i + 1]
            yield dataclasses.replace(chunk, phases={k: v[start:end] for k, v in ph.items()},
                                      events={k: v[a:b] for k, v in ev.items()})
        done += len(phase_keys)
