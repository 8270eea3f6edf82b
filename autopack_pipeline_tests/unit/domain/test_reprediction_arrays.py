"""Whole-column re-prediction (``arrays_in_force``, ``rerun_codes``) gives every event exactly what the
event-by-event rule (``Repredictor.one``) gives it alone, on random histories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autopack_pipeline.domain.coefficients import GroupSetting, load_coefficients
from autopack_pipeline.domain.reprediction import (
    PredictionInputs,
    Repredictor,
    StoredPrediction,
    arrays_in_force,
    distinct_rows,
)
from autopack_pipeline.storage.frames import event_arrays_from_frame

DELIVERABLES = [["docs/api_reference.md", "docs/examples.md"], ["docs/notes.md"], ["src/a.py (new)"],
                ["tests/test_a.py"] * 9, ["CHANGELOG.md"], ["docs/guide.md", "src/b.py"], [], None]
CATEGORIES = ["docs", "documentation", "implementation", "tests", "testing", "doc_synthesis", "IMPLEMENT_FEATURE",
              None]
COMPLEXITIES = ["low", "medium", "high", "Medium complexity", None]
FEATURES = {"api_reference_required": [True, False, None], "examples_required": [True, False, None],
            "research_required": [None, True], "usage_guide_required": [False, None],
            "context_quality": ["none", "some", "strong", "odd", None]}


@pytest.fixture
def tables():
    seed = load_coefficients(Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml")
    old = seed.with_calibration({("docs", "low"): GroupSetting(prediction_multiplier=2.0),
                                 ("implementation", "medium"): GroupSetting(prediction_multiplier=0.8)}, "v-old")
    new = old.with_calibration({("docs", "low"): GroupSetting(prediction_multiplier=3.0),
                                ("implementation", "low"): GroupSetting(prediction_multiplier=0.5),
                                ("tests", "medium"): GroupSetting(prediction_multiplier=1.3)}, "v-new")
    other = seed.with_overhead_multipliers({("docs", "low"): 1.5}, "v-other")  # not convertible: rerun
    return new, {"v-old": old, "v-other": other}


@pytest.mark.parametrize("seed_value", [1, 2, 3])
def test_whole_columns_equal_the_event_by_event_rule(tables, seed_value):
    new, history = tables
    rng = np.random.default_rng(seed_value)
    n = 3000
    pick = lambda options: [options[i] for i in rng.integers(0, len(options), n)]  # noqa: E731
    categories, complexities, deliverables = pick(CATEGORIES), pick(COMPLEXITIES), pick(DELIVERABLES)
    versions = pick(["v-new", "v-old", "v-other", "v-unknown", None])
    recorded = rng.integers(1, 20000, n).astype(float)
    recorded[rng.random(n) < 0.1] = np.nan  # no recorded prediction: always re-run
    features = {name: pick(values) for name, values in FEATURES.items()}
    event_ids = rng.permutation(np.arange(1, n + 1))
    stored = rng.random(n) < 0.9  # the rest have no stored inputs: their prediction stays
    frame = pd.DataFrame({"event_id": event_ids, "run_id": "r", "phase_id": [f"p{i}" for i in range(n)],
                          "category": categories, "complexity": complexities,
                          "predicted_output_tokens": pd.array([None if np.isnan(v) else int(v) for v in recorded],
                                                              dtype="Int64"),
                          "actual_output_tokens": 1000, "selected_budget": 8192, "success": True,
                          "truncated": False})
    keep = np.flatnonzero(stored)[::-1]  # stored in another order than the events
    inputs = PredictionInputs.from_rows(event_ids[keep], [deliverables[i] for i in keep], [versions[i] for i in keep],
                                        {name: [values[i] for i in keep] for name, values in features.items()})

    arrays, counts = arrays_in_force(event_arrays_from_frame(frame), inputs, new, history)

    repredictor = Repredictor(new, history)
    expected, ways = [], []
    for i in range(n):
        if not stored[i]:
            expected.append(None if np.isnan(recorded[i]) else int(recorded[i]))
            ways.append("kept")
            continue
        event = StoredPrediction(categories[i], complexities[i],
                                 list(deliverables[i]) if isinstance(deliverables[i], list) else [],
                                 None if np.isnan(recorded[i]) else float(recorded[i]), version=versions[i],
                                 features={name: values[i] for name, values in features.items()})
        value, way = repredictor.one(event)
        expected.append(int(value))
        ways.append(way)
    got = [int(v) if ok else None for v, ok in zip(arrays.predicted.values, arrays.predicted.notna())]
    assert got == expected
    assert counts == {way: ways.count(way) for way in ("recorded", "scaled", "rerun", "kept")}
    assert min(counts.values()) > 0  # every way was exercised


def test_every_event_rerun_equals_the_event_by_event_rule(tables):
    """An Autopack database keeps no coefficients version, so every event with stored inputs is re-run:
    the columns are used as they are (no gathered copies) and each combination's prediction is written
    straight into the rows; the events keep their ids in order, as the columnar copy stores them."""
    new, history = tables
    rng = np.random.default_rng(5)
    n = 2500
    pick = lambda options: [options[i] for i in rng.integers(0, len(options), n)]  # noqa: E731
    categories, complexities, deliverables = pick(CATEGORIES), pick(COMPLEXITIES), pick(DELIVERABLES)
    features = {name: pick(values) for name, values in FEATURES.items()}
    recorded = rng.integers(1, 20000, n)
    event_ids = np.arange(1, n + 1, dtype=np.int32)  # narrower than the stored ids' int64, as loaded
    frame = pd.DataFrame({"event_id": event_ids, "run_id": "r", "phase_id": [f"p{i}" for i in range(n)],
                          "category": categories, "complexity": complexities, "predicted_output_tokens": recorded,
                          "actual_output_tokens": 1000, "selected_budget": 8192, "success": True,
                          "truncated": False})
    inputs = PredictionInputs.from_rows(event_ids.astype(np.int64), deliverables, None, features)

    arrays, counts = arrays_in_force(event_arrays_from_frame(frame), inputs, new, history)

    repredictor = Repredictor(new, history)
    expected = []
    for i in range(n):
        event = StoredPrediction(categories[i], complexities[i],
                                 list(deliverables[i]) if isinstance(deliverables[i], list) else [],
                                 float(recorded[i]), version=None,
                                 features={name: values[i] for name, values in features.items()})
        value, way = repredictor.one(event)
        assert way == "rerun"
        expected.append(int(value))
    assert arrays.predicted.values.tolist() == expected
    assert counts == {"recorded": 0, "scaled": 0, "rerun": n, "kept": 0}


def test_distinct_rows_numbers_each_combination_once():
    rng = np.random.default_rng(7)
    stacked_sets = [[rng.integers(-1, 4, 500), rng.integers(0, 3, 500), rng.integers(-1, 2, 500)],  # a table
                    [rng.integers(-1, 400, 500), rng.integers(0, 300, 500)]]  # a sparse key: np.unique
    for columns in stacked_sets:
        rows, inverse = distinct_rows(columns)
        stacked = np.stack(columns, axis=1)
        assert len(rows) == len({tuple(row) for row in stacked.tolist()})
        assert (stacked[rows][inverse] == stacked).all()
        assert sorted(set(inverse.tolist())) == list(range(len(rows)))
    # Columns too wide for one int64 key compare the rows themselves, with the same result.
    wide = [np.array([0, 2**40, 0, 2**40]), np.array([0, 2**40, 0, 1]), np.array([5, 5, 5, 5])]
    rows, inverse = distinct_rows(wide)
    assert len(rows) == 3 and inverse[0] == inverse[2] and len(set(inverse.tolist())) == 3


def test_rerun_codes_gives_each_row_the_prediction_and_budget_of_its_own_rerun(tables):
    """The backtest's both sides: predictions and ``select_budget``'s budgets, row by row."""
    from autopack_pipeline.domain.analysis import LabelColumn
    from autopack_pipeline.domain.reprediction import rerun_codes

    new, _history = tables
    rng = np.random.default_rng(11)
    n = 2000
    items = [DELIVERABLES[i] for i in rng.integers(0, len(DELIVERABLES), n)]
    features = {name: [values[i] for i in rng.integers(0, len(values), n)] for name, values in FEATURES.items()}
    inputs = PredictionInputs.from_rows(np.arange(n), items, None, features)
    category = LabelColumn(rng.integers(-1, 4, n).astype(np.int32), ("docs", "tests", "doc_synthesis", "unknown"))
    complexity = LabelColumn(rng.integers(-1, 3, n).astype(np.int32), ("low", "medium", "high"))
    position = rng.permutation(n)  # rows read their inputs out of order
    predicted, budget = rerun_codes(Repredictor(new), inputs, position, category, complexity)

    one_by_one = Repredictor(new)
    for row in range(n):
        at = int(position[row])
        cat, cx = int(category.codes[row]), int(complexity.codes[row])
        expected = one_by_one.rerun(StoredPrediction(category.labels[cat] if cat >= 0 else None,
                                                     complexity.labels[cx] if cx >= 0 else None,
                                                     inputs.deliverables_at(at), None,
                                                     features=inputs.features_at(at)))
        assert (predicted[row], budget[row]) == expected


def _positions_by_lookup(stored: np.ndarray, ids: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    first: dict[int, int] = {}
    for index, event_id in enumerate(stored.tolist()):
        first.setdefault(event_id, index)
    return np.array([first.get(event_id, -1) if valid is None or valid[i] else -1
                     for i, event_id in enumerate(ids.tolist())], dtype=np.int64)


@pytest.mark.parametrize("case", ["same ids", "same ids, one missing", "a sorted subset", "shuffled with repeats",
                                  "sorted with repeats", "ids not stored"])
def test_positions_find_each_events_first_entry(case):
    from autopack_pipeline.domain.analysis.arrays import IntColumn

    rng = np.random.default_rng(7)
    stored = np.arange(100, 1100, dtype=np.int64)
    ids, valid = stored.copy(), None
    if case == "same ids, one missing":
        valid = np.ones(len(ids), dtype=bool)
        valid[10] = False
    elif case == "a sorted subset":
        ids = np.sort(rng.choice(stored, 300, replace=False))
    elif case == "shuffled with repeats":
        stored = rng.permutation(np.concatenate([stored, stored[:50]]))
        ids = rng.choice(stored, 500)
    elif case == "sorted with repeats":
        stored = np.sort(np.concatenate([stored, stored[:50]]))
        ids = stored.copy()
    elif case == "ids not stored":
        ids = np.arange(1050, 1200, dtype=np.int64)
    inputs = PredictionInputs.from_rows(stored.tolist(), [None] * len(stored))
    found = inputs.positions(IntColumn(ids, valid))
    assert found.dtype == np.int64
    assert np.array_equal(found, _positions_by_lookup(stored, ids, valid))


def test_a_rerun_looks_the_deliverables_up_in_the_working_directory_as_the_estimator_does(tables, tmp_path,
                                                                                           monkeypatch):
    """Files of the working directory are modified, not new, for the re-run as for the estimator asked
    alone: the re-predictor finds them in the directory it was made in."""
    from autopack_pipeline.domain.estimator import TokenEstimator

    new, history = tables
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "kept.py").write_text("import os\n\n\ndef f():\n    return 1\n" * 40)
    monkeypatch.chdir(tmp_path)
    repredictor = Repredictor(new, history)
    for deliverables in (["src/kept.py"], ["src/kept.py", "src/missing.py"], ["src/missing.py"]):
        event = StoredPrediction("implementation", "medium", deliverables, None)
        alone = TokenEstimator(new).repredict(deliverables, "implementation", "medium", {})
        assert repredictor.rerun(event)[0] == alone.estimated_tokens
    modified = TokenEstimator(new).repredict(["src/kept.py"], "implementation", "medium", {})
    assert modified.estimated_tokens != TokenEstimator(new).repredict(["src/missing.py"], "implementation",
                                                                      "medium", {}).estimated_tokens


@pytest.mark.parametrize("lookup", ["canonical", "autopack"])
def test_an_estimator_that_remembers_deliverables_estimates_as_a_fresh_one(tables, lookup):
    """Remembering what each list of deliverables says (re-prediction's estimator) changes no estimate:
    every model, category, complexity, scope and task description, asked in turn of one estimator that
    remembers (and re-runs of stored events), gives the estimate a fresh estimator gives alone (its
    features dict included)."""
    from autopack_pipeline.domain.estimator import TokenEstimator

    new, _history = tables
    remembering = TokenEstimator(new, category_lookup=lookup, remember_deliverables=True)
    lists = [*DELIVERABLES[:-1], ["CHANGELOG.md", "docs/history.md"], ["docs/api_reference.md"],
             [" docs/guide.md ", ["docs/usage_guide.md"]], ["Create src/new_module.py"],
             ["src/kept.py", "Add a section on retries"]]
    tasks = ["", "Document the API from scratch", "write examples", ""]
    scopes = [None, ["src"] * 3, ["src"] * 20, ["src"]]  # context none, some, strong, some
    seen = []
    for round_ in range(2):  # the second round reads what the first remembered
        for deliverables in lists:
            for category in CATEGORIES:
                for complexity in COMPLEXITIES[:3]:
                    for task, scope in zip(tasks, scopes):
                        got = remembering.estimate(deliverables, category, complexity, scope, task)
                        want = TokenEstimator(new, category_lookup=lookup).estimate(deliverables, category,
                                                                                    complexity, scope, task)
                        seen.append((got, want, (deliverables, category, complexity, task)))
                    if category not in ("doc_synthesis", "doc_sot_update"):  # the stored event's re-run
                        seen.append((remembering.repredict(deliverables, category, complexity, {}),
                                     TokenEstimator(new, category_lookup=lookup).estimate(deliverables, category,
                                                                                          complexity),
                                     (deliverables, category, complexity, "repredict")))
    for got, want, asked in seen:  # compared once all are made: each estimate's features are its own
        assert got == want, asked
    assert {"doc_sot_update", "doc_synthesis", "docs", "tests"} <= {got.category for got, _w, _a in seen}
