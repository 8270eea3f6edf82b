"""`apply-calibration` and `backtest`: from a reviewed calibration report to a new coefficient version.

Nothing changes the coefficient file without a person: the diff and the backtest are shown first, and
the file is written only with ``--yes`` or a typed "yes" on a terminal. The previous file is kept,
byte for byte, under ``estimator_coefficients.history/<version>.yaml`` so a calibration can be undone
by copying it back. The coefficient path honours ``AUTOPACK_SEEDS_DIR``. The work itself is
``autopack_pipeline.calibration_apply`` (which a loop calls without the CLI).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path
from typing import Any

from autopack_pipeline.calibration_apply import new_version_name, updated_yaml_text  # noqa: F401 (re-exported)
from autopack_pipeline.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    Refused,
    UsageError,
    positive_float,
    print_json,
)
from autopack_pipeline.domain.coefficients import HISTORY_DIR_NAME


def _changes_table(application) -> list[str]:
    patch, old, new = application.patch, application.old, application.new
    if application.through_calibration_section:
        lines = ["Changes (calibration section, by the estimate's category): prediction multiplier, budget margin, "
                 "budget floor"]
        for (category, complexity), setting in patch.settings.items():
            before = old.group_setting(category, complexity)
            was_m = 1.0 if before is None else before.prediction_multiplier
            was_floor = old.budget_floor(category, complexity) if before is None or before.budget_floor is None \
                else before.budget_floor
            was_margin = "rules" if before is None or before.budget_margin is None else f"x{before.budget_margin:.3f}"
            margin = "rules" if setting.budget_margin is None else f"x{setting.budget_margin:.3f}"
            lines.append(f"  {category}/{complexity}: multiplier x{was_m:.3f} -> x{setting.prediction_multiplier:.3f}, "
                         f"margin {was_margin} -> {margin}, floor {was_floor} -> {setting.budget_floor}")
        return lines
    overhead_changes = application.overhead_changes
    lines = ["Changes (PHASE_OVERHEAD, canonical category): proposed prediction multiplier, overhead multiplier"]
    for change in patch.changes:
        group = (change.category, change.complexity)
        before, after = old.overhead(*group), new.overhead(*group)
        k = overhead_changes.get(group)
        applied = "not applicable: a doc model prices this group, PHASE_OVERHEAD does not" if k is None else (
            f"overhead x{k:.3f}  {before} -> {after}")
        lines.append(f"  {change.category}/{change.complexity}: x{change.multiplier:.3f}  {applied}"
                     + (f"  (n={change.sample_count}, confidence {change.confidence})" if change.sample_count else ""))
    return lines


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def render_backtest(result: dict[str, Any]) -> str:
    rows = [("underestimation", "underestimation_pct", ".1f", "%"), ("truncation", "truncation_pct", ".1f", "%"),
            ("  unresolved truncated", "truncation_unresolved", "d", ""),
            ("budget waste P50", "budget_waste_p50", ".2f", "x"), ("budget waste P90", "budget_waste_p90", ".2f", "x"),
            ("mean budget", "mean_budget", ".0f", ""), ("mean prediction", "mean_predicted", ".0f", "")]
    lines = [f"Backtest on {result['events']} stored events ({result['skipped']['no_deliverables']} without "
             f"deliverables skipped); underestimation = actual > {result['tolerance']:g} x prediction.",
             f"The re-run reproduced the recorded prediction for {_fmt(result['rerun_match_pct'], '.1f')}% of events."]

    def table(title: str, block: dict[str, Any]) -> None:
        lines.append(f"{title} ({block['events']} events)       {result['old_version']:>22}  {result['new_version']:>28}")
        for label, key, spec, unit in rows:
            lines.append(f"  {label:<24}{_fmt(block['old'][key], spec) + unit:>22}  {_fmt(block['new'][key], spec) + unit:>28}")

    table("All events", result)
    for group in result["groups"]:
        table(f"{group['category']}/{group['complexity']}", group)
        scale, wanted = group.get("prediction_scale_median"), group.get("multiplier")
        if scale is not None and wanted is not None:
            lines.append(f"  predictions scaled by x{scale:.3f} (median) for a proposed x{wanted:.3f}")
            if abs(scale - wanted) > 0.05 * wanted:
                lines.append("  NOTE: the PHASE_OVERHEAD change moves only the overhead part of these estimates "
                             "(or nothing, for the doc models); the projected figures above are what it achieves.")
    lines.append("Unresolved: truncated events whose new budget exceeds the ceiling they hit; whether it would "
                 "have been enough is unknown.")
    return "\n".join(lines)


def _prepare(args: argparse.Namespace):
    from autopack_pipeline.calibration_apply import ApplicationRefused, plan_application, read_stored
    from autopack_pipeline.cli.common import open_engine
    from autopack_pipeline.domain.backtest import PatchError

    path = Path(args.patch)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"patch file not found: {path}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    try:
        return plan_application(data, read_stored(open_engine(args)), method=args.method, force=args.force,
                                scale=args.scale, tolerance=args.under_multiplier, patch_name=path.name)
    except PatchError as exc:
        raise UsageError(str(exc)) from None
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except ApplicationRefused as exc:
        raise Refused(str(exc)) from None


def cmd_backtest(args: argparse.Namespace) -> int:
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
        print("\n".join(_changes_table(application)))
        print(render_backtest(result))
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from autopack_pipeline.calibration_apply import write_application

    application = _prepare(args)
    path, old, new = application.path, application.old, application.new
    print("\n".join(_changes_table(application)))
    sys.stdout.writelines(difflib.unified_diff(application.old_text.splitlines(keepends=True),
                                               application.new_text.splitlines(keepends=True),
                                               fromfile=f"{path} ({old.version})", tofile=f"{path} ({new.version})"))
    result = application.backtest
    print(render_backtest(result) if result else "Backtest skipped: no stored events (check DATABASE_URL).")
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
    kept = write_application(application)
    print(f"Wrote {path} (version {new.version}); previous version kept as {kept}.")
    return EXIT_OK


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("patch", metavar="PATCH.json", help="a calibration JSON (ours, or Autopack's proposed_changes)")
    p.add_argument("--method", help="apply this method's proposals from the report's `methods` block instead")
    p.add_argument("--under-multiplier", type=positive_float, default=1.1,
                   help="underestimation tolerance of the backtest (default 1.1)")
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
                                   f"{HISTORY_DIR_NAME}/.")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="show the diff and the backtest; write nothing")
    p.add_argument("--yes", action="store_true", help="write without asking")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("backtest", help="old vs patched coefficients re-run on stored events")
    _common(p)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (no progress bar)")
    p.set_defaults(func=cmd_backtest)
