"""Calibrate -> patch -> backtest -> apply, as functions a loop (or the CLI) calls.

- :func:`read_stored` reads the events and what each keeps about its prediction, once;
- :func:`calibrate_in_force` runs ``calibrating.calibrate`` on predictions re-expressed under the
  coefficient file in force (no compounding) and returns its outcome, whose JSON is the patch;
- :func:`plan_application` turns a patch document into the new coefficient version, its YAML text
  and the backtest of old versus new on the stored events, writing nothing;
- :func:`write_application` writes it, keeping the previous file under the history directory.

A patch with our ``calibration`` block applies through the coefficient file's ``calibration``
section (a prediction multiplier, a budget margin and a budget floor per group); Autopack's format
(``proposed_changes`` only) applies through PHASE_OVERHEAD as before. Nothing here asks a person:
the CLI shows the plan and writes only with ``--yes``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.backtest import (
    CalibrationPatch,
    PatchError,
    read_patch,
    run_backtest,
)
from autopack_pipeline.domain.coefficients import (
    HISTORY_DIR_NAME,
    CoefficientTable,
    calibrated_version_name,
    coefficients_path_in,
    load_coefficient_history,
    load_coefficients,
)
from autopack_pipeline.domain.reprediction import PredictionInputs
from autopack_pipeline.domain.targets import UNDER_TOLERANCE
from autopack_pipeline.settings import seeds_directory
from autopack_pipeline.storage.frames import as_event_arrays

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.engine import Engine

    from autopack_pipeline.storage.handle import Database


class ApplicationRefused(Exception):
    """The patch cannot be applied as asked (nothing to change, another base version)."""


@dataclass(frozen=True)
class StoredEvents:
    """The events (a frame, or the domain's arrays) and, found by ``event_id``, what each event keeps about
    its prediction."""

    events: pd.DataFrame | EventArrays
    inputs: PredictionInputs  # deliverables, coefficients_version, doc features

    def arrays(self) -> EventArrays:
        """The events as the domain's arrays."""
        return as_event_arrays(self.events)

    @property
    def empty(self) -> bool:
        return len(self.events) == 0

    def prediction_inputs(self) -> PredictionInputs:
        """The stored inputs as the domain reads them (found by ``event_id``)."""
        return self.inputs


def read_every_stored(database: Database) -> StoredEvents:
    """Every stored event as the domain's arrays, read through the columnar copy (refreshed first) as
    ``calibrate`` reads them, and their prediction inputs (mapped from the copy's image once it keeps
    them). The events frame of :func:`read_stored` came row by row through SQLAlchemy and pandas: 80% of an
    ``apply-calibration --dry-run`` at a million events (20 s)."""
    from autopack_pipeline.services.event_reading import read_event_arrays
    from autopack_pipeline.storage.prediction_inputs import read_prediction_inputs

    arrays, _unreadable = read_event_arrays(database, allow_empty=True)
    return StoredEvents(arrays, read_prediction_inputs(database, id_range=_id_range(arrays), refreshed=True))


def read_stored(engine: Engine, run_ids: list[str] | None = None) -> StoredEvents:
    from autopack_pipeline.storage.events import read_events
    from autopack_pipeline.storage.prediction_inputs import read_prediction_inputs

    events = read_events(engine, run_ids)
    ids = events["event_id"].dropna().astype(int).tolist() if not events.empty else []
    return StoredEvents(events, read_prediction_inputs(engine, ids))


def calibrate_in_force(telemetry_db: Database, settings: Any, events: Any = None, *, store_refreshed: bool = False,
                       **options: Any):
    """``calibrating.calibrate`` with every prediction re-expressed under the coefficients in force
    (``telemetry_db``: an engine or a handle, ``storage.handle``).

    ``events`` (a frame or EventArrays) defaults to all stored events; ``options`` are
    ``calibrating.calibrate``'s keyword arguments. ``window_versions`` defaults to the setting
    (``AUTOPACK_CALIBRATION_WINDOW_VERSIONS``, 2): what calibration learns from. ``store_refreshed``:
    ``events`` were loaded from the columnar copy just refreshed by this process
    (``read_prediction_inputs``' ``refreshed``).
    """
    from autopack_pipeline.services.calibrating import calibrate
    from autopack_pipeline.storage.prediction_inputs import read_prediction_inputs

    refreshed = store_refreshed and events is not None  # events read from the database here are not the copy's
    if events is None:
        from autopack_pipeline.storage.events import read_events  # pandas and the ORM, for this case only
        from autopack_pipeline.storage.handle import as_handle

        events = read_events(as_handle(telemetry_db).engine)
    path = settings.seeds_dir / "estimator_coefficients.yaml"
    if options.get("window_versions") is None:
        options["window_versions"] = settings.calibration_window_versions
    id_range = _id_range(events)
    return calibrate(
        events, settings,
        # Read by calibrate when it needs them: a value passed here would be held by this call's keyword
        # arguments until calibrate returns, past the point where calibrate lets them go.
        prediction_inputs=lambda: read_prediction_inputs(telemetry_db, id_range=id_range, refreshed=refreshed),
        coefficient_history=load_coefficient_history(path), **options,
    )


def _id_range(events: Any) -> tuple[int, int] | None:
    """The lowest and highest event id of ``events`` when they are EventArrays with ids, else None
    (every stored input is read). The analysis window is a few weeks of a long history: its events'
    inputs sit in the last parts of the columnar copy, and only those need reading."""
    if not isinstance(events, EventArrays):
        return None
    known = events.event_id.values[events.event_id.notna()]
    return (int(known.min()), int(known.max())) if len(known) else None


@dataclass(frozen=True)
class CalibrationApplication:
    """A patch turned into a new coefficient version, with its backtest; not yet written."""

    patch: CalibrationPatch
    path: Path
    old_text: str
    old: CoefficientTable
    new: CoefficientTable
    new_text: str
    backtest: dict[str, Any] | None
    overhead_changes: dict[tuple[str, str], float | None]

    @property
    def through_calibration_section(self) -> bool:
        return bool(self.patch.settings)


def _line(key: str, value: Any) -> str:
    if key == "calibration_date":
        return f"{key}: {value}"  # an ISO date reads back as the same date, unquoted as in the seed file
    return yaml.safe_dump({key: value}, width=10**6, default_flow_style=False).strip()


def updated_yaml_text(old_text: str, old, new) -> str:
    """The new file: the old text with only the changed values edited, so comments survive and the
    diff shows exactly what moved. If the edit does not reproduce ``new`` exactly (an unusual layout,
    a new row), the whole table is written out instead, after a note."""
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
    if new.calibration != old.calibration:
        text = _with_calibration_block(text, new)
    try:
        if CoefficientTable.from_mapping(yaml.safe_load(text)).to_dict() == new.to_dict():
            return text
    except (ValueError, yaml.YAMLError):
        pass
    return (f"# Written by apply-calibration; the commented previous version is kept in {HISTORY_DIR_NAME}/.\n"
            + new.to_yaml())


def _with_calibration_block(text: str, new: CoefficientTable) -> str:
    """``text`` with its top-level ``calibration:`` block (if any) replaced by ``new``'s, at the end."""
    text = re.sub(r"^(?:#[^\n]*\n)*calibration:.*\n(?:(?:[ \t]+.*|[ \t]*)\n)*", "", text, count=1, flags=re.MULTILINE)
    if not new.calibration:
        return text
    block = yaml.safe_dump({"calibration": new.to_dict()["calibration"]}, sort_keys=False,
                           default_flow_style=None, width=120)
    note = ("# Calibrated groups (written by apply-calibration), by the estimate's category and complexity:\n"
            "# prediction_multiplier scales the final estimate of every model; budget_margin and\n"
            "# budget_floor replace select_budget's margin rules and floor for the group.\n")
    return text.rstrip("\n") + "\n\n" + note + block


def plan_application(
    patch_data: Any,
    stored: StoredEvents,
    *,
    coefficients_path: Path | None = None,
    method: str | None = None,
    force: bool = False,
    scale: str = "prediction",
    tolerance: float = UNDER_TOLERANCE,
    patch_name: str = "patch",
    now: datetime | None = None,
) -> CalibrationApplication:
    """The new version a patch gives, its text and the backtest; raises :class:`PatchError` for a
    malformed patch and :class:`ApplicationRefused` when it cannot apply."""
    patch = read_patch(patch_data, method=method)
    if not patch.changes and not patch.settings:
        raise ApplicationRefused("the patch proposes no change (no group reached the confidence threshold)")
    path = Path(coefficients_path) if coefficients_path is not None else coefficients_path_in(seeds_directory())
    if not path.exists():
        raise FileNotFoundError(f"coefficient file not found: {path} (set AUTOPACK_SEEDS_DIR?)")
    old_text = path.read_text(encoding="utf-8")
    old = load_coefficients(path)
    if patch.coefficient_file_version and patch.coefficient_file_version != old.version and not force:
        raise ApplicationRefused(
            f"the patch was computed against coefficients {patch.coefficient_file_version}, but {path} is "
            f"{old.version}; applying it would compound an earlier change. Re-run calibrate, or --force.")
    moment = now or datetime.now(timezone.utc)
    samples = patch.total_samples if isinstance(patch.total_samples, int) else sum(
        c.sample_count or 0 for c in patch.changes)
    metadata = dict(calibration_date=moment.date().isoformat(), calibration_samples=int(samples),
                    source=f"apply-calibration of {patch_name} ({patch.method or 'autopack format'}, generated "
                           f"{patch.generated_at or 'unknown'}) on top of {old.version}")
    version = calibrated_version_name(old.version, moment)
    overhead_changes: dict[tuple[str, str], float | None] = {}
    if patch.settings:
        new = old.with_calibration(patch.settings, version, **metadata)
    else:
        overhead_changes = _overhead_changes(patch, old, stored, scale)
        new = old.with_overhead_multipliers({g: k for g, k in overhead_changes.items() if k is not None}, version,
                                            **metadata)
    return CalibrationApplication(patch, path, old_text, old, new, updated_yaml_text(old_text, old, new),
                                  backtest_patch(patch, old, new, stored, tolerance), overhead_changes)


def backtest_patch(patch: CalibrationPatch, old: CoefficientTable, new: CoefficientTable, stored: StoredEvents,
                   tolerance: float = UNDER_TOLERANCE) -> dict[str, Any] | None:
    """Old versus new re-run on the stored events, per group the patch touches; None without events."""
    if stored.empty:
        return None
    groups = list(dict.fromkeys([*patch.settings, *patch.multipliers()]))
    result = run_backtest(stored.arrays(), stored.prediction_inputs(), old, new, groups=groups, tolerance=tolerance)
    for group in result["groups"]:
        key = (group["category"], group["complexity"])
        if key in patch.settings:
            group["multiplier"] = patch.settings[key].prediction_multiplier / old.prediction_multiplier(*key)
        elif key in patch.multipliers():
            group["multiplier"] = patch.multipliers()[key]
    return result


def _overhead_changes(patch: CalibrationPatch, old: CoefficientTable, stored: StoredEvents,
                      scale: str) -> dict[tuple[str, str], float | None]:
    """What to multiply PHASE_OVERHEAD by (Autopack-format patches). ``prediction`` converts each
    proposed multiplier into the overhead multiplier that moves the group's median prediction by
    that much; ``overhead`` applies it literally, as Autopack's report says."""
    from autopack_pipeline.domain.backtest import overhead_multipliers_for_prediction_scale
    from autopack_pipeline.domain.categories import normalise_category

    proposed = patch.multipliers()
    if scale == "overhead" or stored.empty:
        return dict(proposed)
    arrays = stored.arrays()
    converted = overhead_multipliers_for_prediction_scale(arrays, stored.prediction_inputs(), old, proposed)
    categories, category_names = arrays.category.canonical(normalise_category)
    complexities = list(arrays.complexity.labels)

    def has_events(group: tuple[str, str]) -> bool:
        if group[0] not in category_names or group[1] not in complexities:
            return False
        return bool(((categories == category_names.index(group[0]))
                     & (arrays.complexity.codes == complexities.index(group[1]))).any())

    # A group with no stored events to convert on keeps the literal multiplier.
    return {group: converted[group] if converted[group] is not None or has_events(group) else m
            for group, m in proposed.items()}


def write_application(application: CalibrationApplication) -> Path:
    """Write the new file; the previous one is kept, byte for byte, in the history directory."""
    from autopack_pipeline.services.reporting import write_atomic_text

    history = application.path.parent / HISTORY_DIR_NAME
    history.mkdir(parents=True, exist_ok=True)
    kept = _history_path(history, application.old.version, application.old_text)
    write_atomic_text(kept, application.old_text)
    write_atomic_text(application.path, application.new_text)
    return kept


def _history_path(directory: Path, version: str, text: str) -> Path:
    stem = re.sub(r"[^A-Za-z0-9._+-]", "_", version) or "unversioned"
    candidate, n = directory / f"{stem}.yaml", 2
    while candidate.exists() and candidate.read_text(encoding="utf-8") != text:
        candidate, n = directory / f"{stem}-{n}.yaml", n + 1
    return candidate


def calibrate_and_apply(engine: Engine, settings: Any, *, write: bool = False, now: datetime | None = None,
                        **options: Any) -> dict[str, Any]:
    """One round of the loop: calibrate in force -> plan (patch + backtest) -> apply when ``write``.

    Returns ``{"outcome", "application", "kept"}``; ``application`` is None when the gate refused or
    the patch changes nothing.
    """
    options.setdefault("write_reports", False)
    outcome = calibrate_in_force(engine, settings, **options)
    if outcome.result is None:
        return {"outcome": outcome, "application": None, "kept": None}
    payload = outcome.patch_payload()  # exactly what the JSON file would hold
    try:
        application = plan_application(payload, read_stored(engine),
                                       coefficients_path=settings.seeds_dir / "estimator_coefficients.yaml",
                                       now=now)
    except ApplicationRefused:
        return {"outcome": outcome, "application": None, "kept": None}
    kept = write_application(application) if write else None
    return {"outcome": outcome, "application": application, "kept": kept}


def read_patch_file(path: Path) -> Any:
    """The JSON document of a patch file; :class:`PatchError` when it is missing or not JSON."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PatchError(f"patch file not found: {path}") from None
    except IsADirectoryError:
        raise PatchError(f"{path} is a directory, not a patch file") from None
    except ValueError as exc:
        raise PatchError(f"{path} is not JSON: {exc}") from None


def plan_patch_file(database: Database, path: Path, **options: Any) -> CalibrationApplication:
    """:func:`plan_application` of a patch file on every stored event: what ``apply-calibration`` and
    the Dagster ``apply_calibration_job`` both run before anything is written."""
    return plan_application(read_patch_file(path), read_every_stored(database), patch_name=Path(path).name, **options)
