"""`apply-calibration` and `backtest`: from a reviewed calibration report to a new coefficient version.

Nothing changes the coefficient file without a person: the diff and the backtest are shown first, and
the file is written only with ``--yes`` or a typed "yes" on a terminal. The previous file is kept,
byte for byte, under ``estimator_coefficients.history/<version>.yaml`` so a calibration can be undone
by copying it back. The coefficient path honours ``AUTOPACK_SEEDS_DIR``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from autopack_pipeline.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    Refused,
    UsageError,
    positive_float,
    print_json,
)

HISTORY_DIR_NAME = "estimator_coefficients.history"
_VERSION_SUFFIX = "+cal"
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._+-]")


def read_deliverables(engine, event_ids) -> Any:
    """``deliverables_json`` of the given events as lists, indexed by ``event_id``.

    ``read_events`` does not return deliverables (the metrics never need them); the backtest does.
    Unparseable JSON counts as no deliverables.
    """
    import pandas as pd
    from sqlalchemy import select

    from autopack_pipeline.storage.models import TokenEstimationV2Event

    table = TokenEstimationV2Event.__table__
    with engine.connect() as connection:
        rows = connection.execute(select(table.c.event_id, table.c.deliverables_json)).all()
    wanted = {int(i) for i in event_ids}
    parsed = {}
    for event_id, text in rows:
        if event_id not in wanted:
            continue
        try:
            value = json.loads(text) if text else []
        except ValueError:
            value = []
        parsed[int(event_id)] = [str(v) for v in value] if isinstance(value, list) else []
    return pd.Series(parsed, dtype=object)


def _load_patch(args: argparse.Namespace):
    from autopack_pipeline.domain.backtest import read_patch

    path = Path(args.patch)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"patch file not found: {path}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not JSON: {exc}") from None
    return read_patch(data, method=args.method)


def new_version_name(old_version: str, now: datetime) -> str:
    """``<base>+cal<UTC stamp>``: the base is the old version without an earlier ``+cal`` suffix."""
    return old_version.split(_VERSION_SUFFIX)[0] + _VERSION_SUFFIX + now.strftime("%Y%m%dT%H%M%SZ")


def _line(key: str, value: Any) -> str:
    if key == "calibration_date":
        return f"{key}: {value}"  # an ISO date reads back as the same date, unquoted as in the seed file
    return yaml.safe_dump({key: value}, width=10**6, default_flow_style=False).strip()


def updated_yaml_text(old_text: str, old, new) -> str:
    """The new file: the old text with only the changed values edited, so comments survive and the
    diff shows exactly what moved. If the edit does not reproduce ``new`` exactly (an unusual layout,
    a new row), the whole table is written out instead, after a note."""
    from autopack_pipeline.domain.coefficients import CoefficientTable

    text = old_text
    for key in ("version", "calibration_date", "calibration_samples"):
        if getattr(new, key) != getattr(old, key):
            text = re.sub(rf"^{key}:.*$", lambda _m, k=key: _line(k, getattr(new, k)), text, count=1, flags=re.MULTILINE)
    if new.source != old.source:
        # `source` may be a folded block over several indented lines: replace the key and its block.
        text = re.sub(r"^source:.*\n(?:[ \t]+.*\n)*", lambda _m: _line("source", new.source) + "\n", text,
                      count=1, flags=re.MULTILINE)
    for raw, row in new.phase_overhead.table.items():
        if old.phase_overhead.table.get(raw) == row:
            continue
        flow = "{" + ", ".join(f"{level}: {value}" for level, value in row.items()) + "}"
        if raw in old.phase_overhead.table:
            text = re.sub(rf"^([ \t]+{re.escape(raw)}:[ \t]*)\{{[^}}\n]*\}}", lambda m, f=flow: m.group(1) + f, text,
                          count=1, flags=re.MULTILINE)
            continue
        # A group predicted with the fallback gets a new row, placed after the table's last row.
        rows = list(re.finditer(r"^([ \t]+)[\w-]+:[ \t]*\{[^}\n]*\}.*\n", text[text.find("phase_overhead:"):], re.MULTILINE))
        if rows and "phase_overhead:" in text:
            last, offset = rows[0], text.find("phase_overhead:")
            for match in rows[1:]:
                if match.start() != last.end():
                    break  # the table is the first run of consecutive row lines
                last = match
            at = offset + last.end()
            text = text[:at] + f"{last.group(1)}{raw}: {flow}   # added by apply-calibration\n" + text[at:]
    try:
        if CoefficientTable.from_mapping(yaml.safe_load(text)).to_dict() == new.to_dict():
            return text
    except (ValueError, yaml.YAMLError):
        pass
    return (f"# Written by apply-calibration; the commented previous version is kept in {HISTORY_DIR_NAME}/.\n"
            + new.to_yaml())


def _changes_table(patch, old, new, overhead_changes) -> list[str]:
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


def _stored_events(args: argparse.Namespace):
    """Stored events and their deliverables (aligned Series), read once per command."""
    import pandas as pd

    from autopack_pipeline.cli.common import open_engine
    from autopack_pipeline.storage.events import read_events

    engine = open_engine(args)
    events = read_events(engine)
    deliverables = read_deliverables(engine, events["event_id"].dropna()) if not events.empty else {}
    aligned = pd.Series([deliverables.get(int(i)) if pd.notna(i) else None for i in events["event_id"]],
                        index=events.index, dtype=object)
    return events, aligned


def _backtest(args: argparse.Namespace, patch, old, new, stored) -> dict[str, Any] | None:
    from autopack_pipeline.domain.backtest import run_backtest

    events, aligned = stored
    if events.empty:
        return None
    result = run_backtest(events, aligned, old, new, groups=list(patch.multipliers()), tolerance=args.under_multiplier)
    for group in result["groups"]:
        group["multiplier"] = patch.multipliers()[(group["category"], group["complexity"])]
    return result


def _prepare(args: argparse.Namespace):
    from autopack_pipeline.domain.backtest import PatchError
    from autopack_pipeline.domain.coefficients import default_coefficients_path, load_coefficients

    try:
        patch = _load_patch(args)
    except PatchError as exc:
        raise UsageError(str(exc)) from None
    if not patch.changes:
        raise Refused("the patch proposes no change (no group reached the confidence threshold)")
    path = default_coefficients_path()
    old_text = path.read_text(encoding="utf-8") if path.exists() else None
    if old_text is None:
        raise UsageError(f"coefficient file not found: {path} (set AUTOPACK_SEEDS_DIR?)")
    old = load_coefficients(path)
    if patch.coefficient_file_version and patch.coefficient_file_version != old.version and not args.force:
        raise Refused(f"the patch was computed against coefficients {patch.coefficient_file_version}, but {path} is "
                      f"{old.version}; applying it would compound an earlier change. Re-run calibrate, or --force.")
    stored = _stored_events(args)
    overhead_changes = _overhead_changes(args, patch, old, stored)
    now = datetime.now(timezone.utc)
    samples = patch.total_samples if isinstance(patch.total_samples, int) else sum(c.sample_count or 0 for c in patch.changes)
    new = old.with_overhead_multipliers(
        {group: k for group, k in overhead_changes.items() if k is not None}, new_version_name(old.version, now), calibration_date=now.date().isoformat(),
        calibration_samples=int(samples),
        source=f"apply-calibration of {Path(args.patch).name} ({patch.method or 'autopack format'}, generated "
               f"{patch.generated_at or 'unknown'}) on top of {old.version}",
    )
    return patch, path, old_text, old, new, stored, overhead_changes


def _overhead_changes(args: argparse.Namespace, patch, old, stored) -> dict[tuple[str, str], float | None]:
    """What to multiply PHASE_OVERHEAD by. ``--scale prediction`` (default) converts each proposed
    multiplier, which is about whole predictions, into the overhead multiplier that moves the group's
    median prediction by that much; ``--scale overhead`` applies it to the overhead as Autopack's
    report literally says (which moves predictions less)."""
    from autopack_pipeline.domain.backtest import overhead_multipliers_for_prediction_scale

    proposed = patch.multipliers()
    events, aligned = stored
    if args.scale == "overhead" or events.empty:
        return dict(proposed)
    converted = overhead_multipliers_for_prediction_scale(events, aligned, old, proposed)
    # A group with no stored events to convert on keeps the literal multiplier.
    return {group: converted[group] if converted[group] is not None or _has_events(events, group) else m
            for group, m in proposed.items()}


def _has_events(events, group: tuple[str, str]) -> bool:
    from autopack_pipeline.domain.categories import normalise_category

    return bool(((events["category"].map(normalise_category) == group[0]) & (events["complexity"] == group[1])).any())


def cmd_backtest(args: argparse.Namespace) -> int:
    patch, _, _, old, new, stored, overhead_changes = _prepare(args)
    result = _backtest(args, patch, old, new, stored)
    if result is None:
        raise Refused("no stored events to backtest on (check DATABASE_URL)")
    if args.json:
        print_json({"patch": [c.__dict__ for c in patch.changes], "backtest": result,
                    "overhead_multipliers": [{"category": c, "complexity": x, "multiplier": k}
                                             for (c, x), k in overhead_changes.items()]})
    else:
        print("\n".join(_changes_table(patch, old, new, overhead_changes)))
        print(render_backtest(result))
    return EXIT_OK


def _history_path(directory: Path, version: str, text: str) -> Path:
    stem = _UNSAFE_FILE_CHARS.sub("_", version) or "unversioned"
    candidate, n = directory / f"{stem}.yaml", 2
    while candidate.exists() and candidate.read_text(encoding="utf-8") != text:
        candidate, n = directory / f"{stem}-{n}.yaml", n + 1
    return candidate


def _coefficient_file_to_write(in_use: Path) -> tuple[Path, Path | None]:
    """Where a calibration is written, and the packaged seeds directory to copy first (or ``None``).

    The installed package is never edited: when no ``AUTOPACK_SEEDS_DIR`` and no ``./seeds`` exist,
    the packaged defaults are copied to ``./seeds`` and the copy is edited (what ``--yes`` asks for,
    and from then on the seeds of this directory). ``AUTOPACK_SEEDS_DIR`` pointing into the package
    is refused, since the copy would not be the seeds in use.
    """
    import os

    from autopack_pipeline.settings import SEEDS_DIR_VARIABLE, is_packaged_seeds

    seeds = in_use.parent
    if not is_packaged_seeds(seeds):
        return in_use, None
    if os.environ.get(SEEDS_DIR_VARIABLE):
        raise UsageError(f"{SEEDS_DIR_VARIABLE} points into the installed package ({seeds}), which is never edited: "
                         f"copy that directory elsewhere, point {SEEDS_DIR_VARIABLE} at the copy and run again")
    local = Path.cwd() / "seeds"
    return local / in_use.name, seeds


def _copy_seeds(source: Path, target: Path) -> None:
    import shutil

    from autopack_pipeline.output_files import ensure_directory

    ensure_directory(target)
    for seed_file in sorted(source.glob("*.yaml")):
        if not (target / seed_file.name).exists():
            shutil.copyfile(seed_file, target / seed_file.name)  # content only: the copy is the user's, writable


def cmd_apply(args: argparse.Namespace) -> int:
    from autopack_pipeline.reporting import write_atomic_text

    patch, in_use, old_text, old, new, stored, overhead_changes = _prepare(args)
    path, packaged = _coefficient_file_to_write(in_use)
    new_text = updated_yaml_text(old_text, old, new)
    print("\n".join(_changes_table(patch, old, new, overhead_changes)))
    sys.stdout.writelines(difflib.unified_diff(old_text.splitlines(keepends=True), new_text.splitlines(keepends=True),
                                               fromfile=f"{path} ({old.version})", tofile=f"{path} ({new.version})"))
    result = _backtest(args, patch, old, new, stored)
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
        _copy_seeds(packaged, path.parent)
    history = path.parent / HISTORY_DIR_NAME
    history.mkdir(parents=True, exist_ok=True)
    kept = _history_path(history, old.version, old_text)
    write_atomic_text(kept, old_text)
    write_atomic_text(path, new_text)
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
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_backtest)
