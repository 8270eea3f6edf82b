"""``autopack-telemetry``: the product's jobs from a terminal.

Exit codes: 0 success; 1 when the data refuses (empty database, gate closed, nothing to analyse);
2 for bad usage. A user mistake ends in a one-line message on stderr, never a traceback. Each area's
subcommands live in their own module, which registers them here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from autopack_pipeline.cli import analysis, collection, database, pipeline
from autopack_pipeline.cli import doctor, transfer
from autopack_pipeline.cli import tasks
from autopack_pipeline.cli import calibration_patch, logs
from autopack_pipeline.cli import synth
from autopack_pipeline.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    Refused,
    UsageError,
)

COMMAND_MODULES = [database, collection, analysis, pipeline, transfer, doctor, tasks, logs, calibration_patch, synth]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # keep the usage line, but exit through main() with code 2
        self.print_usage(sys.stderr)
        raise UsageError(message)


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's), or a note when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("autopack_pipeline")
    except PackageNotFoundError:  # running from a source tree that was never pip-installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="autopack-telemetry", description="Token-budget telemetry and calibration for Autopack.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the installed autopack_pipeline version and exit")
    parser.add_argument("--database-url", help="telemetry database (default: $DATABASE_URL, else sqlite:///autopack.db)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.register(sub, _Parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from autopack_pipeline.collection.phases import PhaseSetError
    from autopack_pipeline.settings import SettingsError

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except UsageError as exc:
        print(f"autopack-telemetry: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (SettingsError, PhaseSetError, ValueError) as exc:
        print(f"autopack-telemetry: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Refused as exc:
        print(f"autopack-telemetry: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except SQLAlchemyError as exc:
        # Show the driver's message without the SQL text or connection parameters.
        print(f"autopack-telemetry: database error: {getattr(exc, 'orig', exc) or type(exc).__name__}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
