"""NDJSON import: lines validated one by one (:mod:`.records`), bad ones quarantined verbatim with their
number and reason, good ones imported in batches of one transaction each."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy.engine import Engine

from autopack_pipeline.output_files import AtomicFile, check_output_path
from autopack_pipeline.storage.database import safe_error_text
from autopack_pipeline.storage.events import insert_estimation_rows, stored_event_uids
from autopack_pipeline.storage.phase_rows import PhaseRow, ensure_phase_rows
from autopack_pipeline.storage.spool import is_transient_failure
from autopack_pipeline.storage.transfer.records import LineRejected, parse_line

DEFAULT_BATCH_SIZE = 500


@dataclass
class ImportReport:
    """Outcome of an import: every non-blank line is imported, a duplicate, or rejected."""

    lines: int = 0
    imported: int = 0
    duplicates: int = 0
    rejected: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)
    quarantine_file: str | None = None
    aborted: str | None = None  # the database became unavailable; later lines were not attempted

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Quarantine:
    """Rejected lines, verbatim with line number and reason, written atomically at the end.

    The path is checked up front (a directory, link or FIFO there stops the import before any line
    is read); the file is only created when a line is rejected, so a clean import from a read-only
    directory works.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        check_output_path(self.path)
        self._file: AtomicFile | None = None

    def add(self, line_no: int, raw: bytes, reason: str) -> None:
        if self._file is None:
            self._file = AtomicFile(self.path, text=True, encoding="ascii")
        # surrogateescape keeps undecodable bytes recoverable; ensure_ascii keeps the file valid UTF-8.
        record = {"line": line_no, "reason": reason, "raw": raw.decode("utf-8", errors="surrogateescape")}
        self._file.handle.write(json.dumps(record, ensure_ascii=True) + "\n")

    def close(self) -> str | None:
        if self._file is None:
            return None
        self._file.commit()
        return str(self.path)


_UTF8_BOM = b"\xef\xbb\xbf"


def _lines(source: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    for number, raw in enumerate(source, start=1):
        line = raw.rstrip(b"\r\n")
        if number == 1 and line.startswith(_UTF8_BOM):  # a file's byte order mark, as Windows tools write it
            line = line[len(_UTF8_BOM):]
        if line.strip():
            yield number, line


class _Importer:
    def __init__(self, engine: Engine, quarantine: _Quarantine, report: ImportReport) -> None:
        self.engine = engine
        self.quarantine = quarantine
        self.report = report
        self.known_phases: set[tuple[str, str]] = set()  # committed run/phase pairs; saves queries

    def reject(self, line_no: int, raw: bytes, reason: str) -> None:
        self.report.rejected += 1
        self.report.rejections.append({"line": line_no, "reason": reason})
        self.quarantine.add(line_no, raw, reason)

    def _write(self, batch: list[tuple[int, bytes, dict[str, Any]]]) -> tuple[int, int]:
        """Import ``batch`` in one transaction; returns (inserted, duplicates) or raises (rolled back).

        A few statements per batch (which event_uids are stored, the runs and phases missing, the rows),
        not per line: one by one, the import took 420 events a second into SQLite."""
        with self.engine.begin() as connection:
            stored = stored_event_uids(connection, [row["event_uid"] for _line_no, _raw, row in batch])
            rows = []
            for _line_no, _raw, row in batch:
                if row["event_uid"] not in stored:  # nor the same uid on an earlier line of the batch
                    stored.add(row["event_uid"])
                    rows.append(row)
            # Only a row that goes in may create its run and phase (else an import of nothing new would add phases).
            wanted = [PhaseRow(row["run_id"], row["phase_id"], row["category"], row["complexity"]) for row in rows
                      if (row["run_id"], row["phase_id"]) not in self.known_phases]
            ensure_phase_rows(connection, wanted)
            inserted = insert_estimation_rows(connection, rows)
        self.known_phases.update((row.run_id, row.phase_id) for row in wanted)
        return inserted, len(batch) - inserted

    def flush(self, batch: list[tuple[int, bytes, dict[str, Any]]]) -> None:
        if not batch:
            return
        try:
            inserted, duplicates = self._write(batch)
        except Exception as exc:
            if is_transient_failure(exc):
                raise
            # Something in the batch was refused: redo it line by line to find and quarantine it.
            inserted = duplicates = 0
            for item in batch:
                try:
                    one_in, one_dup = self._write([item])
                except Exception as line_exc:
                    if is_transient_failure(line_exc):
                        raise
                    self.reject(item[0], item[1], f"database refused the row: {safe_error_text(line_exc)}")
                    continue
                inserted, duplicates = inserted + one_in, duplicates + one_dup
        self.report.imported += inserted
        self.report.duplicates += duplicates


def import_events(
    engine: Engine,
    source: IO[bytes],
    quarantine_path: Path,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import the NDJSON lines of ``source`` (a binary file) into ``engine``'s events table.

    Bad lines are rejected with their 1-based line number and reason and written to
    ``quarantine_path`` (only created when something was rejected). When the database becomes
    unavailable midway, ``aborted`` says why; lines before the failing batch are committed, and
    running the import again is safe (duplicates are skipped by ``event_uid``).
    """
    report = ImportReport()
    quarantine = _Quarantine(quarantine_path)
    importer = _Importer(engine, quarantine, report)
    batch: list[tuple[int, bytes, dict[str, Any]]] = []
    try:
        for line_no, raw in _lines(source):
            report.lines += 1
            try:
                batch.append((line_no, raw, parse_line(raw)))
            except LineRejected as exc:
                importer.reject(line_no, raw, str(exc))
            if len(batch) >= batch_size:
                importer.flush(batch)
                batch = []
                if progress:
                    progress(report.lines)
        importer.flush(batch)
    except Exception as exc:
        if not is_transient_failure(exc):
            raise
        report.aborted = safe_error_text(exc)
    finally:
        report.quarantine_file = quarantine.close()
    return report


def import_file(engine: Engine, path: Path, quarantine_path: Path | None = None, **kwargs: Any) -> ImportReport:
    """:func:`import_events` for a file; the quarantine defaults to ``<path>.rejected.ndjson``."""
    path = Path(path)
    target = quarantine_path or path.with_name(path.name + ".rejected.ndjson")
    with path.open("rb") as source:
        return import_events(engine, source, target, **kwargs)
