"""``autopack-telemetry``: the product's jobs from a terminal.

Exit codes: 0 success; 1 when the data refuses (empty database, gate closed, nothing to analyse);
2 for bad usage. A user mistake ends in a one-line message on stderr, never a traceback. Each area's
subcommands live in their own module, which registers them here.

The CLI is a front end, like the Dagster assets: a command parses its arguments, calls the application
layer (``autopack_pipeline.services``) and prints the result and an exit code. It composes no domain
rule and reads no table itself; besides services it uses only infrastructure: the settings, the
database URL and engine (``storage.database``), atomic output files, and the targets' constants as
argparse defaults. ``test_architecture.CLI_MAY_IMPORT`` holds that list.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any

from autopack_pipeline.cli import (
    analysis,
    calibration_patch,
    collection,
    database,
    doctor,
    logs,
    loop,
    pipeline,
    synth,
    tasks,
    transfer,
)
from autopack_pipeline.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    Refused,
    UsageError,
    print_json,
)

COMMAND_MODULES = [database, collection, analysis, pipeline, transfer, doctor, tasks, logs, calibration_patch, synth, loop]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # keep the usage line, but exit through main() with code 2
        self.print_usage(sys.stderr)
        raise UsageError(message)


class _SubcommandParser(_Parser):
    """A subcommand's parser: it also takes ``--database-url``, so the option works after the
    subcommand too. SUPPRESS leaves the value given before the subcommand alone when it is absent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--database-url", default=argparse.SUPPRESS, help=_DATABASE_URL_HELP)


_DATABASE_URL_HELP = "telemetry database (default: $DATABASE_URL, else sqlite:///autopack.db)"


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's), or a note when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autopack_pipeline")
    except PackageNotFoundError:  # running from a source tree that was never pip-installed
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``: the installed version, looked up only when asked. Reading the package metadata
    costs a few hundredths of a second, which argparse's own version action made every command pay."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog} {package_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autopack-telemetry", description="Token-budget telemetry and calibration for Autopack.")
    parser.add_argument("--version", action=_VersionAction,
                        help="print the installed autopack_pipeline version and exit")
    parser.add_argument("--database-url", help=_DATABASE_URL_HELP)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_SubcommandParser)
    for module in COMMAND_MODULES:
        module.register(sub, _SubcommandParser)
    return parser


def _fail(message: str, code: int, as_json: bool) -> int:
    """One line on stderr (``error:`` for bad usage); with ``--json`` also one JSON document on
    stdout, so a script reading stdout always gets JSON."""
    print(f"autopack-telemetry: {'error: ' if code == EXIT_USAGE else ''}{message}", file=sys.stderr)
    if as_json:
        print_json({"error": message, "exit_code": code})
    return code


def _os_error_text(exc: OSError) -> str:
    """``PATH: reason`` for an error about a file; the path is what the user can act on."""
    paths = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
    return f"{paths}: {exc.strerror or exc}"


def _database_error(exc: BaseException) -> bool:
    """A SQLAlchemy error, or one of ADBC's (the bulk loads and extractions). Looked up only when one is
    raised: a command that never loaded their modules (a usage error, ``--help``) cannot raise one, and
    loading SQLAlchemy costs a fifth of a second."""
    errors, adbc = sys.modules.get("sqlalchemy.exc"), sys.modules.get("adbc_driver_manager")
    return (errors is not None and isinstance(exc, errors.SQLAlchemyError)) or (
        adbc is not None and isinstance(exc, adbc.Error))


def _database_error_text(exc: BaseException) -> str:
    """The driver's message, without the SQL text or connection parameters: the wrapped driver error of
    SQLAlchemy's; of ADBC's, which quotes the statement it ran, the server's own message after ``ERROR:``."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip()
    if type(inner).__module__.startswith("adbc_driver_manager"):
        server = re.search(r"ERROR:\s+(.+)", text)
        text = server.group(1).strip() if server else text.splitlines()[0] if text else ""
    return text or type(inner).__name__


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C that a database driver turned into its own error. ADBC answers SIGINT during a blocking call
    (a COPY, a read) by cancelling the statement: the server's "canceling statement due to user request"
    (SQLSTATE 57014, which a statement timeout shares with another message) comes back, or, when the
    cancel itself failed, the driver's error raised from KeyboardInterrupt."""
    if isinstance(exc.__cause__, KeyboardInterrupt):
        return True
    return (type(exc).__module__.startswith("adbc_driver_manager") and getattr(exc, "sqlstate", None) == "57014"
            and "user request" in str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. User mistakes (bad arguments or settings, unusable paths, unsupported
    database URLs) end in one line and exit 2, never a traceback; with ``--json`` also as JSON."""
    # Nothing heavy before the subcommand runs: each command loads what its own path needs (SQLAlchemy and
    # the settings among them), and `--help` or a usage error loads none of it.
    arguments = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in arguments  # known before parsing, so a parse error is JSON too
    try:
        args = build_parser().parse_args(arguments)
        as_json = bool(getattr(args, "json", False))
        return args.func(args)
    except UsageError as exc:
        return _fail(str(exc), EXIT_USAGE, as_json)
    except ValueError as exc:  # bad settings (SettingsError) and a bad phases file (PhaseSetError) are ValueErrors
        return _fail(str(exc), EXIT_USAGE, as_json)
    except Refused as exc:
        return _fail(str(exc), EXIT_REFUSED, as_json)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return EXIT_OK
    except OSError as exc:
        if exc.filename is None:
            raise  # not about a path the user named: a fault worth its traceback
        # A file or directory the user named (or configured) cannot be read or written.
        return _fail(_os_error_text(exc), EXIT_USAGE, as_json)
    except Exception as exc:  # last: every narrower clause above comes first
        if _interrupted(exc):  # the work has been rolled back on the way out, as for the interrupt itself
            return 130
        if _database_error(exc):
            return _fail(f"database error: {_database_error_text(exc)}", EXIT_REFUSED, as_json)
        raise


if __name__ == "__main__":
    sys.exit(main())
