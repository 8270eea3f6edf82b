"""The PostgreSQL bulk loader: Arrow tables written by ``COPY ... FROM STDIN (FORMAT binary)`` through
ADBC's PostgreSQL driver (``adbc_ingest``), cast first to the table's own column types, since binary
COPY takes values as the column stores them. The server parses no text, and no CSV is written.

Into an empty events table the secondary indexes are dropped, the rows copied and the indexes rebuilt
before committing. When the role may turn the foreign-key triggers off (``session_replication_role``),
the keys stay and two connections work at once, each in one transaction: the first drops the phases'
indexes, copies the runs, tiers and phases and rebuilds them, the second does the same for the events
(each connection locks its own table; the events' sixteen index builds are the load's longest step,
which on one connection came after the phases' copy and rebuild: 500k events took 9.8-10.7 s that way
here, 7.7-9.6 s on two connections, beside other work); else the load is one transaction, which drops
the foreign keys too and adds them again (checking every row). A role that does not own the tables may
not drop their indexes: it loads an empty table as an append does. An append keeps every index and
commits every 500k events; when the role may turn the foreign-key triggers off, it copies the events on
a second connection while the first copies the runs, tiers and phases (two backends, two cores),
otherwise on one connection with the keys checked by the server. The events cost the server about twice
what the phases do (16 indexes against 8), so the first connection also copies the events of each
transaction's first pieces (:data:`PG_FIRST_CONNECTION_SHARE`), with ids drawn from the sequence before
the second connection's ``COPY`` starts, and both backends end at about the same time. That ``COPY``
starts as soon as the first piece after those exists, the first connection copies only while it has a
piece waiting (else the next piece is generated and handed over first), and the runs' counts are
written while its last pieces are still being copied. A failure after some batches were committed
deletes the load's runs again, which cascades to the rest; the runs of a load that commits more than
once (an append, a fresh load on two connections) are marked loading until its last commit, under an
advisory lock, so that a load killed in between (no Python left to delete them) is removed by the next
(``postgresql_steps.remove_interrupted_loads``)."""

from __future__ import annotations

import collections
import contextlib
import itertools
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
from sqlalchemy.engine import Engine

from autopack_pipeline.storage.bulk.chunk import SynthChunk
from autopack_pipeline.storage.bulk.loader import _Loader, _sliced
from autopack_pipeline.storage.bulk.postgresql_open import Opening, pg_settings
from autopack_pipeline.storage.bulk.postgresql_steps import (
    _drop_for_load,
    _mark_loaded,
    _release_load_lock,
    _take_load_lock,
    _undo_load,
)
from autopack_pipeline.storage.bulk.rows import (
    _EVENT_SPEC,
    _PHASE_SPEC,
    LOADED_STATE,
    LOADING_STATE,
    _arrow_columns,
    _cast_to,
    _chunk_columns,
    _run_table,
    _text_timestamps,
    _tier_keys,
    _tier_table,
    run_id_for,
)
from autopack_pipeline.storage.columnar import prefetch

# Events per transaction of an append, as on SQLite: commits cost nothing, memory stays bounded.
PG_TRANSACTION_EVENTS = 500_000
# Phases per COPY (with their events): pieces of a chunk, so the first COPY starts sooner and the two
# connections of an append wait less for each other.
PG_PIECE_PHASES = 10_000
# The first phases of a load go in smaller pieces: an append's events COPY starts with the first piece
# after those whose events the first connection copies (PG_FIRST_CONNECTION_SHARE, ~15k phases of a
# 100k-event append), so it waits for fewer phases to be generated beyond them (2.5k instead of 10k).
PG_SMALL_PIECE_PHASES = 2_500
PG_SMALL_PIECES_UNTIL = 20_000
# Event pieces waiting for the events connection of an append: it never waits for the phases, and the
# memory the queue holds stays bounded when the events are the slower stream. The first connection
# copies while at least half of them wait (else the next piece is handed over first), so that one of
# its longer copies (a held piece's phases and events) does not leave the events connection without a
# piece. (Sampled wait events on a busy machine: the events backend waited for the client in 3-8% of
# samples either way, against 2-5% before the first connection took a share of the events.)
PG_EVENTS_AHEAD = 4
# At most this share of an append transaction's events is copied by the first connection, with their
# phases (whole pieces: the first two of 100k events, 17.7%): the events cost the server about twice
# what the phases do (16 indexes against 8; the events backend took 63-67% of the server's CPU here),
# so the second connection, copying only events, would otherwise finish last. At 6% (the first piece)
# it still took 63%, at 17.7% 52-56%.
PG_FIRST_CONNECTION_SHARE = 0.18

# The phases' columns but tier_id: a piece is built before the tiers' keys are known.
_PHASE_SPEC_NO_TIER = tuple(item for item in _PHASE_SPEC if item[0] != "tier_id")


class _PostgresqlLoader(_Loader):
    """Writes generated chunks into a PostgreSQL database and counts what it wrote."""

    # The first chunk as small as its small pieces: the events COPY starts after fewer generated phases.
    first_chunk_phases = PG_SMALL_PIECE_PHASES

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._opening = Opening()

    def prepare(self, engine: Engine) -> None:
        # The connections open, and the loader's questions are asked on them, in a helper thread while
        # the caller asks its own; the driver's connect alone takes tens of milliseconds.
        self._opening.start(engine)

    def close(self) -> None:
        self._opening.close()

    def load(self, engine: Engine, chunks: Iterator[SynthChunk]) -> None:
        self.prepare(engine)

        def tables(piece: SynthChunk) -> tuple[pa.Table, pa.Table]:
            return self._timed("generate", lambda: self._tables(piece))

        streams: _PgStreams | None = None
        pieces = None
        try:
            # Pieces smaller than a chunk: the first COPY starts sooner, the streams wait less for each
            # other. The generating thread starts with the first next(): the first piece is generated
            # while the connections finish opening (it waits for their column types only to be cast).
            small = min(PG_SMALL_PIECE_PHASES, PG_PIECE_PHASES)
            pieces = prefetch(_sliced(chunks, PG_PIECE_PHASES, small=small, small_until=PG_SMALL_PIECES_UNTIL), tables)
            first = next(pieces)
            opened = self._opening.take()
            try:
                types, skip_key_checks = opened.types, opened.skip_key_checks
                with opened.connections[0].cursor() as cursor:  # after the caller removed interrupted loads
                    cursor.execute("SELECT NOT EXISTS (SELECT 1 FROM token_estimation_v2_events)")
                    fresh = bool(cursor.fetchone()[0]) and opened.owns_tables  # else as an append
                    if fresh and len(opened.connections) > 1:
                        # That read's lock on the events table would keep the second connection from
                        # dropping its indexes until the first commits: its transaction ends here.
                        opened.connections[0].rollback()
                        pg_settings(cursor, skip_key_checks=skip_key_checks)
            except BaseException:
                for connection in reversed(opened.connections):
                    connection.close()
                raise
            streams = _PgStreams(opened.connections, skip_key_checks, opened.event_sequence)
            # Events go through a second connection, in parallel with the phases (one backend per core);
            # that needs the foreign-key triggers off, as the events' phases are not committed yet. An
            # append keeps every index, so the server's per-row work is what limits it.
            staged = not fresh or streams.parallel  # commits more than once: runs marked loading till the last
            if fresh:
                self.method = "postgresql: binary COPY, indexes rebuilt after the rows, " + (
                    "phases and events on two connections at once (one transaction each), foreign keys kept, "
                    "their triggers off" if streams.parallel else "in one transaction, foreign keys added again")
            else:
                self.method = "postgresql: binary COPY with indexes in place, 500k events per transaction" + (
                    ", events on a second connection but for each transaction's first pieces"
                    if streams.parallel else "")
            cursor = streams.cursor
            if staged:  # several commits: the runs say "loading" until the last (postgresql_steps)
                _take_load_lock(cursor, self.seed)
            start_text = _text_timestamps(first[0].phases["started_us"][:1])[0]
            state = LOADING_STATE if staged else LOADED_STATE
            _ingest(cursor, "runs", _cast_to(_run_table(self.seed, self.run_id_text, start_text, state),
                                             types["runs"]))
            _ingest(cursor, "tiers", _cast_to(_tier_table(self.run_id_text, start_text), types["tiers"]))
            # The seed's runs by their prefix (LIKE: text ranges follow the database's collation).
            cursor.execute("SELECT run_id, id FROM tiers WHERE tier_id = 'T1' AND run_id LIKE "
                           f"'{run_id_for(self.seed, 0)[:-5]}%'")
            tier_pk = _tier_keys(cursor.fetch_arrow_table(), self.run_id_text)
            tier_field = types["phases"].field("tier_id")
            rebuild = []
            if fresh and streams.parallel:  # each connection drops (and rebuilds) its own table's indexes
                rebuild = _drop_for_load(cursor, drop_foreign_keys=False, tables=("phases",))
                streams.drop_event_indexes()
            elif fresh:
                rebuild = _drop_for_load(cursor, drop_foreign_keys=not skip_key_checks)

            def copy_phases(piece: SynthChunk, phase_rows: pa.Table) -> None:
                # The tiers' keys came from the server after the piece was built: its one missing column.
                phase_rows = phase_rows.append_column(
                    tier_field, pa.array(tier_pk[piece.phases["run"]]).cast(tier_field.type))
                self._timed("phases", lambda: _ingest(cursor, "phases", phase_rows))

            # What the first connection has still to copy, in order: [piece, phases, None or (events, their
            # ids' Future)]; the events are those of a transaction's first pieces (see _PgStreams), the
            # rest go on the second.
            pending: collections.deque[list] = collections.deque()
            held_events = 0  # events of this transaction's first pieces, waiting in ``pending``
            # Phases in ``pending``, which bound it (memory): by pieces, a transaction's many small first
            # pieces would be copied on the first connection while the second waits for its next piece.
            pending_phases = 0
            in_transaction = 0  # events of the pieces taken into this transaction
            event_id_field = types["token_estimation_v2_events"].field("event_id")

            def copy_pending() -> None:
                nonlocal pending_phases
                piece, phase_rows, held = pending.popleft()
                pending_phases -= phase_rows.num_rows
                copy_phases(piece, phase_rows)
                if held is not None:  # events of the transaction's first pieces, and their ids' Future
                    event_rows = held[0].append_column(event_id_field, held[1].result().cast(event_id_field.type))
                    self._timed("events", lambda: _ingest(cursor, "token_estimation_v2_events", event_rows))
                self._written(piece)

            for piece, (phase_rows, event_rows) in itertools.chain([first], pieces):
                if not streams.parallel:  # one connection: the events after their phases (keys checked)
                    copy_phases(piece, phase_rows)
                    streams.copy_events(event_rows, self._timed)
                    self._written(piece)
                elif not fresh and streams.copying is None and held_events + event_rows.num_rows <= (
                        PG_FIRST_CONNECTION_SHARE * min(PG_TRANSACTION_EVENTS, self.total - self.events_written)):
                    # Its ids drawn now, below every id the second connection draws later, while the
                    # next pieces are still being generated.
                    pending.append([piece, phase_rows, (event_rows, streams.reserve_event_ids(event_rows.num_rows))])
                    pending_phases += phase_rows.num_rows
                    held_events += event_rows.num_rows
                else:
                    streams.copy_events(event_rows, self._timed)
                    pending.append([piece, phase_rows, None])
                    pending_phases += phase_rows.num_rows
                    # The first connection copies while the second has pieces waiting beyond the one
                    # it copies, else the next piece is handed over first (generating it is quicker).
                    while pending and streams.copying is not None and (
                            streams.events_waiting() >= PG_EVENTS_AHEAD // 2
                            or pending_phases > (PG_EVENTS_AHEAD + 1) * PG_PIECE_PHASES):
                        copy_pending()
                in_transaction += len(piece.events["run"])
                if not fresh and in_transaction >= PG_TRANSACTION_EVENTS:
                    while pending:
                        copy_pending()
                    streams.commit()
                    in_transaction = held_events = 0
            while pending:  # what is left
                copy_pending()
            streams.finish_events(self._timed)  # a fresh load's events indexes rebuild meanwhile
            _rebuild(cursor, rebuild, self._timed)
            # Every piece's phases are counted by now; on an append with two connections the events'
            # last pieces are still being copied meanwhile.
            self._update_runs(cursor, text_timestamps=False)
            streams.commit(last=True)
            if staged:  # both connections' last commits are through: the load is whole
                _mark_loaded(cursor, self.seed)
                streams.connection.commit()
                _release_load_lock(cursor, self.seed)
        except BaseException:
            if streams is not None:
                try:
                    streams.rollback()
                finally:
                    if streams.committed:
                        _undo_load(streams.connection, self.seed, skip_key_checks=skip_key_checks)
            raise
        finally:
            if pieces is not None:
                pieces.close()  # stops the generating thread when the load ended early
            if streams is not None:
                streams.close()

    def _tables(self, piece: SynthChunk) -> tuple[pa.Table, pa.Table]:
        """A piece's phases (all but ``tier_id``, which needs the tiers' keys from the server) and its
        events, as Arrow tables of the columns' own types (the first pieces wait for them here)."""
        phase_cols, event_cols = _chunk_columns(piece, self.run_id_text, None, self.seed)
        phases = _arrow_columns(phase_cols, _PHASE_SPEC_NO_TIER, len(piece.phases["run"]))
        events = _arrow_columns(event_cols, _EVENT_SPEC, len(piece.events["run"]))
        types = self._opening.opened().types
        return _cast_to(phases, types["phases"]), _cast_to(events, types["token_estimation_v2_events"])


class _PgStreams:
    """The load's PostgreSQL connections (ADBC, each in its own transaction): phases (and everything
    else) on the first; events on a second one when two were opened.

    There, each transaction's events are one ``COPY``, run by a worker thread and fed piece by piece
    through a queue (at most :data:`PG_EVENTS_AHEAD` pieces waiting) as the pieces are generated: the
    driver encodes and sends a piece while the server is still storing the one before, and no round
    trips fall between pieces. The first connection copies the events of the transaction's first
    pieces itself, with ids drawn from the sequence (:meth:`reserve_event_ids`) before that ``COPY``
    draws any. Each batch ends that ``COPY``, then commits the first connection, then the second, so
    whoever reads between the two commits sees phases without their events yet, never events without
    their phases, and event ids (the first connection's below the second's) become visible in
    ascending order as the columnar refresh expects.
    """

    def __init__(self, connections: list, skip_key_checks: bool, event_sequence: str) -> None:
        self.connection = connections[0]
        self.cursor = self.connection.cursor()
        self.events_connection: Any = connections[1] if len(connections) > 1 else None
        self.events_cursor = self.cursor if self.events_connection is None else self.events_connection.cursor()
        self.worker = None if self.events_connection is None else ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="synth-events")
        self.waiting: queue.Queue | None = None  # pieces for the running events COPY, then _END
        self.copying: Future | None = None  # that COPY
        self.ended = False  # that COPY was handed its end
        # A fresh load's: the events' secondary indexes the second connection dropped, rebuilt after its
        # COPY (see drop_event_indexes), and that rebuild.
        self.event_indexes: Future | None = None
        self.rebuilding: Future | None = None
        self.skip_key_checks = skip_key_checks
        self.event_sequence = event_sequence
        self.committed = False  # a batch of this load is committed: a failure must undo it

    @property
    def parallel(self) -> bool:
        return self.worker is not None

    def copy_events(self, rows: pa.Table, timed: Callable[[str, Callable[[], Any]], Any]) -> None:
        """Copy ``rows`` into the events table: now on one connection; on two, handed to the
        transaction's events ``COPY`` (begun with the first piece; its failure is raised here)."""
        if self.worker is None:
            timed("events", lambda: _ingest(self.cursor, "token_estimation_v2_events", rows))
            return
        if self.copying is None:
            self.waiting = queue.Queue(maxsize=PG_EVENTS_AHEAD)
            reader = pa.RecordBatchReader.from_batches(rows.schema, _batches(self.waiting))
            self.copying = self.worker.submit(
                timed, "events", lambda: _ingest(self.events_cursor, "token_estimation_v2_events", reader))
        self._hand(rows)

    def drop_event_indexes(self) -> None:
        """A fresh load's: drop the events' secondary indexes on the events connection, before its
        ``COPY`` (its worker runs its tasks in order); :meth:`finish_events` rebuilds them."""
        assert self.worker is not None, "only with two connections"
        self.event_indexes = self.worker.submit(_drop_for_load, self.events_cursor, drop_foreign_keys=False,
                                                tables=("token_estimation_v2_events",))

    def finish_events(self, timed: Callable[[str, Callable[[], Any]], Any]) -> None:
        """The last piece was handed over: end the events ``COPY`` without waiting for it and, on a fresh
        load, rebuild the events' indexes after it on its connection, while the caller goes on with the
        first (the last commit waits for both)."""
        if self.copying is not None and not self.ended:
            self._hand(_END)
            self.ended = True
        if self.event_indexes is not None and self.rebuilding is None:
            self.rebuilding = self.worker.submit(self._rebuild_event_indexes, timed)

    def _rebuild_event_indexes(self, timed: Callable[[str, Callable[[], Any]], Any]) -> None:
        assert self.event_indexes is not None
        _rebuild(self.events_cursor, self.event_indexes.result(), timed)

    def reserve_event_ids(self, count: int) -> Future:
        """``count`` event ids drawn from the events' sequence, ascending, as a Future: drawn on the
        second connection by its worker, which runs what it is given in order, so they are below every
        id that connection's next ``COPY`` draws, and the first connection and the caller are not held
        up meanwhile. Not a range claimed at once: other writers keep drawing from the sequence
        meanwhile, without waiting for a lock."""
        assert self.worker is not None, "only with two connections"
        return self.worker.submit(self._draw_event_ids, int(count))

    def _draw_event_ids(self, count: int) -> pa.Array:
        self.events_cursor.execute(f"SELECT nextval('{self.event_sequence}') FROM generate_series(1, {count}) "
                                   "ORDER BY 1")
        return self.events_cursor.fetch_arrow_table().column(0).combine_chunks()

    def events_waiting(self) -> int:
        """How many pieces wait for the events ``COPY`` beyond the one it copies."""
        return 0 if self.waiting is None else self.waiting.qsize()

    def _hand(self, item: object) -> None:
        """Queue ``item`` for the events ``COPY``, or raise why that ``COPY`` stopped taking pieces."""
        assert self.waiting is not None and self.copying is not None
        while True:
            try:
                self.waiting.put(item, timeout=0.05)
                return
            except queue.Full:
                if self.copying.done():
                    self.copying.result()  # its failure
                    raise RuntimeError("the events COPY ended before its last piece") from None

    def _end_events(self) -> None:
        """End the events ``COPY`` after the pieces handed to it, and wait for it (and for the rebuild of
        a fresh load's events indexes)."""
        if self.copying is not None:
            try:
                if not self.ended:
                    self._hand(_END)
                self.copying.result()
            finally:
                self.copying = self.waiting = None
                self.ended = False
        if self.rebuilding is not None:
            self.rebuilding.result()

    def commit(self, *, last: bool = False) -> None:
        self._end_events()
        self.connection.commit()
        self.committed = True
        if self.parallel:
            self.events_connection.commit()
        if not last:  # the driver has begun the next transaction on each connection
            for cursor in {id(c): c for c in (self.cursor, self.events_cursor)}.values():
                pg_settings(cursor, skip_key_checks=self.skip_key_checks)

    def rollback(self) -> None:
        try:
            # The events COPY must be over before its connection rolls back, and any draw of ids queued
            # on it (the worker runs its tasks in order); what they raise is not the failure to report.
            with contextlib.suppress(Exception):
                self._end_events()
            if self.worker is not None:
                self.worker.submit(int).result()
        finally:
            try:
                self.connection.rollback()
            finally:
                if self.parallel:
                    self.events_connection.rollback()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()
        try:
            if self.parallel:
                self.events_cursor.close()
                self.events_connection.close()
        finally:
            self.cursor.close()
            self.connection.close()


_END = object()  # ends an events COPY's queue


def _batches(waiting: queue.Queue) -> Iterator[pa.RecordBatch]:
    """The record batches of the tables put in ``waiting``, until :data:`_END`."""
    while (rows := waiting.get()) is not _END:
        yield from rows.to_batches()


def _rebuild(cursor: Any, statements: list[str], timed: Callable[[str, Callable[[], Any]], Any]) -> None:
    """Run what rebuilds the dropped indexes (and keys) in the cursor's transaction, timed as "indexes"."""
    if statements:  # index builds sort in memory instead of spilling to disk (this transaction only)
        cursor.execute("SET LOCAL maintenance_work_mem = '512MB'")
    for statement in statements:
        timed("indexes", lambda: cursor.execute(statement))  # noqa: B023


def _ingest(cursor: Any, table: str, rows: pa.Table) -> None:
    cursor.adbc_ingest(table, rows, mode="append")
