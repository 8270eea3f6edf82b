"""Past predictions re-expressed under the coefficients in force, so calibration never compounds.

A calibration multiplier is ``actual / predicted``. If the predictions are the ones recorded when
the events happened, a multiplier applied since is counted again: each round multiplies the
current coefficients by a figure that already contains the last round's change. So, before
calibrating (and in the backtest), every event's prediction is what the *current* coefficient file
would predict for it, chosen per event by the cheapest exact way:

- ``recorded``: the event was predicted by the current version (``coefficients_version``);
- ``scaled``: it was predicted by a version kept in the history that differs from the current one
  only in the calibration section; its prediction is then the recorded one times the ratio of the
  group's ``prediction_multiplier`` (exact up to the half-token rounding of each side);
- ``rerun``: anything else (an unknown version, a NULL from before the column, other coefficient
  changes): the estimator runs again on the stored deliverables, category, complexity and doc
  features (:meth:`TokenEstimator.repredict`), once per distinct input.

The figures a rerun cannot see (scope paths, the workspace's files) are the same for every version,
so they affect the old and the current prediction alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays, IntColumn
from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
from autopack_pipeline.domain.coefficients import CoefficientTable
from autopack_pipeline.domain.estimator import TokenEstimator, select_budget

# The stored doc features the estimator reads back (Autopack's columns of the events table).
FEATURE_COLUMNS = ("api_reference_required", "examples_required", "research_required", "usage_guide_required",
                   "context_quality")
HOW = ("recorded", "scaled", "rerun")


@dataclass(frozen=True)
class StoredPrediction:
    """What an event keeps about its prediction: enough to predict it again."""

    category: str | None
    complexity: str | None
    deliverables: Sequence[str]
    recorded: float | None
    version: str | None = None
    features: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Repredicted:
    """Predictions (and the budgets ``select_budget`` gives them) under one coefficient table."""

    predicted: np.ndarray
    budget: np.ndarray
    how: dict[str, int]  # events per way (recorded / scaled / rerun)
    version: str


@dataclass(frozen=True)
class PredictionInputs:
    """What stored events keep about their prediction, one entry per event id: the deliverables, the
    coefficient version that predicted it (None before the column existed) and the doc features.

    Storage builds it (``storage.prediction_inputs``); events find their entry by ``event_id``.
    """

    event_ids: np.ndarray  # int64
    deliverables: Sequence[Sequence[str] | None]
    versions: Sequence[str | None]
    features: Mapping[str, Sequence[Any]] = field(default_factory=dict)  # the FEATURE_COLUMNS stored

    @classmethod
    def from_rows(cls, event_ids: Sequence[int], deliverables: Sequence[Sequence[str] | None],
                  versions: Sequence[str | None] | None = None,
                  features: Mapping[str, Sequence[Any]] | None = None) -> PredictionInputs:
        return cls(np.asarray(event_ids, dtype=np.int64), list(deliverables),
                   list(versions) if versions is not None else [None] * len(deliverables),
                   {name: list(values) for name, values in (features or {}).items()})

    def __len__(self) -> int:
        return len(self.event_ids)

    def positions(self, ids: IntColumn) -> np.ndarray:
        """Per event, the index of its entry; -1 where the event has no id or nothing is stored."""
        out = np.full(len(ids.values), -1, dtype=np.int64)
        if not len(self.event_ids):
            return out
        order = np.argsort(self.event_ids, kind="stable")  # duplicates: the first entry wins
        ordered = self.event_ids[order]
        wanted = ids.values.astype(np.int64, copy=False)
        at = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
        found = (ordered[at] == wanted) & ids.notna()
        out[found] = order[at[found]]
        return out

    def deliverables_at(self, position: int) -> list[str]:
        """The deliverables of entry ``position`` (-1: none stored)."""
        items = self.deliverables[position] if position >= 0 else None
        return list(items) if isinstance(items, (list, tuple)) else []

    def version_at(self, position: int) -> str | None:
        version = self.versions[position] if position >= 0 else None
        return version if isinstance(version, str) else None

    def features_at(self, position: int) -> dict[str, Any]:
        """The stored doc features of entry ``position``, missing ones as None."""
        return {name: (_plain(values[position]) if position >= 0 else None) for name, values in self.features.items()}


class Repredictor:
    """Re-expresses stored predictions under ``table``; ``history`` maps earlier versions to their tables."""

    def __init__(self, table: CoefficientTable, history: Mapping[str, CoefficientTable] | None = None,
                 workspace: Any = None) -> None:
        self.table = table
        self.history = dict(history or {})
        self.estimator = TokenEstimator(table, workspace=workspace)
        self._cache: dict[tuple, tuple[int, int]] = {}
        self._convertible: dict[str, bool] = {}

    def _scalable(self, version: str | None) -> CoefficientTable | None:
        """The table of ``version`` when its predictions convert to ours by multipliers alone."""
        if version is None or version not in self.history:
            return None
        if version not in self._convertible:
            self._convertible[version] = self.table.differs_only_in_calibration(self.history[version])
        return self.history[version] if self._convertible[version] else None

    def rerun(self, event: StoredPrediction) -> tuple[int, int]:
        """(prediction, budget) by running the estimator again; identical inputs run once."""
        features = tuple(sorted((k, v) for k, v in (event.features or {}).items() if v is not None))
        key = (tuple(event.deliverables), event.category, event.complexity, features)
        if key not in self._cache:
            estimate = self.estimator.repredict(list(event.deliverables), event.category or "unknown",
                                                event.complexity or "medium", dict(features))
            self._cache[key] = (estimate.estimated_tokens, select_budget(estimate, estimate.complexity, self.table))
        return self._cache[key]

    def one(self, event: StoredPrediction) -> tuple[float, str]:
        """(prediction in force, how it was obtained) for one event."""
        recorded = event.recorded
        if recorded is not None and not (isinstance(recorded, float) and math.isnan(recorded)):
            if event.version is not None and event.version == self.table.version:
                return float(recorded), "recorded"
            old = self._scalable(event.version)
            if old is not None:
                key = (normalise_category(event.category), normalise_complexity(event.complexity))
                ratio = self.table.prediction_multiplier(*key) / old.prediction_multiplier(*key)
                return float(math.floor(recorded * ratio + 0.5)) if ratio != 1.0 else float(recorded), "scaled"
        return float(self.rerun(event)[0]), "rerun"

    def rerun_all(self, events: Sequence[StoredPrediction]) -> Repredicted:
        """Every event re-run through the estimator and ``select_budget`` (the backtest's both sides)."""
        predicted, budget = np.zeros(len(events)), np.zeros(len(events))
        for i, event in enumerate(events):
            predicted[i], budget[i] = self.rerun(event)
        return Repredicted(predicted, budget, {"rerun": len(events)}, self.table.version)


def _plain(value: Any) -> Any:
    """A stored value as a plain Python value; missing (None/NaN/NA) as None."""
    if value is None:
        return None
    try:
        if value != value:  # NaN
            return None
    except (TypeError, ValueError):
        return None
    return value.item() if hasattr(value, "item") else value


def arrays_in_force(arrays: EventArrays, inputs: PredictionInputs, table: CoefficientTable,
                    history: Mapping[str, CoefficientTable] | None = None,
                    workspace: Any = None) -> tuple[EventArrays, dict[str, int]]:
    """``arrays`` with ``predicted`` re-expressed under ``table`` (see the module docstring), and the
    count of events per way (``kept`` for events without stored inputs, whose prediction stays).

    Whole columns at a time: the ways are chosen with masks, ``scaled`` multiplies by a ratio per
    (version, group), and the estimator runs once per distinct input of the ``rerun`` rows. A
    Python object per event cost ~50 us each (9/10 of ``calibrate`` at a million events).
    """
    n = len(arrays)
    position = inputs.positions(arrays.event_id)
    has_inputs = position >= 0
    recorded = arrays.predicted.floats()
    has_recorded = ~np.isnan(recorded)
    # Position -1 (no entry) picks the None appended at the end.
    versions = np.array([inputs.version_at(i) for i in range(len(inputs))] + [None], dtype=object)[position]

    values = arrays.predicted.values.astype(np.int64).copy()
    way = np.full(n, "kept", dtype=object)
    way[has_inputs] = "rerun"
    same = has_inputs & has_recorded & (versions == table.version)
    way[same] = "recorded"

    repredictor = Repredictor(table, history, workspace)
    cat_labels, cx_labels = list(arrays.category.labels), list(arrays.complexity.labels)
    pair = arrays.category.codes.astype(np.int64) * (len(cx_labels) + 1) + (arrays.complexity.codes + 1)
    for version in {v for v in versions[has_inputs & has_recorded & ~same] if v is not None}:
        old = repredictor._scalable(version)
        if old is None:
            continue
        rows = has_inputs & has_recorded & ~same & (versions == version)
        ratio = np.ones(n)
        for code in np.unique(pair[rows]):
            cat, cx = divmod(int(code), len(cx_labels) + 1)
            key = (normalise_category(cat_labels[cat] if cat >= 0 else None),
                   normalise_complexity(cx_labels[cx - 1] if cx > 0 else None))
            ratio[rows & (pair == code)] = table.prediction_multiplier(*key) / old.prediction_multiplier(*key)
        scaled = np.where(ratio != 1.0, np.floor(recorded * ratio + 0.5), recorded)
        values[rows] = scaled[rows].astype(np.int64)
        way[rows] = "scaled"

    rerun_rows = np.flatnonzero(way == "rerun")
    if len(rerun_rows):
        cats = np.array(cat_labels + [None], dtype=object)[arrays.category.codes[rerun_rows]]
        cxs = np.array(cx_labels + [None], dtype=object)[arrays.complexity.codes[rerun_rows]]
        for row, cat, cx in zip(rerun_rows, cats, cxs):
            event = StoredPrediction(category=cat, complexity=cx, deliverables=inputs.deliverables_at(position[row]),
                                     recorded=None, features=inputs.features_at(position[row]))
            values[row] = int(repredictor.rerun(event)[0])  # cached per distinct input
    valid = None if arrays.predicted.valid is None else arrays.predicted.valid | (way != "kept")
    counts = {name: int((way == name).sum()) for name in (*HOW, "kept")}
    return replace(arrays, predicted=IntColumn(values, valid)), counts
