"""What every subcommand shares: exit codes, errors, the database, JSON output, argument types."""

from __future__ import annotations

import argparse
import codecs
import gc
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from autopack_pipeline.services.json_text import indented_json

# Refused: the data refuses the request, exit 1 with the message. It is the services' own class, so a
# refusal raised in the application layer ends the command the same way as one raised here.
from autopack_pipeline.services.refusals import Refused  # noqa: F401 (re-exported)

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad usage or configuration: exit 2 with the message."""


# domain.analysis.CALIBRATION_METHODS, spelled out so the CLI starts without importing the domain.
CALIBRATION_METHOD_CHOICES = ("coverage", "autopack-median")


def print_json(document: Any) -> None:
    """One JSON document on stdout (``json_text``: UTF-8 text). A stdout that cannot take every
    character (a terminal in a Latin-1 locale) gets the standard library's ASCII escapes instead; a
    stream of text in memory (no encoding: a caller capturing the output) takes any."""
    encoding = sys.stdout.encoding
    if encoding is None or codecs.lookup(encoding).name in ("utf-8", "utf-8-sig"):
        sys.stdout.write(indented_json(document, default=str))
    else:
        json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


# The commands that only read the telemetry database. Given a SQLite file that does not exist they stop
# with exit 2 naming the path (a wrong path is a usage mistake, as `import` of a missing file is) and
# create nothing; every other command creates the database. `doctor` reports the same as a failed check.
READ_ONLY_COMMANDS = frozenset({
    "db-check", "metrics", "calibrate", "export", "tasks list", "tasks show", "backtest", "apply-calibration",
})


def command_name(args: argparse.Namespace) -> str:
    """The subcommand as typed, e.g. ``metrics`` or ``tasks list``."""
    command = getattr(args, "command", None) or ""
    nested = getattr(args, f"{command}_command", None)
    return f"{command} {nested}" if nested else command


def storage_settings(args: argparse.Namespace):
    """The storage settings of this command (``DATABASE_URL``, ``TELEMETRY_DB_ENABLED``, the spool and
    columnar directories), read from the environment once per command and kept on ``args``."""
    from autopack_pipeline.settings import load_storage_settings

    if getattr(args, "storage_settings", None) is None:
        args.storage_settings = load_storage_settings()
    return args.storage_settings


def database_url(args: argparse.Namespace) -> str:
    """The database this command uses: ``--database-url``, else ``DATABASE_URL``, else the default;
    resolved (absolute SQLite path). It carries the password: show ``describe_database`` instead."""
    return storage_settings(args).resolved_database_url(getattr(args, "database_url", None))


def open_handle(args: argparse.Namespace):
    """The telemetry database of ``--database-url`` / ``DATABASE_URL``, ready for use, as a handle
    (``storage.handle``: an up-to-date SQLite file is checked without SQLAlchemy, which loads when
    something needs the engine).

    A brand-new database gets the schema, unless the command only reads (``READ_ONLY_COMMANDS``):
    then a missing SQLite file is a usage error naming the path. One at an older revision (including
    an Autopack database never migrated) is refused with exit 1 and a message saying to run ``db upgrade``.
    """
    from autopack_pipeline.services.telemetry_database import open_database_handle
    from autopack_pipeline.storage.database_url import DatabaseNotFound

    try:
        return open_database_handle(database_url(args), must_exist=command_name(args) in READ_ONLY_COMMANDS)
    except DatabaseNotFound as exc:
        raise UsageError(str(exc)) from exc


def open_engine(args: argparse.Namespace):
    """:func:`open_handle`'s database as SQLAlchemy's engine."""
    return open_handle(args).engine


def freeze_loaded_objects() -> None:
    """Set what the command has loaded so far (modules, classes, functions, ~80,000 objects that live as
    long as the process) aside from the garbage collector: its full collections during the analysis
    and the interpreter's at exit no longer walk them, which cost ``calibrate`` a third of a second at
    exit. Called once the command's imports are done. A process running many commands (the tests)
    first collects what an earlier command froze and has become garbage since, so nothing piles up."""
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
    gc.freeze()


@contextmanager
def collector_paused() -> Iterator[None]:
    """What the command loaded so far set aside from the collector (:func:`freeze_loaded_objects`), the
    collector off while the command runs, and what is alive as it ends set aside too, then on again.

    The analysis makes few Python objects that only the collector frees (33,000 at the end of ``calibrate``
    at 1M or 10M events, a few MB), and its collections of the young objects cost ``calibrate`` 0.15 s of
    CPU. At the end, what the command loaded after the first freeze (Pillow and the plot module, a few
    thousand objects) and its results are frozen: the interpreter's exit runs full collections over every object
    not frozen while it clears the modules, a quarter of a second after ``calibrate``'s last line of output;
    frozen, they are freed as the modules are cleared, or with the process. The next command in the same
    process collects what became garbage (:func:`freeze_loaded_objects`)."""
    freeze_loaded_objects()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()  # moves lists; walks nothing
        if enabled:
            gc.enable()


def identity_line(database) -> str:
    """The database a command used (an engine or a handle), as the first line of its report."""
    from autopack_pipeline.storage.handle import describe_database

    identity = describe_database(database)
    return f"Telemetry database: {identity.url}" + (f" ({identity.sqlite_path})" if identity.sqlite_path else "")


def extraction_progress(args: argparse.Namespace):
    """The progress scope of a refresh of the columnar copy: a transient bar on a terminal."""
    from autopack_pipeline.cli.progress import progress_bar

    return lambda: progress_bar(args, "Extracting new events to the columnar copy", "rows", transient=True)


def load_event_arrays(database, args: argparse.Namespace, run_ids: list[str] | None = None):
    """The events as analysis arrays, and the document of the rows left out for an unreadable timestamp
    (warned about on stderr here). All runs come through the columnar copy (refreshed first, so only
    new events are read from the database); a selection of runs is read from the database."""
    from autopack_pipeline.services.event_reading import read_event_arrays

    arrays, unreadable = read_event_arrays(database, run_ids, allow_empty=getattr(args, "allow_empty_db", False),
                                           extraction_progress=extraction_progress(args))
    warn_unreadable(unreadable)
    return arrays, unreadable


def warn_unreadable(document: dict[str, Any], what: str = "those rows are left out of the analysis") -> None:
    """One warning on stderr naming the rows set aside for an unreadable timestamp, if there are any."""
    from autopack_pipeline.services.event_reading import describe_unreadable

    message = describe_unreadable(document, what=what)
    if message:
        print(f"autopack-telemetry: warning: {message}", file=sys.stderr)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def unit_float(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


