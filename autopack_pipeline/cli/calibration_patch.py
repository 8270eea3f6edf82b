"""`apply-calibration` and `backtest`: from a reviewed calibration report to a new coefficient version.

Nothing changes the coefficient file without a person: the diff and the backtest are shown first, and
the file is written only with ``--yes`` or a typed "yes" on a terminal. The previous file is kept,
byte for byte, under ``estimator_coefficients.history/<version>.yaml`` so a calibration can be undone
by copying it back. The coefficient path honours ``AUTOPACK_SEEDS_DIR``. The work itself is
``autopack_pipeline.services.calibration_apply`` (which a loop calls without the CLI).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from autopack_pipeline.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    Refused,
    UsageError,
    positive_float,
    print_json,
)
from autopack_pipeline.domain.targets import UNDER_TOLERANCE


def _prepare(args: argparse.Namespace):
    from autopack_pipeline.cli.common import open_engine
    from autopack_pipeline.services.calibration_apply import ApplicationRefused, PatchError, plan_patch_file

    try:
        return plan_patch_file(open_engine(args), Path(args.patch), method=args.method, force=args.force,
                               scale=args.scale, tolerance=args.under_multiplier)
    except (PatchError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    except ApplicationRefused as exc:
        raise Refused(str(exc)) from None


def cmd_backtest(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.calibration_review import change_lines, render_backtest

    application = _prepare(args)
    result = application.backtest
    if result is None:
        raise Refused("no stored events to backtest on (check DATABASE_URL)")
    if args.json:
        print_json({"patch": [c.__dict__ for c in application.patch.changes], "backtest": result,
                    "calibration": [{"category": c, "complexity": x, **s.model_dump()}
                                    for (c, x), s in application.patch.settings.items()],
                    "overhead_multipliers": [{"category": c, "complexity": x, "multiplier": k}
                                             for (c, x), k in application.overhead_changes.items()]})
    else:
        print("\n".join(change_lines(application)))
        print(render_backtest(result))
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from autopack_pipeline.services.calibration_apply import write_application
    from autopack_pipeline.services.calibration_review import change_lines, diff_text, render_backtest
    from autopack_pipeline.services.coefficient_target import coefficient_file_to_write, copy_packaged_seeds

    application = _prepare(args)
    new = application.new
    path, packaged = coefficient_file_to_write(application.path)
    print("\n".join(change_lines(application)))
    sys.stdout.write(diff_text(application))
    result = application.backtest
    print(render_backtest(result) if result else "Backtest skipped: no stored events (check DATABASE_URL).")
    if packaged is not None:
        print(f"The seeds in use are the installed package's read-only defaults ({packaged}); they are never "
              f"edited. {'Writing would copy' if args.dry_run else 'Copying'} them to {path.parent} first, "
              "the seeds every command run from this directory then uses.")
    if args.dry_run:
        print("Dry run: nothing written.")
        return EXIT_OK
    if not args.yes:
        if not sys.stdin.isatty():
            print(f"Not written: confirmation needed. Re-run with --yes to write {path}, or --dry-run to preview.",
                  file=sys.stderr)
            return EXIT_REFUSED
        try:
            answer = input(f"Write {new.version} to {path}? Type 'yes' to confirm: ")
        except EOFError:
            answer = ""
        if answer.strip().lower() != "yes":
            print("Not written.")
            return EXIT_REFUSED
    if packaged is not None:
        copy_packaged_seeds(packaged, path.parent)
    kept = write_application(replace(application, path=path))
    print(f"Wrote {path} (version {new.version}); previous version kept as {kept}.")
    return EXIT_OK


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("patch", metavar="PATCH.json", help="a calibration JSON (ours, or Autopack's proposed_changes)")
    p.add_argument("--method", help="apply this method's proposals from the report's `methods` block instead")
    p.add_argument("--under-multiplier", type=positive_float, default=UNDER_TOLERANCE,
                   help=f"underestimation tolerance of the backtest (default {UNDER_TOLERANCE:g})")
    p.add_argument("--force", action="store_true",
                   help="apply even if the patch was computed against another coefficient version")
    p.add_argument("--scale", choices=["prediction", "overhead"], default="prediction",
                   help="prediction (default): move each group's median prediction by the proposed multiplier; "
                        "overhead: multiply PHASE_OVERHEAD by it literally, as Autopack's report says")


def register(sub: Any, parser_class: type) -> None:
    p = sub.add_parser("apply-calibration", help="turn a reviewed calibration into a new coefficient version",
                       description="Shows the YAML diff and a backtest on stored events, then writes a new version "
                                   "of estimator_coefficients.yaml ($AUTOPACK_SEEDS_DIR) only with --yes or a typed "
                                   "'yes' on a terminal. The previous file is kept under "
                                   # domain.coefficients.HISTORY_DIR_NAME, spelled out so that registering
                                   # the subcommand imports no service (test_cli_manners checks they agree).
                                   "estimator_coefficients.history/.")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="show the diff and the backtest; write nothing")
    p.add_argument("--yes", action="store_true", help="write without asking")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("backtest", help="old vs patched coefficients re-run on stored events")
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (no progress bar)")
    p.set_defaults(func=cmd_backtest)
