"""Rows gathered a block of the column at a time, run by run, are ``values[rows]``, whatever the runs hold."""

from __future__ import annotations

import numpy as np
import pytest

from autopack_pipeline.domain.analysis import arrays as module


@pytest.mark.parametrize("ordered", [True, False])
def test_rows_in_ascending_runs_gathered_by_blocks_are_a_plain_gather(ordered, monkeypatch):
    monkeypatch.setattr(module, "_RUN_BLOCK", 1000)  # many blocks over a small column
    monkeypatch.setattr(module, "_RUNS_FROM_BYTES", 0)
    rng = np.random.default_rng(5)
    values = rng.integers(0, 50000, 25_000).astype(np.int32)
    group = rng.integers(0, 9, len(values))
    rows = np.argsort(group, kind="stable").astype(np.int32)[rng.random(len(values)) < 0.8]
    runs = np.r_[0, np.cumsum(np.bincount(group[rows], minlength=12))]  # empty runs too
    rows = rows[np.argsort(group[rows], kind="stable")]  # each group's rows ascending, group after group
    if not ordered:  # out of order inside runs: slower, the same values
        rng.shuffle(rows[runs[3]:runs[4]])
    for dtype in (None, np.float64):
        got = module.rows_of(values, rows, dtype, runs=runs)
        want = values[rows] if dtype is None else values[rows].astype(dtype)
        assert got.dtype == want.dtype and np.array_equal(got, want)
