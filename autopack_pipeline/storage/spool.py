"""The local spool: events whose database write failed wait here until the database is back.

A Builder must never fail on telemetry, but dropping the event (Autopack's behaviour) loses exactly
the data written during an outage. So when a write fails because the database is locked, down or
unreachable, the row goes to an NDJSON file instead, and is written later: automatically after the
next successful write in the same process, or by ``autopack-telemetry spool replay``.

Layout: ``$AUTOPACK_SPOOL_DIR`` (default ``.autopack/spool`` under the working directory) holds one
file per database, named after a hash of the database's password-free URL, so events spooled for
one database are never replayed into another. A line is ``{"v", "table", "row", "spooled_at",
"error"}``: the column values about to be inserted (with the stable ``event_uid``) and a masked error
text; never a URL or a password.

Concurrency: appends and replays take an exclusive ``flock`` on the file, and each append is one
``write`` on an ``O_APPEND`` descriptor, so processes never interleave or lose lines. A replay
rewrites the file in place (never unlinks it) so an appender blocked on the lock still writes to the
file the next replay reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url

from autopack_pipeline.storage.database import resolve_database_url, safe_error_text

try:  # POSIX; elsewhere O_APPEND single writes are the only guarantee
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

SPOOL_FORMAT_VERSION = 1
_DATETIME_COLUMNS = ("timestamp", "created_at")

# Inserts one spooled row unless it is stored already; returns the rows inserted (0 or 1).
Inserter = Callable[[Connection, dict[str, Any]], int]
# Table name -> its inserter.
Inserters = Mapping[str, Inserter]


def spool_dir(configured: Path | None = None) -> Path:
    """The spool directory: ``configured``, else the settings' ``spool_dir`` (``$AUTOPACK_SPOOL_DIR``,
    else ``.autopack/spool``); a relative one lies under the working directory."""
    if configured is None:
        # The Builder calls the writer with an engine alone, so the variable is its contract: ask the
        # settings (the one reader of the environment) at the moment of the write.
        from autopack_pipeline.settings import load_storage_settings

        configured = load_storage_settings().spool_dir
    directory = Path(configured).expanduser()
    return directory if directory.is_absolute() else Path.cwd() / directory


@lru_cache(maxsize=64)
def _identity(raw_url: str) -> str:
    # The one resolution rule (absolute SQLite path, psycopg driver), then the password masked.
    return make_url(resolve_database_url(raw_url)).render_as_string(hide_password=True)


def _url_of(target: Engine | URL | str) -> str:
    url = target.url if isinstance(target, Engine) else target
    raw = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
    if isinstance(target, Engine):  # already resolved, so caching cannot go stale with the cwd
        return _identity(raw)
    return _identity.__wrapped__(raw)


def spool_path(target: Engine | URL | str, directory: Path | None = None) -> Path:
    """The spool file of the database ``target`` names (an engine, a URL, or a URL string), in
    ``directory`` (default: :func:`spool_dir`'s)."""
    # The password is masked before hashing: a changed password is still the same database.
    key = hashlib.sha256(_url_of(target).encode("utf-8")).hexdigest()[:16]
    return spool_dir(directory) / f"events-{key}.ndjson"


def is_transient_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached or written *now* (spool and retry).

    Locked, down, unreachable, connection dropped: OperationalError, InterfaceError, pool timeouts,
    invalidated connections. Errors about the row itself (integrity, data) are not: replaying the same
    row would fail the same way.
    """
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, sa_exc.DisconnectionError)):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


@contextmanager
def _locked(fd: int, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``fd``; yields False when ``blocking`` is off and someone else holds it."""
    if fcntl is None:
        yield True
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        yield False
        return
    try:
        yield True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _spool_line(table: str, row: dict[str, Any], error: str) -> bytes:
    envelope = {
        "v": SPOOL_FORMAT_VERSION,
        "table": table,
        "row": {key: _encode(value) for key, value in row.items()},
        "spooled_at": datetime.now(timezone.utc).isoformat(),
        "error": error,
    }
    return (json.dumps(envelope, sort_keys=True) + "\n").encode("utf-8")


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        with _locked(fd):
            written = os.write(fd, data)  # one write: no other process can land in the middle
            if written != len(data):  # a short write (disk full) leaves a broken line; replay reports it
                raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
            os.fsync(fd)
    finally:
        os.close(fd)


def spool_row(engine: Engine, table: str, row: dict[str, Any], exc: BaseException) -> Path | None:
    """Append ``row`` (for ``table``) to ``engine``'s spool; return the file, or None if that failed too.

    Never raises: it runs inside the writers' failure path, which must not raise into the Builder.
    """
    try:
        path = spool_path(engine)
        _append(path, _spool_line(table, row, safe_error_text(exc)))
        return path
    except Exception as spool_exc:  # noqa: BLE001 - last line of defence; say loudly what was lost
        logger.error(
            "[TELEMETRY] event for run=%s phase=%s LOST: database write failed (%s) and spooling failed (%s)",
            row.get("run_id"), row.get("phase_id"), safe_error_text(exc), spool_exc,
        )
        return None


def _read_lines(path: Path) -> list[bytes]:
    try:
        return [line for line in path.read_bytes().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def pending_count(target: Engine | URL | str, directory: Path | None = None) -> int:
    """How many spooled lines wait for the database ``target`` names."""
    return len(_read_lines(spool_path(target, directory)))


def other_spools(target: Engine | URL | str) -> dict[str, int]:
    """Spool files in the spool directory that belong to other databases: {file: lines}."""
    mine = spool_path(target)
    found = {}
    for path in sorted(spool_dir().glob("events-*.ndjson")):
        if path != mine and (count := len(_read_lines(path))):
            found[str(path)] = count
    return found


@dataclass
class ReplayReport:
    """Outcome of one replay: every line counted once, under what happened to it."""

    spool_file: str
    written: int = 0
    duplicates: int = 0
    still_failing: int = 0
    rejected: int = 0
    rejected_file: str | None = None
    error: str | None = None
    skipped_busy: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _decode(line: bytes) -> tuple[str, dict[str, Any]]:
    """``(table, row)`` of a spool line; raises ValueError for anything unusable."""
    envelope = json.loads(line)
    if not isinstance(envelope, dict) or not isinstance(envelope.get("row"), dict):
        raise ValueError("not a spool record")
    row = dict(envelope["row"])
    for column in _DATETIME_COLUMNS:
        if isinstance(row.get(column), str):
            row[column] = datetime.fromisoformat(row[column])
    return str(envelope.get("table")), row


def _reject(path: Path, line: bytes, reason: str) -> None:
    record = {"reason": reason, "line": line.decode("utf-8", errors="surrogateescape")}
    _append(path, (json.dumps(record) + "\n").encode("utf-8"))


def replay(engine: Engine, inserters: Inserters, *, blocking: bool = True) -> ReplayReport:
    """Write ``engine``'s spooled events to it, idempotently; keep what still cannot be written.

    ``inserters`` maps a spooled row's table name to the function that inserts it unless it is stored
    already (the writer's, :data:`autopack_pipeline.storage.events.SPOOL_INSERTERS`): passed in, so
    the spool knows files and locks, and the writer knows rows.

    Stops at the first transient failure (the database is still locked or down) and keeps that line
    and every later one. A line the database refuses for its content (or that cannot be parsed) goes
    to ``<spool>.rejected.ndjson`` with the reason, so it cannot block the spool forever. With
    ``blocking`` off, returns at once (``skipped_busy``) when another process is replaying.
    """
    path = spool_path(engine)
    report = ReplayReport(spool_file=str(path))
    try:
        fd = os.open(path, os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):  # no spool file can be there: nothing spooled
        return report
    try:
        with _locked(fd, blocking=blocking) as acquired:
            if not acquired:
                report.skipped_busy = True
                return report
            with os.fdopen(os.dup(fd), "rb") as reader:
                lines = [line for line in reader.read().splitlines() if line.strip()]
            kept = _replay_lines(engine, inserters, lines, report, Path(f"{path}.rejected.ndjson"))
            # Rewrite in place under the lock: appenders waiting on it then append to this same file.
            data = b"".join(line + b"\n" for line in kept)
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            if data:
                os.write(fd, data)
            os.fsync(fd)
    finally:
        os.close(fd)
    if report.written or report.duplicates:
        logger.info("replayed %d spooled events (%d already stored) from %s", report.written, report.duplicates, path)
    return report


def _replay_lines(
    engine: Engine, inserters: Inserters, lines: list[bytes], report: ReplayReport, rejected_path: Path,
) -> list[bytes]:
    for index, line in enumerate(lines):
        try:
            table, row = _decode(line)
            inserter = inserters[table]
        except (ValueError, KeyError, TypeError) as exc:
            _reject(rejected_path, line, f"unreadable spool line: {type(exc).__name__}: {exc}")
            report.rejected += 1
            report.rejected_file = str(rejected_path)
            continue
        try:
            with engine.begin() as connection:
                inserted = inserter(connection, row)
        except Exception as exc:  # noqa: BLE001 - sorted into "retry later" and "never will work"
            if is_transient_failure(exc):
                report.error = safe_error_text(exc)
                report.still_failing = len(lines) - index
                return lines[index:]
            _reject(rejected_path, line, f"database refused the row: {safe_error_text(exc)}")
            report.rejected += 1
            report.rejected_file = str(rejected_path)
            continue
        if inserted:
            report.written += 1
        else:
            report.duplicates += 1
    return []


def replay_if_pending(engine: Engine, inserters: Inserters) -> None:
    """Replay ``engine``'s spool when it has lines; a single ``stat`` when it has none. Never raises."""
    try:
        if os.stat(spool_path(engine)).st_size == 0:
            return
    except OSError:
        return
    try:
        replay(engine, inserters, blocking=False)
    except Exception as exc:  # noqa: BLE001 - a replay problem must not fail the write that triggered it
        logger.warning("spool replay failed: %s", safe_error_text(exc))
