"""The store: its manifest and lock, a refresh (new rows, PostgreSQL id gaps, compaction) and reading
it back as a table, an events frame or the analysis arrays."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.storage.arrow_modules import pa, pc, pq
from autopack_pipeline.storage.columnar.arrays import _load_arrays
from autopack_pipeline.storage.columnar.encoding import (
    _KINDS,
    BATCH_IDS,
    FEW_VALUES,
    INPUT_KINDS,
    MANIFEST,
    PART_ROWS,
    STORE_FORMAT,
    ColumnarStoreError,
    Progress,
    RefreshResult,
    _unreadable_entry,
    input_schema,
    numpy_of,
    read_parquet,
    store_schema,
)
from autopack_pipeline.storage.columnar.freshness import parts_to_compact, rebuild_reason, up_to_date
from autopack_pipeline.storage.columnar.gaps import live_gaps, update_gaps
from autopack_pipeline.storage.columnar.image import ImageWriter, read_image
from autopack_pipeline.storage.columnar.layout import _source_identity, store_directory_for
from autopack_pipeline.storage.columnar.part_codes import Written, part_codes, run_id_range
from autopack_pipeline.storage.columnar.parts import files_of, inputs_file_of, parts_holding, rows_within
from autopack_pipeline.storage.columnar.phases import PHASE_CODE, RUN_CODE
from autopack_pipeline.storage.columnar.prefetch import prefetch
from autopack_pipeline.storage.columnar.sqlite_children import CHILDREN, child_readers
from autopack_pipeline.storage.columnar.tallies import keep_tally, tally_of_table
from autopack_pipeline.storage.frames import EVENT_COLUMNS, events_frame_of_table

if TYPE_CHECKING:  # SQLAlchemy and the readers of the database load only for a refresh with work to do
    from autopack_pipeline.storage.columnar.batches import _BatchReader
    from autopack_pipeline.storage.handle import Database, DatabaseHandle

# The package's logger, as before the split, so a log filter on it keeps working.
logger = logging.getLogger("autopack_pipeline.storage.columnar")


class ColumnarStore:
    """The Parquet copy of one database's events table (see the module docstring)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)
        self._written = Written()  # what this refresh's parts tell the codes of its next (part_codes.py)

    @classmethod
    def for_database(cls, database: Database) -> ColumnarStore | None:
        """The store of ``database`` (an engine or a handle); None for an in-memory SQLite database."""
        directory = store_directory_for(database)
        return None if directory is None else cls(directory)

    # manifest ------------------------------------------------------------------------------------

    @property
    def manifest_path(self) -> Path:
        return self.directory / MANIFEST

    def manifest(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None

    def _write_manifest(self, manifest: dict[str, Any]) -> None:
        manifest["updated_at"] = datetime.now(timezone.utc).isoformat()
        tmp = self.directory / f".{MANIFEST}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, self.manifest_path)

    @staticmethod
    def _new_manifest(source: str) -> dict[str, Any]:
        return {"format": STORE_FORMAT, "source": source, "high_water_event_id": 0,
                "rows": 0, "sorted": True, "parts": [], "next_part": 1, "gaps": [], "anchor": None,
                "run_codes": 0, "phase_codes": 0}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+") as handle:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - not POSIX: one refresh at a time is the caller's job
                yield
                return
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # refresh -------------------------------------------------------------------------------------

    def refresh(self, database: Database, *, full: bool = False, progress: Progress | None = None) -> RefreshResult:
        """Copy the events above the high-water mark (all of them when ``full``); return what happened.

        A copy already up to date is found so through the database's catalog, without a reader of its
        rows: for a SQLite file without SQLAlchemy (``storage.handle``)."""
        from autopack_pipeline.storage.handle import as_handle

        began = time.perf_counter()
        timings: dict[str, float] = {}
        database = as_handle(database)
        with self._locked():
            self._written = Written()  # part names are numbered again after a refresh that failed
            source = _source_identity(database)
            manifest = self.manifest()
            if not full and manifest is not None and up_to_date(self.directory, manifest, source, database):
                rows, high_water = manifest["rows"], manifest["high_water_event_id"]
                seconds = round(time.perf_counter() - began, 4)
                return RefreshResult(directory=str(self.directory), rows_before=rows, new_rows=0, rows_after=rows,
                                     high_water_before=high_water, high_water=high_water, parts_written=0,
                                     parts_compacted=0, seconds=seconds, timings={"checks": seconds})
            from autopack_pipeline.storage.columnar.batches import _BatchReader

            reader = _BatchReader(database.engine)
            rebuilt = rebuild_reason(self.directory, manifest, source, reader.anchor, full)
            obsolete: list[str] = []
            if rebuilt or manifest is None:
                fresh = self._new_manifest(source)
                if manifest is not None:
                    obsolete = [name for part in manifest["parts"] for name in files_of(part)]
                    fresh["next_part"] = manifest["next_part"]  # new names never overwrite old files
                    logger.warning("rebuilding the columnar store %s: %s", self.directory, rebuilt)
                manifest = fresh
            before_rows, before_hw = manifest["rows"], manifest["high_water_event_id"]
            timings["checks"] = time.perf_counter() - began

            started = time.perf_counter()
            top = reader.max_event_id()
            gaps = live_gaps(manifest) if reader.dialect != "sqlite" else []
            # Rows set aside for an unreadable timestamp are asked for again: one fixed since joins the store.
            retry = [[lo, hi, 0] for lo, hi in (manifest.get("unreadable") or {}).get("ranges", [])]
            new_rows = written = 0
            id_pieces: list[np.ndarray] = []
            writing = 0.0
            # Each ~1M-row table becomes a part file as soon as it is read, so memory stays bounded.
            # Closed on any error, not when the traceback lets go of it: that ends its reading children.
            extracted = closing(self._extract(reader, manifest["high_water_event_id"], top, gaps + retry, progress))
            with extracted as tables:
                for table in tables:
                    tick = time.perf_counter()
                    id_pieces.append(numpy_of(table.column("event_id")))
                    self._append_part(manifest, table)
                    written += 1
                    new_rows += table.num_rows
                    writing += time.perf_counter() - tick
            timings["extract"] = time.perf_counter() - started - writing

            started = time.perf_counter()
            aside = np.array([row.event_id for row in reader.unreadable], dtype=np.int64)
            manifest["unreadable"] = _unreadable_entry(reader.unreadable)
            if reader.unreadable:
                logger.info("%d events set aside for an unreadable timestamp (first: event_id %d)",
                            len(reader.unreadable), reader.unreadable[0].event_id)
            if new_rows or len(aside):
                ids = np.concatenate([*id_pieces, aside])  # set-aside rows exist: they count for the mark
                if new_rows and np.concatenate(id_pieces).min() <= manifest["high_water_event_id"]:
                    manifest["sorted"] = False  # late rows filled a gap below the mark
                manifest["rows"] += new_rows
                update_gaps(manifest, ids, gaps, top, reader.dialect)
                manifest["high_water_event_id"] = max(manifest["high_water_event_id"], int(ids.max()))
                manifest["anchor"] = reader.anchor(manifest["high_water_event_id"])
            else:
                manifest["gaps"] = gaps
            compacted, removed = self._compact(manifest, database)
            self._written = Written()
            obsolete += removed
            timings["write"] = time.perf_counter() - started + writing
            self._write_manifest(manifest)
            for name in obsolete:
                (self.directory / name).unlink(missing_ok=True)
        return RefreshResult(
            directory=str(self.directory),
            rows_before=0 if rebuilt else before_rows,
            new_rows=new_rows,
            rows_after=manifest["rows"],
            high_water_before=0 if rebuilt else before_hw,
            high_water=manifest["high_water_event_id"],
            parts_written=written,
            parts_compacted=compacted,
            seconds=round(time.perf_counter() - began, 4),
            rebuilt=rebuilt,
            timings={k: round(v, 4) for k, v in timings.items()},
        )

    def _extract(self, reader: _BatchReader, high_water: int, top: int, gaps: list[list], progress: Progress | None
                 ) -> Iterator[pa.Table]:
        """New rows as tables of about PART_ROWS rows each (ids in gaps first, then above the mark)."""
        from autopack_pipeline.storage.columnar.batches import gathered_parts

        batches = [("event_id BETWEEN %s AND %s", (int(lo), int(hi))) for lo, hi, _t in gaps] + _id_batches(high_water, top)
        total = max(0, top - high_water)
        # Many batches from SQLite: child processes read them (sqlite_children.py), one thread here per child
        # taking its batches in turn; from PostgreSQL two threads on two connections (the server's side of a
        # batch is about two thirds of it: two backends work at once); else one thread reads ahead of this one.
        children = child_readers(reader, batches)
        jobs = list(enumerate(batches))  # (index, batch): the children take every other index
        if children is None and reader.dialect == "postgresql":
            stream = prefetch(jobs, lambda job: reader.read_apart(*job[1]), depth=1, workers=2)
        elif children is None:
            stream = prefetch(jobs, lambda job: reader.read_apart(*job[1]))
        else:
            stream = prefetch(jobs, lambda job: children.read(*job), depth=1, workers=CHILDREN)
        try:
            yield from gathered_parts(((batch, got) for (_index, batch), got in stream), reader, high_water, total,
                                      progress, PART_ROWS)
        finally:  # stopped early (an error, Ctrl-C): the children are ended first, so no thread waits on them
            if children is not None:
                children.close()
            stream.close()
            reader.close()

    def _append_part(self, manifest: dict[str, Any], table: pa.Table, inputs: pa.Table | None = None) -> str:
        """Write ``table`` as the next part (and ``inputs`` as its prediction inputs, when given); new rows
        get their run and phase codes here (``part_codes.py``), merged parts (a compaction) keep theirs."""
        if PHASE_CODE not in table.column_names:
            runs, phases = part_codes(self.directory, manifest, table, self._written)
            table = table.append_column(RUN_CODE, runs).append_column(PHASE_CODE, phases)
        name = f"part-{manifest['next_part']:06d}.parquet"
        manifest["next_part"] += 1
        self._write_file(name, table, _KINDS)
        # Tallied now, from the rows in memory: the first snapshot after an extraction reads no event
        # for the whole-history figures (tallies.py).
        tally, runs = tally_of_table(table)
        keep_tally(self.directory, name, tally, runs)
        # A run whose events go on in the next part of this refresh finds its codes here, not on disk.
        self._written.keep(name, table, runs.column("run_id"))
        ids = table.column("event_id")
        part = {"file": name, "rows": table.num_rows, "min_event_id": int(pc.min(ids).as_py()),
                "max_event_id": int(pc.max(ids).as_py()), **run_id_range(runs.column("run_id"))}
        if inputs is not None:
            part["inputs"] = self._write_file(inputs_file_of(name), inputs, INPUT_KINDS)
        manifest["parts"].append(part)
        return name

    def _write_file(self, name: str, table: pa.Table, kinds: dict[str, str]) -> str:
        tmp = self.directory / f".{name}.tmp"
        # Dictionary pages for labels and integers of a few values (FEW_VALUES); other integers delta-packed
        # (bits per value as each block of 128 needs): at a million rows 3-5 ms per column to read against
        # 6-15 ms plain, in fewer bytes, zstd on top of both.
        labels = [column for column, kind in kinds.items() if kind in ("label", "text") or column in FEW_VALUES]
        packed = {column: "DELTA_BINARY_PACKED" for column, field in zip(table.column_names, table.schema) if
                  column not in labels and (pa.types.is_integer(field.type) or pa.types.is_timestamp(field.type))}
        # A column without a missing value is written as required: no definition levels to decode (a part's
        # columns read in 56 ms against 78 ms). A store reads its parts back with permissive concatenation.
        schema = pa.schema([field.with_nullable(bool(table.column(i).null_count)) for i, field in enumerate(table.schema)],
                           metadata=table.schema.metadata)
        table = pa.Table.from_arrays(table.columns, schema=schema)
        pq.write_table(table, tmp, compression="zstd", use_dictionary=labels, column_encoding=packed)
        os.replace(tmp, self.directory / name)
        return name

    # compaction ------------------------------------------------------------------------------------

    def _compact(self, manifest: dict[str, Any], database: DatabaseHandle) -> tuple[int, list[str]]:
        """Merge the trailing small parts into one when there are more than MAX_SMALL_PARTS of them."""
        parts = manifest["parts"]
        tail = parts_to_compact(parts)
        if not tail:
            return 0, []
        merging = parts[len(parts) - tail:]
        table = self._merged([p["file"] for p in merging])
        inputs = None
        if any("inputs" in p for p in merging):
            # The inputs are in use: the new parts' are read now (few rows), and all merge with the parts,
            # rather than reading every merged row's again at the next calibration.
            self._add_inputs(database, [p for p in merging if "inputs" not in p])
            inputs = self._merged([p["inputs"] for p in merging])
        manifest["parts"] = parts[: len(parts) - tail]
        self._append_part(manifest, table, inputs)
        if all(a["max_event_id"] < b["min_event_id"] for a, b in zip(manifest["parts"], manifest["parts"][1:])):
            manifest["sorted"] = True
        return len(merging), [name for p in merging for name in files_of(p)]

    def _merged(self, names: list[str]) -> pa.Table:
        table = pa.concat_tables([read_parquet(self.directory / name) for name in names], promote_options="permissive")
        return table.take(pc.sort_indices(table.column("event_id"))).combine_chunks()

    # prediction inputs -----------------------------------------------------------------------------

    def inputs_table(self, database: Database, *, as_codes: tuple[str, ...] = (),
                     id_range: tuple[int, int] | None = None) -> pa.Table:
        """``event_id`` and the prediction inputs of every stored event (``id_range``: of those events
        only, as in :meth:`table`), in event_id order (columns in ``as_codes`` dictionary-encoded).

        A part's inputs are read from the database the first time they are asked for, by the
        part's id range and filtered to its events, and kept in a file beside it; so only the parts
        written since the last call are read again. Call :meth:`refresh` first.
        """
        with self._locked():  # a refresh neither compacts nor rebuilds while the files are written and read
            manifest = self.manifest()
            if manifest is None:
                raise ColumnarStoreError(f"no columnar store at {self.directory}; refresh it first")
            parts = parts_holding(manifest, id_range)
            missing = [part for part in parts if "inputs" not in part]
            if missing:
                self._add_inputs(database, missing)
                self._write_manifest(manifest)
            pieces = [read_parquet(self.directory / part["inputs"], read_dictionary=list(as_codes) or None)
                      for part in parts]
            table = pa.concat_tables(pieces, promote_options="permissive") if pieces else input_schema().empty_table()
            table = rows_within(table, id_range)
            if not manifest["sorted"]:
                table = table.take(pc.sort_indices(table.column("event_id")))
            return table

    def _add_inputs(self, database: Database, parts: list[dict[str, Any]]) -> None:
        """Read the inputs of ``parts`` from the database into files beside them, named in their entries."""
        from autopack_pipeline.storage.columnar.batches import _BatchReader
        from autopack_pipeline.storage.handle import as_handle

        if not parts:
            return
        with closing(_BatchReader(as_handle(database).engine, INPUT_KINDS)) as reader:
            for part in parts:
                inputs = self._extract_inputs(reader, part)
                part["inputs"] = self._write_file(inputs_file_of(part["file"]), inputs, INPUT_KINDS)

    def _extract_inputs(self, reader: _BatchReader, part: dict[str, Any]) -> pa.Table:
        stored = read_parquet(self.directory / part["file"], ["event_id"]).column("event_id")
        batches = _id_batches(part["min_event_id"] - 1, part["max_event_id"])
        tables = [table for _batch, table in prefetch(batches, lambda b: reader.read(*b), workers=2)]
        table = pa.concat_tables(tables).combine_chunks()
        # The range also holds rows that are not in this part: set aside for their timestamp, or
        # (PostgreSQL) committed late into another part.
        return table.filter(pc.is_in(table.column("event_id"), value_set=stored.combine_chunks()))

    # reading -------------------------------------------------------------------------------------

    def unreadable(self) -> dict[str, Any]:
        """The rows the last refresh left out for an unreadable timestamp: ``{"count", "rows"}``."""
        entry = (self.manifest() or {}).get("unreadable") or {}
        return {"count": int(entry.get("count", 0)), "rows": list(entry.get("rows", []))}

    @property
    def rows(self) -> int:
        manifest = self.manifest()
        return 0 if manifest is None else int(manifest["rows"])

    def table(self, columns: list[str] | None = None, *, as_codes: tuple[str, ...] = (),
              id_range: tuple[int, int] | None = None) -> pa.Table:
        """The stored events (``columns`` of the store schema, default all) in event_id order.

        Columns named in ``as_codes`` come back dictionary-encoded (Parquet's own dictionary pages),
        without building a string per row. ``id_range`` (lowest, highest event id, both included):
        only those events, and only the parts that can hold them are read.
        """
        for attempt in (1, 2):
            manifest = self.manifest()
            if manifest is None:
                raise ColumnarStoreError(f"no columnar store at {self.directory}; refresh it first")
            wanted = list(columns) if columns else store_schema().names
            need_ids = (not manifest["sorted"] or id_range is not None) and "event_id" not in wanted
            read_columns = wanted + (["event_id"] if need_ids else [])
            parts = parts_holding(manifest, id_range)
            try:
                pieces = [read_parquet(self.directory / p["file"], read_columns, list(as_codes) or None) for p in parts]
            except FileNotFoundError:
                if attempt == 2:
                    raise
                continue  # a refresh compacted the parts under us; read the new manifest
            if pieces:
                table = pa.concat_tables(pieces, promote_options="permissive")
            else:
                table = pa.schema([store_schema().field(name) for name in read_columns]).empty_table()
            table = rows_within(table, id_range)
            if not manifest["sorted"]:
                table = table.take(pc.sort_indices(table.column("event_id")))
            if need_ids:
                table = table.drop_columns(["event_id"])
            return table
        raise AssertionError("unreachable")  # pragma: no cover

    def events_frame(self) -> Any:
        """The events frame, exactly as :func:`~autopack_pipeline.storage.events.read_events` returns it."""
        return events_frame_of_table(self.table(list(EVENT_COLUMNS)))

    def event_arrays(self, *, parts: list[dict[str, Any]] | None = None,
                     manifest: dict[str, Any] | None = None) -> EventArrays:
        """The columns the analysis needs as :class:`~autopack_pipeline.domain.analysis.EventArrays`.

        Parts are decoded one at a time into preallocated arrays, labels as codes unified over all parts;
        every part's arrays are kept as the store's image, which later calls map (``columnar.image``).
        ``parts`` (entries of ``manifest``, the one they were chosen from): only those parts' events, in
        event_id order; a missing part file raises FileNotFoundError (choose again from a new manifest).
        """
        if parts is not None:
            if manifest is None:
                raise ValueError("parts are chosen from a manifest: pass it")
            if [p["file"] for p in parts] == [p["file"] for p in manifest["parts"]]:
                return self._every_part(manifest)
            return _load_arrays(self.directory, {**manifest, "parts": parts, "rows": sum(p["rows"] for p in parts)})
        for attempt in (1, 2):
            manifest = self.manifest()
            if manifest is None:
                raise ColumnarStoreError(f"no columnar store at {self.directory}; refresh it first")
            try:
                return self._every_part(manifest)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _every_part(self, manifest: dict[str, Any]) -> EventArrays:
        """The arrays of every part of ``manifest``: mapped from its image, else decoded into a new one."""
        if (image := read_image(self.directory, manifest)) is not None:
            return image
        writer = ImageWriter(self.directory, manifest)
        try:
            arrays = _load_arrays(self.directory, manifest, writer.zeros)
        except BaseException:
            writer.discard()
            raise
        return writer.finish(arrays)


def _id_batches(after: int, top: int) -> list[tuple[str, tuple]]:
    """The queries of the ids above ``after`` up to ``top``, BATCH_IDS ids each."""
    return [("event_id > %s AND event_id <= %s", (start, min(start + BATCH_IDS, top)))
            for start in range(after, top, BATCH_IDS)]


def refresh_store(database: Database, *, full: bool = False, progress: Progress | None = None
                  ) -> tuple[ColumnarStore | None, RefreshResult | None]:
    """Refresh the store of ``database`` (an engine or a handle); ``(None, None)`` for an in-memory database."""
    store = ColumnarStore.for_database(database)
    if store is None:
        return None, None
    return store, store.refresh(database, full=full, progress=progress)

