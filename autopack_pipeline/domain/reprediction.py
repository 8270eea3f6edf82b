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
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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

    def predictions(self, events: Sequence[StoredPrediction]) -> tuple[np.ndarray, dict[str, int]]:
        """Predictions in force for ``events``, and how many came each way."""
        out = np.zeros(len(events))
        how: Counter[str] = Counter()
        for i, event in enumerate(events):
            out[i], way = self.one(event)
            how[way] += 1
        return out, {way: int(how[way]) for way in HOW}

    def rerun_all(self, events: Sequence[StoredPrediction]) -> Repredicted:
        """Every event re-run through the estimator and ``select_budget`` (the backtest's both sides)."""
        predicted, budget = np.zeros(len(events)), np.zeros(len(events))
        for i, event in enumerate(events):
            predicted[i], budget[i] = self.rerun(event)
        return Repredicted(predicted, budget, {"rerun": len(events)}, self.table.version)


def stored_predictions(arrays: Any, inputs: Any) -> list[StoredPrediction | None]:
    """One :class:`StoredPrediction` per row of ``arrays`` (EventArrays), from ``inputs`` (a frame
    indexed by ``event_id`` with ``deliverables``, ``coefficients_version`` and the feature columns);
    None where the event has no id or no stored inputs."""
    cats = _labels(arrays.category)
    cxs = _labels(arrays.complexity)
    ids = arrays.event_id
    predicted = arrays.predicted.floats()
    known = set(inputs.index)
    features = [c for c in FEATURE_COLUMNS if c in inputs.columns]
    out: list[StoredPrediction | None] = []
    for i in range(len(arrays)):
        event_id = int(ids.values[i]) if ids.valid is None or ids.valid[i] else None
        if event_id is None or event_id not in known:
            out.append(None)
            continue
        row = inputs.loc[event_id]
        version = row.get("coefficients_version")
        out.append(StoredPrediction(
            category=cats[i], complexity=cxs[i], deliverables=list(row["deliverables"] or []),
            recorded=None if math.isnan(predicted[i]) else float(predicted[i]),
            version=version if isinstance(version, str) else None,
            features={c: _plain(row[c]) for c in features},
        ))
    return out


def _labels(column: Any) -> list[str | None]:
    labels = list(column.labels)
    return [labels[c] if c >= 0 else None for c in column.codes.tolist()]


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


def arrays_in_force(arrays: Any, inputs: Any, table: CoefficientTable,
                    history: Mapping[str, CoefficientTable] | None = None,
                    workspace: Any = None) -> tuple[Any, dict[str, int]]:
    """``arrays`` with ``predicted`` re-expressed under ``table`` (see the module docstring), and the
    count of events per way (``kept`` for events without stored inputs, whose prediction stays)."""
    from dataclasses import replace

    from autopack_pipeline.domain.fast_metrics.arrays import IntColumn

    events = stored_predictions(arrays, inputs)
    repredictor = Repredictor(table, history, workspace)
    values = arrays.predicted.values.astype(np.int64).copy()
    valid = None if arrays.predicted.valid is None else arrays.predicted.valid.copy()
    how: Counter[str] = Counter()
    for i, event in enumerate(events):
        if event is None:
            how["kept"] += 1
            continue
        value, way = repredictor.one(event)
        values[i] = int(value)
        if valid is not None:
            valid[i] = True
        how[way] += 1
    counts = {way: int(how[way]) for way in (*HOW, "kept")}
    return replace(arrays, predicted=IntColumn(values, valid)), counts
