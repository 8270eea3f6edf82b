"""Calibration patches and their backtest: what a coefficient change would have done to past events.

A patch is a calibration JSON: ours, or Autopack's ``proposed_changes`` format (the same keys). Its
accepted recommendations are the ``proposed_changes`` entries (high-confidence groups only), each a
multiplier on ``PHASE_OVERHEAD[(category, complexity)]``.

The backtest re-runs the estimator and ``select_budget`` on each stored event's deliverables, once
with the current coefficients and once with the patched ones, and compares, per coefficient set:

- underestimation % = events with ``actual > tolerance * predicted``. A truncated event's recorded
  actual is only a floor, so for those rows this counts certain underestimates only;
- truncation % = events whose new budget is below their actual output, plus truncated events whose
  new budget is no larger than the ceiling they already hit. Truncated events that would get more
  budget than they hit are *unresolved*: nobody knows whether that would have been enough;
- budget waste (budget / actual) P50 and P90 over events that were not truncated.

Re-running both sides, rather than comparing the new estimate with the recorded one, keeps the
comparison fair: inputs the events do not store (scope paths, the workspace's files) affect both
sides alike. ``rerun_match_pct`` says how often the re-run reproduced the recorded prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays, LabelColumn, p90_of, truncated_flags
from autopack_pipeline.domain.analysis.arrays import budget_sent
from autopack_pipeline.domain.categories import canonical_complexity, normalise_category, normalise_complexity
from autopack_pipeline.domain.coefficients import CoefficientTable, GroupSetting
from autopack_pipeline.domain.estimator import TokenEstimator
from autopack_pipeline.domain.reprediction import PredictionInputs, Repredictor, rerun_codes
from autopack_pipeline.domain.targets import UNDER_TOLERANCE


class PatchError(ValueError):
    """The patch file is not a calibration JSON we can apply; the message says what is wrong."""


@dataclass(frozen=True)
class PatchChange:
    category: str
    complexity: str
    multiplier: float
    sample_count: int | None = None
    confidence: float | None = None


@dataclass(frozen=True)
class CalibrationPatch:
    changes: list[PatchChange]
    method: str | None
    generated_at: str | None
    coefficient_file_version: str | None
    total_samples: int | None
    # Our reports' calibration section: the settings per group that apply-calibration writes into the
    # coefficient file's ``calibration`` section. Empty for Autopack's format (PHASE_OVERHEAD path).
    settings: dict[tuple[str, str], GroupSetting] = field(default_factory=dict)

    def multipliers(self) -> dict[tuple[str, str], float]:
        return {(c.category, c.complexity): c.multiplier for c in self.changes}


def _change(entry: Any, index: int) -> PatchChange:
    if not isinstance(entry, dict):
        raise PatchError(f"proposed_changes[{index}] is not an object")
    try:
        category, complexity = str(entry["category"]), str(entry["complexity"])
        multiplier = float(entry["proposed_multiplier"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PatchError(f"proposed_changes[{index}] needs category, complexity and a numeric "
                         f"proposed_multiplier ({exc})") from None
    if not math.isfinite(multiplier) or multiplier <= 0:
        raise PatchError(f"proposed_changes[{index}]: multiplier must be a positive number, got {multiplier}")
    level = canonical_complexity(complexity)
    if level is None:
        raise PatchError(f"proposed_changes[{index}]: unknown complexity {complexity!r}")
    return PatchChange(normalise_category(category), level, multiplier,
                       entry.get("sample_count"), entry.get("confidence"))


def _settings(section: Any) -> dict[tuple[str, str], GroupSetting]:
    """The per-group settings of a report's ``calibration`` block (see ``domain.budget_calibration``)."""
    if section is None:
        return {}
    if not isinstance(section, dict) or not isinstance(section.get("groups"), list):
        raise PatchError("the patch's calibration block needs a groups list")
    settings: dict[tuple[str, str], GroupSetting] = {}
    for index, entry in enumerate(section["groups"]):
        try:
            level = canonical_complexity(str(entry["complexity"]))
            if level is None:
                raise ValueError(f"unknown complexity {entry['complexity']!r}")
            key = (normalise_category(str(entry["category"])), level)
            settings[key] = GroupSetting(
                prediction_multiplier=float(entry["prediction_multiplier"]),
                budget_margin=None if entry.get("budget_margin") is None else float(entry["budget_margin"]),
                budget_floor=None if entry.get("budget_floor") is None else int(entry["budget_floor"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PatchError(f"calibration.groups[{index}]: needs category, complexity and a positive "
                             f"prediction_multiplier, budget_margin and budget_floor ({exc})") from None
    return settings


def read_patch(data: Any, method: str | None = None) -> CalibrationPatch:
    """The accepted recommendations of a calibration JSON document.

    ``method`` picks another method's proposals from our ``methods`` block; by default the top-level
    ``proposed_changes`` (the chosen method's, or Autopack's) are used.
    """
    if not isinstance(data, dict):
        raise PatchError("a calibration patch is a JSON object with proposed_changes")
    source = data
    if method is not None:
        methods = data.get("methods") or {}
        if method not in methods:
            raise PatchError(f"the patch has no figures for method {method!r} (has: {', '.join(methods) or 'none'})")
        source = methods[method]
    entries = source.get("proposed_changes")
    if not isinstance(entries, list):
        raise PatchError("the patch has no proposed_changes list")
    changes = [_change(entry, i) for i, entry in enumerate(entries)]
    keys = [(c.category, c.complexity) for c in changes]
    if len(set(keys)) != len(keys):
        raise PatchError("the patch proposes two changes for the same (category, complexity)")
    metadata = data.get("metadata") or {}
    provenance = data.get("provenance") or {}
    # The top-level calibration section belongs to the chosen method's proposals; another method's
    # section is in its own block. A patch of ours without one (written before each method had its
    # own) is refused rather than applied through PHASE_OVERHEAD behind the person's back.
    section = data.get("calibration")
    if method is not None and method != data.get("method"):
        section = source.get("calibration")
        if section is None and data.get("calibration") is not None:
            raise PatchError(f"the patch has no calibration section for method {method!r}; re-run "
                             f"`autopack-telemetry calibrate --method {method}` and apply its patch")
    return CalibrationPatch(
        settings=_settings(section),
        changes=changes,
        method=method or data.get("method"),
        generated_at=metadata.get("generated_at"),
        coefficient_file_version=provenance.get("coefficient_file_version"),
        total_samples=metadata.get("total_samples"),
    )


def _rerun(arrays: EventArrays, rows: np.ndarray, inputs: PredictionInputs, position: np.ndarray,
           table: CoefficientTable, workspace: Any) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, budget) of ``rows`` under ``table``, by ``TokenEstimator.repredict`` on each row's
    canonical category and complexity (the recorded category names the doc model that priced a doc
    phase) and stored inputs; each distinct combination is estimated once (``rerun_codes``)."""
    category = LabelColumn(*_canonical_codes(arrays.category, normalise_category))
    complexity = LabelColumn(*_canonical_codes(arrays.complexity, normalise_complexity))
    return rerun_codes(Repredictor(table, workspace=workspace), inputs, position[rows],
                       LabelColumn(category.codes[rows], category.labels),
                       LabelColumn(complexity.codes[rows], complexity.labels))


def _canonical_codes(column: LabelColumn, normaliser: Any) -> tuple[np.ndarray, tuple[str, ...]]:
    codes, names = column.canonical(normaliser)  # a missing label is normaliser(None): "unknown" for categories
    return codes, tuple(names)


def _figures(predicted: np.ndarray, budget: np.ndarray, actual: np.ndarray, truncated: np.ndarray,
             ceiling: np.ndarray, tolerance: float) -> dict[str, Any]:
    n = len(actual)
    over = actual > tolerance * predicted
    cut = (~truncated & (actual > budget)) | (truncated & (budget <= ceiling))
    unresolved = truncated & (budget > ceiling)
    fits = ~truncated & (actual > 0)
    waste = budget[fits] / actual[fits]
    pct = (lambda k: 100.0 * int(k) / n if n else 0.0)
    return {
        "underestimation_pct": pct(over.sum()),
        "truncation_pct": pct(cut.sum()),
        "truncation_unresolved": int(unresolved.sum()),
        "budget_waste_p50": float(np.median(waste)) if waste.size else None,
        "budget_waste_p90": p90_of(waste),
        "mean_budget": float(budget.mean()) if n else None,
        "mean_predicted": float(predicted.mean()) if n else None,
    }


def _canonical(column: LabelColumn, normaliser: Any, missing: str | None) -> np.ndarray:
    """Each row's label through ``normaliser``; a missing label reads as ``missing``."""
    names = [normaliser(label) for label in column.labels] + [normaliser(missing)]
    return np.array(names, dtype=object)[column.codes]  # code -1 picks the last entry


def _groups_of(arrays: EventArrays) -> tuple[np.ndarray, np.ndarray]:
    """(canonical category, canonical complexity) per row; a missing category is ``unknown``."""
    return (_canonical(arrays.category, normalise_category, "unknown"),
            _canonical(arrays.complexity, normalise_complexity, None))


def run_backtest(
    arrays: EventArrays,
    inputs: PredictionInputs,
    old: CoefficientTable,
    new: CoefficientTable,
    *,
    groups: list[tuple[str, str]] = (),
    tolerance: float = UNDER_TOLERANCE,
    workspace: Any = None,
) -> dict[str, Any]:
    """Old versus new coefficients on the events of ``arrays`` whose deliverables ``inputs`` keeps
    (found by ``event_id``; empty or missing means none), with the stored doc features the estimator
    reads back.

    Returns counts (used, skipped by reason), ``rerun_match_pct``, figures ``old`` and ``new`` over all
    usable events, and the same per group in ``groups`` (those the patch changes).
    """
    position = inputs.positions(arrays.event_id)
    has_items = inputs.has_deliverables(position)
    has_tokens = arrays.actual.notna() & arrays.predicted.notna()
    rows = np.flatnonzero(has_items & has_tokens)
    categories, complexities = (labels[rows] for labels in _groups_of(arrays))
    actual = arrays.actual.floats_at(rows)
    truncated = truncated_flags(arrays)[rows]
    ceiling = np.fmax(np.nan_to_num(budget_sent(arrays, rows), nan=0.0), actual)
    old_pred, old_budget = _rerun(arrays, rows, inputs, position, old, workspace)
    new_pred, new_budget = _rerun(arrays, rows, inputs, position, new, workspace)
    recorded = arrays.predicted.floats_at(rows)

    def both(mask: np.ndarray) -> dict[str, Any]:
        args = (actual[mask], truncated[mask], ceiling[mask], tolerance)
        # How much the predictions really moved: a PHASE_OVERHEAD multiplier moves only the overhead
        # part of an estimate, and not at all for the doc models, which do not read PHASE_OVERHEAD.
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = new_pred[mask] / old_pred[mask]
        scale = scale[np.isfinite(scale)]
        return {"events": int(mask.sum()), "old": _figures(old_pred[mask], old_budget[mask], *args),
                "new": _figures(new_pred[mask], new_budget[mask], *args),
                "prediction_scale_median": float(np.median(scale)) if scale.size else None}

    everything = np.ones(len(rows), dtype=bool)
    per_group = []
    for category, complexity in groups:
        mask = (categories == category) & (complexities == complexity)
        per_group.append({"category": category, "complexity": complexity, **both(np.asarray(mask, dtype=bool))})
    return {
        "tolerance": tolerance,
        "old_version": old.version,
        "new_version": new.version,
        "skipped": {"no_deliverables": int((~has_items).sum()), "missing_tokens": int((has_items & ~has_tokens).sum())},
        "rerun_match_pct": 100.0 * float((old_pred == recorded).mean()) if len(rows) else None,
        **both(everything),
        "groups": per_group,
    }


# Smallest overhead multiplier we will write: below it a row would lose most of its overhead, which no
# calibration over a handful of groups should do in one step.
MIN_OVERHEAD_MULTIPLIER = 0.25


def overhead_multipliers_for_prediction_scale(
    arrays: EventArrays,
    inputs: PredictionInputs,
    table: CoefficientTable,
    changes: dict[tuple[str, str], float],
    *,
    workspace: Any = None,
) -> dict[tuple[str, str], float | None]:
    """The PHASE_OVERHEAD multiplier that moves each group's median prediction by its proposed factor.

    A calibration multiplier is a statement about whole predictions (actual / predicted), but the
    estimator multiplies only the overhead: ``int((overhead + marginal) * margin)``. Scaling the
    overhead by ``k`` moves a prediction by ``(k*o + r) / (o + r)``; solving that at the group's
    median unscaled total ``S = o + r`` gives ``k = 1 + (m - 1) * S / o``. A group whose events are
    all priced by a doc model (which reads no PHASE_OVERHEAD) gets ``None``: no overhead change can
    move it. ``k`` is kept at or above :data:`MIN_OVERHEAD_MULTIPLIER`.
    """
    # Each distinct deliverables list of a group is estimated once and counted as often as its events hold it
    # (one estimate per event was 26 s at a million events): the same totals, so the same median.
    position = inputs.positions(arrays.event_id)
    stored = (np.where(position >= 0, np.take(inputs.deliverables.codes, position, mode="wrap"), -1)
              if len(inputs) else np.full(len(position), -1))
    categories, complexities = _groups_of(arrays)
    estimator = TokenEstimator(table, workspace=workspace)
    out: dict[tuple[str, str], float | None] = {}
    for (category, complexity), multiplier in changes.items():
        overhead = table.overhead(category, complexity)
        codes, counts = np.unique(stored[(categories == category) & (complexities == complexity) & (stored >= 0)],
                                  return_counts=True)
        totals, weights = [], []
        for code, count in zip(codes.tolist(), counts.tolist()):
            deliverable_list = list(inputs.deliverables.values[code])
            if not deliverable_list:
                continue
            estimate = estimator.estimate(deliverable_list, category, complexity)
            if estimate.category == category:  # priced by the overhead model, not a doc model
                totals.append(estimate.estimated_tokens / table.safety_margin)
                weights.append(count)
        if not totals:
            out[(category, complexity)] = None
            continue
        k = 1.0 + (multiplier - 1.0) * float(np.median(np.repeat(totals, weights))) / overhead
        out[(category, complexity)] = round(max(MIN_OVERHEAD_MULTIPLIER, k), 4)
    return out
