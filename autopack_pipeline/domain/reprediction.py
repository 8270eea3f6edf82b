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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays, IntColumn, LabelColumn
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
class EncodedColumn:
    """A column as codes into its distinct values (any hashable Python values); code -1 is missing."""

    codes: np.ndarray  # signed integers, as narrow as the number of values allows
    values: tuple = ()

    @classmethod
    def of(cls, items: Sequence[Any]) -> EncodedColumn:
        """Encoded from Python values, one at a time (small inputs, tests); None and NaN are missing."""
        index: dict[Any, int] = {}
        codes = np.full(len(items), -1, dtype=np.int32)
        for i, item in enumerate(items):
            value = _plain(item)
            if value is not None:
                codes[i] = index.setdefault(value, len(index))
        return cls(codes, tuple(index))

    def at(self, position: int) -> Any:
        """The value of entry ``position`` (-1, or a missing value: None)."""
        code = int(self.codes[position]) if position >= 0 else -1
        return self.values[code] if code >= 0 else None


@dataclass(frozen=True)
class PredictionInputs:
    """What stored events keep about their prediction, one entry per event id: the deliverables (each
    distinct list once, as a tuple of strings), the coefficient version that predicted it (None before
    the column existed) and the doc features, each column dictionary-encoded.

    Storage builds it (``storage.prediction_inputs``); events find their entry by ``event_id``.
    """

    event_ids: np.ndarray  # int64
    deliverables: EncodedColumn  # values: tuples of strings; missing means none stored
    versions: EncodedColumn  # values: version names
    features: Mapping[str, EncodedColumn] = field(default_factory=dict)  # the FEATURE_COLUMNS stored

    @classmethod
    def from_rows(cls, event_ids: Sequence[int], deliverables: Sequence[Sequence[str] | None],
                  versions: Sequence[str | None] | None = None,
                  features: Mapping[str, Sequence[Any]] | None = None) -> PredictionInputs:
        """From Python values per event (deliverables as lists; anything else counts as none)."""
        lists = [tuple(str(item) for item in items) if isinstance(items, (list, tuple)) else None
                 for items in deliverables]
        names = [v if isinstance(v, str) else None for v in versions] if versions is not None else []
        return cls(np.asarray(event_ids, dtype=np.int64), EncodedColumn.of(lists),
                   EncodedColumn.of(names) if versions is not None else
                   EncodedColumn(np.full(len(lists), -1, dtype=np.int32)),
                   {name: EncodedColumn.of(list(values)) for name, values in (features or {}).items()})

    def __len__(self) -> int:
        return len(self.event_ids)

    def within(self, id_range: tuple[int, int] | None) -> PredictionInputs:
        """The entries whose event id lies in ``id_range`` (both ends included; None: every entry), as views;
        the entries must be in increasing id order. Each column keeps all its values, used or not."""
        if id_range is None:
            return self
        first = int(np.searchsorted(self.event_ids, id_range[0], "left"))
        end = int(np.searchsorted(self.event_ids, id_range[1], "right"))
        if first == 0 and end == len(self):
            return self

        def part(column: EncodedColumn) -> EncodedColumn:
            return EncodedColumn(column.codes[first:end], column.values)

        return PredictionInputs(self.event_ids[first:end], part(self.deliverables), part(self.versions),
                                {name: part(column) for name, column in self.features.items()})

    def positions(self, ids: IntColumn) -> np.ndarray:
        """Per event, the index of its entry; -1 where the event has no id or nothing is stored."""
        if not len(self.event_ids):
            return np.full(len(ids.values), -1, dtype=np.int64)
        # The columnar copy stores the inputs in id order, one per id, and `calibrate` asks for the
        # entries of exactly those events: then the answer is every entry in turn, with no sort or
        # search of a million ids (twice per `calibrate`: re-prediction and window). The ids are compared
        # as they are (int32 beside int64): an int64 copy of them was 8 MB at the calibration's peak.
        increasing = bool(np.all(self.event_ids[1:] > self.event_ids[:-1]))
        if increasing and (ids.valid is None or bool(ids.valid.all())) and np.array_equal(ids.values, self.event_ids):
            return np.arange(len(ids.values), dtype=np.int64)
        out = np.full(len(ids.values), -1, dtype=np.int64)
        wanted = ids.values.astype(np.int64, copy=False)
        # Strictly increasing ids are their own stable order; otherwise duplicates: the first entry wins.
        order = np.arange(len(self.event_ids)) if increasing else np.argsort(self.event_ids, kind="stable")
        ordered = self.event_ids[order] if not increasing else self.event_ids
        at = np.minimum(np.searchsorted(ordered, wanted), len(ordered) - 1)
        found = (ordered[at] == wanted) & ids.notna()
        out[found] = order[at[found]]
        return out

    def deliverables_at(self, position: int) -> list[str]:
        """The deliverables of entry ``position`` (-1: none stored)."""
        return list(self.deliverables.at(position) or ())

    def version_at(self, position: int) -> str | None:
        return self.versions.at(position)

    def version_codes(self, position: np.ndarray) -> np.ndarray:
        """Per entry position (-1: none), the code of its version (-1: none)."""
        if not len(self):
            return np.full(len(position), -1, dtype=np.int32)
        # Position -1 wraps to the last entry, replaced by -1 below: no clipped int64 copy of the positions.
        return np.where(position >= 0, np.take(self.versions.codes, position, mode="wrap"), -1)

    def has_deliverables(self, position: np.ndarray) -> np.ndarray:
        """Per entry position (-1: none), whether it keeps at least one deliverable."""
        if not len(self):
            return np.zeros(len(position), dtype=bool)
        non_empty = np.array([bool(items) for items in self.deliverables.values] + [False], dtype=bool)
        codes = np.where(position >= 0, self.deliverables.codes[np.maximum(position, 0)], -1)
        return non_empty[codes]  # code -1 picks the last entry: False

    def versions_present(self) -> list[str]:
        """The coefficient versions some entry names, sorted."""
        return sorted(self.versions.values[code] for code in np.unique(self.versions.codes).tolist() if code >= 0)

    def features_at(self, position: int) -> dict[str, Any]:
        """The stored doc features of entry ``position``, missing ones as None."""
        return {name: column.at(position) for name, column in self.features.items()}


class Repredictor:
    """Re-expresses stored predictions under ``table``; ``history`` maps earlier versions to their tables."""

    def __init__(self, table: CoefficientTable, history: Mapping[str, CoefficientTable] | None = None,
                 workspace: Any = None) -> None:
        self.table = table
        self.history = dict(history or {})
        # The working directory once, not at each run: the remembered deliverable costs are found by it, and
        # each run's own Path of it (made, then compared with the remembered ones) was ~12 ms at 1M events.
        self.estimator = TokenEstimator(table, workspace=Path.cwd() if workspace is None else workspace,
                                        remember_deliverables=True)
        self._estimates: dict[tuple, Any] = {}  # TokenEstimate per distinct input
        self._budgets: dict[tuple, int] = {}
        self._convertible: dict[str, bool] = {}

    def _scalable(self, version: str | None) -> CoefficientTable | None:
        """The table of ``version`` when its predictions convert to ours by multipliers alone."""
        if version is None or version not in self.history:
            return None
        if version not in self._convertible:
            self._convertible[version] = self.table.differs_only_in_calibration(self.history[version])
        return self.history[version] if self._convertible[version] else None

    def _estimate(self, event: StoredPrediction) -> tuple[tuple, Any]:
        """(the event's inputs as a key, the estimator's estimate of them); identical inputs run once."""
        features = tuple(sorted((k, v) for k, v in (event.features or {}).items() if v is not None))
        key = (tuple(event.deliverables), event.category, event.complexity, features)
        estimate = self._estimates.get(key)
        if estimate is None:
            estimate = self._estimates[key] = self.estimator.repredict(
                list(event.deliverables), event.category or "unknown", event.complexity or "medium", dict(features))
        return key, estimate

    def rerun(self, event: StoredPrediction) -> tuple[int, int]:
        """(prediction, budget) by running the estimator again; identical inputs run once."""
        key, estimate = self._estimate(event)
        if key not in self._budgets:
            self._budgets[key] = select_budget(estimate, estimate.complexity, self.table)
        return estimate.estimated_tokens, self._budgets[key]

    def prediction(self, event: StoredPrediction) -> int:
        """:meth:`rerun`'s prediction alone: re-expressing a prediction needs no budget, and choosing one
        was 3-4 of the re-runs' 46 ms at a million events (1,377 inputs, median of 31)."""
        return self._estimate(event)[1].estimated_tokens

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
        return float(self.prediction(event)), "rerun"


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


def distinct_rows(columns: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(a row of each distinct combination, each row's combination number, in the order of the
    combinations) over integer columns of codes (-1 allowed). The columns are combined into one int64
    key per row (mixed radix) when the cardinalities allow; keys from a small range are numbered by
    marking them in a table (no sort), others by ``np.unique``; too wide for a key, the rows
    themselves are compared (``np.unique(axis=0)``, several times slower)."""
    n = len(columns[0]) if columns else 0
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    key = np.zeros(n, dtype=np.int64)
    room = 1
    for column in columns:
        low, high = int(column.min()), int(column.max())
        span = high - low + 1
        if room * span >= 2 ** 62:
            _, first, inverse = np.unique(np.stack([c.astype(np.int64) for c in columns], axis=1), axis=0,
                                          return_index=True, return_inverse=True)
            return first, inverse.reshape(-1)
        key *= span  # in place, the column widened on the fly: no int64 copy of each column
        key += column
        key -= low
        room *= span
    if room > 4 * n + 4096:
        _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        return first, inverse.reshape(-1)
    seen = np.zeros(room, dtype=bool)
    seen[key] = True
    number = np.cumsum(seen) - 1  # the keys present, numbered in ascending order
    inverse = number[key]
    representative = np.empty(int(seen.sum()), dtype=np.int64)
    representative[inverse] = np.arange(n)  # any row of a combination will do: they hold the same codes
    return representative, inverse


def rerun_codes(repredictor: Repredictor, inputs: PredictionInputs, position: np.ndarray,
                category: LabelColumn, complexity: LabelColumn) -> tuple[np.ndarray, np.ndarray]:
    """(prediction, budget) per row by :meth:`Repredictor.rerun` of the row's stored inputs
    (``position`` into ``inputs``, all >= 0), its category and complexity label: the estimator runs
    once per distinct combination of codes and the results are scattered back to the rows."""
    if not len(position):
        return np.zeros(0), np.zeros(0)
    predicted, budget, inverse = rerun_combinations(repredictor, inputs, position, category, complexity)
    return predicted[inverse], budget[inverse]


def rerun_combinations(repredictor: Repredictor, inputs: PredictionInputs, position: np.ndarray,
                       category: LabelColumn, complexity: LabelColumn, *, budgets: bool = True
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """:func:`rerun_codes` before the scatter: (prediction, budget) per distinct combination of codes and
    each row's combination number (``position`` not empty); the budgets None unless ``budgets``."""
    if repredictor.estimator.category_lookup == "canonical":
        # That estimator reads a category only through normalise_category (a missing one included,
        # as "unknown"), so spellings of one category (tests/testing, docs/documentation) share a run.
        codes, names = category.canonical(normalise_category)
        category = LabelColumn(codes, tuple(names))
    features = list(inputs.features.items())
    # A feature column with no value stored (an Autopack database keeps none) is missing everywhere: it
    # tells no combination apart, so it is not gathered per row (a million-row copy each).
    rows, inverse = distinct_rows([inputs.deliverables.codes[position], category.codes, complexity.codes,
                                    *(column.codes[position] for _name, column in features if column.values)])
    predicted, budget = np.zeros(len(rows)), np.zeros(len(rows)) if budgets else None
    for k, row in enumerate(rows.tolist()):
        at = int(position[row])
        cat, cx = int(category.codes[row]), int(complexity.codes[row])
        event = StoredPrediction(category=category.labels[cat] if cat >= 0 else None,
                                 complexity=complexity.labels[cx] if cx >= 0 else None,
                                 deliverables=inputs.deliverables_at(at), recorded=None,
                                 features={name: column.at(at) for name, column in features})
        if budget is not None:
            predicted[k], budget[k] = repredictor.rerun(event)
        else:
            predicted[k] = repredictor.prediction(event)
    return predicted, budget, inverse


def arrays_in_force(arrays: EventArrays, inputs: PredictionInputs, table: CoefficientTable,
                    history: Mapping[str, CoefficientTable] | None = None,
                    workspace: Any = None) -> tuple[EventArrays, dict[str, int]]:
    """``arrays`` with ``predicted`` re-expressed under ``table`` (see the module docstring), and the
    count of events per way (``kept`` for events without stored inputs, whose prediction stays).

    Whole columns at a time: the ways are chosen with masks, ``scaled`` multiplies by a ratio per
    (version, group), and the estimator runs once per distinct input of the ``rerun`` rows
    (:func:`rerun_codes`). A Python object per event cost ~10 us each (a third of ``calibrate`` at a
    million events).
    """
    n = len(arrays)
    position = inputs.positions(arrays.event_id)
    has_inputs = position >= 0
    # Known where the column is (integers are never NaN); the recorded values as floats only for the rows
    # a version scales (a float64 copy of every row was 8 MB at the calibration's peak).
    has_recorded = arrays.predicted.notna()
    version = inputs.version_codes(position)
    current = inputs.versions.values.index(table.version) if table.version in inputs.versions.values else -2

    values = np.array(arrays.predicted.values, dtype=np.int64)  # a copy, made once
    kept, recorded_way, scaled_way, rerun_way = -1, 0, 1, 2  # indices into HOW; -1 for "kept"
    way = np.full(n, kept, dtype=np.int8)
    way[has_inputs] = rerun_way
    same = has_inputs & has_recorded & (version == current)
    way[same] = recorded_way

    repredictor = Repredictor(table, history, workspace)
    cat_labels, cx_labels = list(arrays.category.labels), list(arrays.complexity.labels)
    candidates = has_inputs & has_recorded & ~same
    # (Inputs that store no version, an Autopack database's, have none to scale: no search of every row.)
    versions_to_scale = [code for code in np.unique(version[candidates]).tolist()
                         if code >= 0 and repredictor._scalable(inputs.versions.values[code]) is not None
                         ] if inputs.versions.values else []
    # Per (category, complexity) code pair, one ratio per version: rows look theirs up in a table (made only
    # when a version scales: 16 MB at a million events, at the calibration's peak otherwise).
    width = len(cx_labels) + 1
    pair = (arrays.category.codes.astype(np.int64) + 1) * width + (arrays.complexity.codes + 1) \
        if versions_to_scale else None
    for code in versions_to_scale:
        old = repredictor._scalable(inputs.versions.values[code])
        rows = np.flatnonzero(candidates & (version == code))
        ratio_of = np.ones((len(cat_labels) + 1) * width)
        for group in np.unique(pair[rows]).tolist():
            cat, cx = divmod(group, width)
            key = (normalise_category(cat_labels[cat - 1] if cat > 0 else None),
                   normalise_complexity(cx_labels[cx - 1] if cx > 0 else None))
            ratio_of[group] = table.prediction_multiplier(*key) / old.prediction_multiplier(*key)
        ratio, before = ratio_of[pair[rows]], arrays.predicted.floats_at(rows)
        values[rows] = np.where(ratio != 1.0, np.floor(before * ratio + 0.5), before).astype(np.int64)
        way[rows] = scaled_way

    rerun = way == rerun_way
    if n and bool(rerun.all()):
        # Every event re-run (an Autopack database keeps no version): the columns themselves, not a
        # gathered copy of each (position, category, complexity: 12 MB at a million events, at the
        # calibration's peak), and each combination's prediction written straight into the rows.
        predicted, _budget, inverse = rerun_combinations(repredictor, inputs, position, arrays.category,
                                                         arrays.complexity, budgets=False)
        np.take(predicted.astype(np.int64), inverse, out=values)
    elif rerun.any():
        rerun_rows = np.flatnonzero(rerun)
        predicted, _budget, inverse = rerun_combinations(
            repredictor, inputs, position[rerun_rows], LabelColumn(arrays.category.codes[rerun_rows],
                                                                   arrays.category.labels),
            LabelColumn(arrays.complexity.codes[rerun_rows], arrays.complexity.labels), budgets=False)
        values[rerun_rows] = predicted.astype(np.int64)[inverse]  # per combination, then per row
    valid = None if arrays.predicted.valid is None else arrays.predicted.valid | (way != kept)
    counts = {name: int((way == i).sum()) for i, name in enumerate(HOW)} | {"kept": int((way == kept).sum())}
    return arrays.with_predicted(IntColumn(values, valid)), counts
