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
    count of events per way (``kept`` for events without stored inputs, whose prediction stays).

    Whole columns at a time: the ways are chosen with masks, ``scaled`` multiplies by a ratio per
    (version, group), and the estimator runs once per distinct input of the ``rerun`` rows. A
    Python object per event cost ~50 us each (9/10 of ``calibrate`` at a million events).
    """
    from dataclasses import replace

    import pandas as pd

    from autopack_pipeline.domain.fast_metrics.arrays import IntColumn

    n = len(arrays)
    ids = arrays.event_id
    id_values = pd.array(ids.values, dtype="Int64")
    if ids.valid is not None:
        id_values[~ids.valid] = pd.NA
    aligned = inputs.reindex(pd.Index(id_values))  # one row per event, NaN where nothing is stored
    has_inputs = np.asarray(pd.Index(id_values).isin(inputs.index) & ~pd.isna(id_values), dtype=bool)
    recorded = arrays.predicted.floats()
    has_recorded = ~np.isnan(recorded)
    versions = (aligned["coefficients_version"].to_numpy(dtype=object) if "coefficients_version" in aligned
                else np.full(n, None, dtype=object))
    versions = np.array([v if isinstance(v, str) else None for v in versions], dtype=object)

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
        features = [c for c in FEATURE_COLUMNS if c in aligned.columns]
        columns = [aligned["deliverables"].to_numpy(dtype=object)[rerun_rows],
                   *(aligned[c].to_numpy(dtype=object)[rerun_rows] for c in features)]
        cats = np.array(cat_labels + [None], dtype=object)[arrays.category.codes[rerun_rows]]
        cxs = np.array(cx_labels + [None], dtype=object)[arrays.complexity.codes[rerun_rows]]
        for j, (items, cat, cx, *feature_values) in enumerate(zip(*columns[:1], cats, cxs, *columns[1:])):
            event = StoredPrediction(category=cat, complexity=cx,
                                     deliverables=items if isinstance(items, (list, tuple)) else [],
                                     recorded=None,
                                     features={c: _plain(v) for c, v in zip(features, feature_values)})
            values[rerun_rows[j]] = int(repredictor.rerun(event)[0])  # cached per distinct input
    valid = None if arrays.predicted.valid is None else arrays.predicted.valid | (way != "kept")
    counts = {name: int((way == name).sum()) for name in (*HOW, "kept")}
    return replace(arrays, predicted=IntColumn(values, valid)), counts
