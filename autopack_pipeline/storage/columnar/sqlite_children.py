"""A cold extraction from SQLite read by child processes: each reads every other id batch through ADBC's
SQLite driver and hands the parent its batches as Arrow IPC streams, in the store's schema.

Why children: the reading is most of an extraction, and in one process it shares the GIL and mostly one
core with the parent's writing; two children read on both cores while the parent writes parts. Why ADBC
there and not in the parent: the driver links its own copy of the SQLite library, and two copies in one
process break each other's POSIX file locks (``storage/adbc.py``); a child has only its own copy, as any
other process reading the database. ADBC hands columns to Arrow in C: no ``printf`` line per row, no
text to parse. A cold extraction of 10M events took 35-40 s of CPU in one process, 23-26 s with the
children (their part 17-19 s); the wall time 0.5-0.75 of before at a load average of 4-5 here.

Only what the CSV route would read the same comes back: a column whose values are not of its kind
(SQLite keeps any type anywhere: a REAL among integers, an INTEGER run id in the first rows, a flag
other than 0 or 1), an int32 overflow or any error sends the batch back to the parent, which reads it
by its own routes (``batches.py``). A child that dies leaves its remaining batches to the parent too.
Rows with an unreadable timestamp are set aside in the child and named to the parent in the stream's
metadata. A child dies with the parent's Ctrl-C (the default SIGINT), or at its next write once the
parent is gone (a broken pipe).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from autopack_pipeline.storage.arrow_modules import pa, pc
from autopack_pipeline.storage.columnar.encoding import TABLE, ColumnarStoreError, _store_table
from autopack_pipeline.storage.timestamps import UnreadableTimestamp, set_aside_unreadable

logger = logging.getLogger("autopack_pipeline.storage.columnar")

CHILDREN = 2
# Below this many id batches (a million ids) a refresh reads in the parent: a child costs about 0.3 s of
# CPU to start. At four batches the children already took the extraction of 1M events from 3.7-4.0 s
# to 2.0-2.6 s here (a refresh of 100k new events, one batch, stays in the parent).
MIN_BATCHES = 4
_FALLBACK = b"fallback"  # stream metadata: the child did not read this batch; the reason
_ASIDE = b"aside"  # stream metadata: the rows set aside for an unreadable timestamp, as JSON
_TEXT_KINDS = ("label", "text", "timestamp")


def select_sql(kinds: dict[str, str], present: set[str], where: str) -> str:
    """The SELECT of one batch's columns (``NULL`` for a column the table lacks), in event_id order."""
    exprs = [f'"{name}"' if name in present else f'NULL AS "{name}"' for name in kinds]
    return f"SELECT {', '.join(exprs)} FROM {TABLE} WHERE {where} ORDER BY event_id"


def checked(table: pa.Table, kinds: dict[str, str]) -> pa.Table:
    """``table`` as ADBC read it, when every column holds what the CSV route would read the same; else
    ValueError. The driver types a column by its first rows and turns a later number in a text column
    into text as SQLite does, but a text column typed from numbers, or a REAL in an integer column, would
    not come back as the CSV route reads it."""
    for name, kind in kinds.items():
        column = table.column(name)
        if pa.types.is_null(column.type) or column.null_count == len(column):
            if kind in _TEXT_KINDS:  # NULL in every row: typed null or int64 by the driver
                table = table.set_column(table.schema.get_field_index(name), name, pa.nulls(len(column), pa.string()))
            continue
        if kind in _TEXT_KINDS and not pa.types.is_string(column.type):
            raise ValueError(f"{name} read as {column.type}, not text")
        if kind not in _TEXT_KINDS and not pa.types.is_int64(column.type):
            raise ValueError(f"{name} read as {column.type}, not integers")
        if kind == "flag":
            bounds = pc.min_max(column)
            if bounds["min"].as_py() < 0 or bounds["max"].as_py() > 1:
                raise ValueError(f"{name} holds values other than 0 and 1")
    return table


# the child ------------------------------------------------------------------------------------------


def _child() -> None:
    import adbc_driver_manager
    import adbc_driver_sqlite

    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C reaches the process group: go quietly
    request = json.loads(sys.stdin.buffer.read())
    kinds, present = request["kinds"], set(request["present"])
    out = sys.stdout.buffer
    database = adbc_driver_sqlite.connect(request["path"])
    connection = adbc_driver_manager.AdbcConnection(database)

    def query(sql: str) -> pa.Table:
        statement = adbc_driver_manager.AdbcStatement(connection)
        try:
            statement.set_sql_query(sql)
            stream, _rows = statement.execute_query()
            return pa.RecordBatchReader._import_from_c(stream.address).read_all()
        finally:
            statement.close()

    # A writer holding the file (a rollback journal) is waited for as the parent's connections wait.
    query(f"PRAGMA busy_timeout = {int(request['busy_timeout_ms'])}")
    for where, params in request["batches"]:
        metadata: dict[bytes, bytes] = {}
        try:
            clause = where % tuple(int(value) for value in params)  # integers only: no text in the SQL
            table = checked(query(select_sql(kinds, present, clause)), kinds)
            table, aside = set_aside_unreadable(table, ["timestamp"])
            table = _store_table(table, kinds)
            metadata[_ASIDE] = json.dumps([row.to_dict() for row in aside]).encode()
        except Exception as exc:  # noqa: BLE001 - the parent reads the batch by its own routes
            table = pa.table({"event_id": pa.array([], pa.int64())})
            metadata[_FALLBACK] = f"{type(exc).__name__}: {exc}".encode()
        with pa.ipc.new_stream(out, table.schema.with_metadata(metadata)) as writer:
            writer.write_table(table)
        out.flush()
    connection.close()
    database.close()


# the parent -----------------------------------------------------------------------------------------


def child_command() -> list[str]:
    """The child's command line: this interpreter, calling :func:`_child` of this very package (its
    directory put first on the path unless the path holds it already, as site-packages; however the
    parent found it; not ``-m``: the package imports this module first, which runpy warns of)."""
    root = str(Path(__file__).resolve().parents[3])
    return [sys.executable, "-c", f"import sys; {root!r} in sys.path or sys.path.insert(0, {root!r}); "
            f"from {__name__} import _child; _child()"]


class ChildReaders:
    """``CHILDREN`` child processes reading the batches ``k, k + CHILDREN, ...`` of ``batches`` each;
    :meth:`read` (batch ``index`` on a thread of its own per child, in order) gives what
    ``_BatchReader.read_apart`` would."""

    def __init__(self, reader: Any, path: str, batches: list[tuple[str, tuple]]) -> None:
        self.reader = reader
        self.processes: list[subprocess.Popen | None] = []
        self.errors: list[Any] = []
        self.closed = False
        try:
            self._start(path, batches)
        except BaseException:
            self.close()
            raise

    def _start(self, path: str, batches: list[tuple[str, tuple]]) -> None:
        from autopack_pipeline.storage.database import SQLITE_BUSY_TIMEOUT_MS

        reader = self.reader
        for k in range(CHILDREN):
            request = {"path": path, "kinds": reader.kinds, "present": sorted(reader.present),
                       "busy_timeout_ms": SQLITE_BUSY_TIMEOUT_MS,
                       "batches": [[where.replace("%s", "%d"), list(params)] for where, params in batches[k::CHILDREN]]}
            errors = tempfile.TemporaryFile()
            process = subprocess.Popen(child_command(), stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=errors)
            self.processes.append(process)
            self.errors.append(errors)
            try:
                process.stdin.write(json.dumps(request).encode())
                process.stdin.close()
            except BrokenPipeError:  # it ended already: its first batch finds it gone and says why
                pass

    def read(self, index: int, batch: tuple[str, tuple]) -> tuple[pa.Table, list[UnreadableTimestamp]]:
        if self.closed:  # the extraction stopped: the batch is not wanted
            raise ColumnarStoreError("the reading children were ended")
        k = index % CHILDREN
        process = self.processes[k]
        if process is not None:
            try:
                table = pa.ipc.open_stream(process.stdout).read_all()
            except (pa.ArrowInvalid, OSError, ValueError) as exc:  # the child is gone: its batches are read here
                if self.closed:
                    raise ColumnarStoreError("the reading children were ended") from exc
                self._lost(k, exc)
            else:
                metadata = table.schema.metadata or {}
                if _FALLBACK not in metadata:
                    aside = [UnreadableTimestamp(**row) for row in json.loads(metadata[_ASIDE])]
                    return table.replace_schema_metadata(None), aside
                logger.info("the ADBC route could not read a batch (%s); trying the CSV route",
                            metadata[_FALLBACK].decode(errors="replace"))
        return self.reader.read_apart(*batch)

    def _lost(self, k: int, exc: Exception) -> None:
        process, self.processes[k] = self.processes[k], None
        process.kill()
        process.wait()
        errors = self.errors[k]
        errors.seek(0)
        said = errors.read()[-2000:].decode(errors="replace").strip()
        # Ctrl-C reaches the whole process group: the child ends first and this process stops next,
        # so there is nothing to warn of (the parent would not read the batches after all).
        log = logger.debug if process.returncode == -signal.SIGINT else logger.warning
        log("a reading child process ended (%s; exit code %s)%s; the parent reads its batches",
                       exc, process.returncode, f": {said}" if said else "")

    def close(self) -> None:
        """End the children (when the extraction stops early, they may still be reading)."""
        self.closed = True
        for process in self.processes:
            if process is not None:
                process.kill()
                process.wait()
        for errors in self.errors:
            errors.close()


def child_readers(reader: Any, batches: list[tuple[str, tuple]]) -> ChildReaders | None:
    """Children to read ``batches`` of ``reader``'s SQLite database file, when there are enough batches
    to be worth them and the driver is installed; None otherwise (the parent reads them)."""
    if (reader.dialect != "sqlite" or len(batches) < MIN_BATCHES or "timestamp" not in reader.kinds
            or not sys.executable):  # an embedded interpreter may not know its executable
        return None
    import importlib.util

    from autopack_pipeline.storage.handle import describe_database

    path = describe_database(reader.engine).sqlite_path
    # The driver found, not imported: the parent never loads its SQLite library.
    if not path or importlib.util.find_spec("adbc_driver_sqlite") is None:
        return None
    try:
        return ChildReaders(reader, path, batches)
    except OSError as exc:  # no interpreter to start (an embedded one), no process left: read here
        logger.warning("could not start the reading child processes (%s); the parent reads every batch", exc)
        return None
