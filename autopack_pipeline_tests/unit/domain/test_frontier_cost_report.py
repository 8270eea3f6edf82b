"""The calibrate workflow's reports carry the frontier and the cost per group (markdown, JSON, as_dict)."""

from __future__ import annotations

import json

import pytest

from autopack_pipeline.services import calibrating
from autopack_pipeline.settings import load_settings
from autopack_pipeline_tests.unit.domain.test_calibration_reports import events


def test_reports_show_frontier_and_cost_per_group(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOPACK_SEEDS_DIR", raising=False)
    outcome = calibrating.calibrate(events(), load_settings(), force=True, output_dir=tmp_path)
    markdown = outcome.markdown_path.read_text()
    assert "## Frontier and cost" in markdown
    assert "### implementation/low" in markdown and "### tests/medium" in markdown

    payload = json.loads(outcome.json_path.read_text())
    by_group = {(e["category"], e["complexity"]): e for e in payload["frontier_and_cost"]}
    low = by_group[("implementation", "low")]
    # 40 clean ratios 0.05 .. 2.0: 5% of 40 lets 2 exceed 1.1 m -> m = 1.9 / 1.1 -> 1.728; 2% lets none
    # exceed b m -> b = 2.0 / 1.728 -> 1.158.
    assert (low["frontier"]["multiplier"], low["frontier"]["margin"]) == (1.728, 1.158)
    # Budget waste P90 of S / r over 40 values (S = 1.728 * 1.158): j = 36, delta 9, ascending values 35 and
    # 36 are S / 0.25 and S / 0.2: (4 S + 9 * 5 S) / 10 = 4.9 S = 9.81x, so Tier 2 cannot hold.
    assert low["frontier"]["budget_waste_p90"] == pytest.approx(4.9 * 1.728 * 1.158)
    assert low["frontier"]["tier2_holds"] is False
    # Billed: 50 * (1 + ... + 40) = 41,000 tokens at the default $15 per million (no model stored):
    # $0.615 over 40 calls = $15.375 per 1,000 calls; 40 budgets of 8192 reserved.
    now = low["cost"]["now"]
    assert now["dollars_per_1000_calls"] == pytest.approx(15.375)
    assert now["reserved_output_tokens_per_1000_calls"] == 8_192_000
    # The frontier's budgets, 1.158 * 1.728 * 1000 = 2001, sit under the 8192 floor: nothing moves.
    frontier = next(p for p in low["cost"]["proposals"] if p["label"] == "frontier")
    assert frontier["proposed"]["reserved_output_tokens_per_1000_calls"] == 8_192_000
    assert {p["label"] for p in low["cost"]["proposals"]} == {"frontier", "calibration"}
    assert "$15.38 -> $15.38 per 1,000 calls" in markdown

    medium = by_group[("tests", "medium")]
    # 3 of 28 truncated (10.7%) count above every candidate: out of reach.
    assert medium["frontier"]["reachable"] is False
    assert "3 of 28 observations (10.7%) were truncated" in markdown
    assert outcome.as_dict()["frontier_and_cost"] == payload["frontier_and_cost"]


def test_each_groups_rows_are_the_same_read_a_few_rows_at_a_time():
    # The frontier and cost group the usable rows a million at a time; in chunks of 7 rows (pairs
    # split across chunks, chunks without some pairs) every pair's rows are those of one stable sort.
    import numpy as np

    from autopack_pipeline.domain.analysis.samples import rows_by_pair

    rng = np.random.default_rng(5)
    cat, cx = rng.integers(0, 4, 200).astype(np.int8), rng.integers(0, 3, 200).astype(np.int8)
    usable = rng.random(200) < 0.7
    known = np.flatnonzero(usable)
    pair = cat[known].astype(np.int64) * 3 + cx[known]
    expected = [known[pair == code] for code in range(12)]
    for chunk in (7, 1 << 20):
        found = rows_by_pair(usable, cat, cx, 3, 12, chunk=chunk)
        assert len(found) == 12 and all(np.array_equal(a, b) for a, b in zip(found, expected))


@pytest.mark.parametrize("model", [None, "claude-sonnet-4-5"])
def test_one_price_for_every_event_prices_each_group_as_a_price_per_event_does(model, monkeypatch):
    # One price for every event (no model stored, or one model): the groups' costs multiply the tokens
    # by that number, the very products a price per event gives.
    from autopack_pipeline.domain import group_economics
    from autopack_pipeline.domain.analysis import coverage_groups
    from autopack_pipeline.domain.coefficients import load_coefficients
    from autopack_pipeline.services.seed_files import load_prices_for
    from autopack_pipeline.storage.frames import event_arrays_from_frame

    frame = events()
    frame["model"] = model
    arrays = event_arrays_from_frame(frame)
    settings = load_settings()
    prices, table = load_prices_for(settings), load_coefficients(settings.seeds_dir / "estimator_coefficients.yaml")
    groups = coverage_groups(arrays)[2]
    assert group_economics._one_price(arrays, prices) == prices.default.output
    multipliers = {g.key: 1.3 for g in groups}
    once = group_economics.group_economics(arrays, groups, table, prices, calibrated_multipliers=multipliers)
    monkeypatch.setattr(group_economics, "_one_price", lambda *args: None)
    per_event = group_economics.group_economics(arrays, groups, table, prices, calibrated_multipliers=multipliers)
    assert json.dumps(once) == json.dumps(per_event)
    # The rows found beforehand (the calibration finds them on its second thread) price the same calls.
    rows = group_economics.economics_rows(arrays)
    assert sum(len(r) for r in rows) > 0
    found_before = group_economics.group_economics(arrays, groups, table, prices, calibrated_multipliers=multipliers,
                                                   pair_rows=rows)
    assert json.dumps(found_before) == json.dumps(once)


def test_groups_gathered_in_batches_are_priced_as_each_group_alone(monkeypatch):
    """The groups' rows gathered a batch of groups at a time, a block of each column at a time: the same
    figures as each group gathered alone."""
    from autopack_pipeline.domain import group_economics
    from autopack_pipeline.domain.analysis import arrays as array_module
    from autopack_pipeline.domain.analysis import coverage_groups
    from autopack_pipeline.domain.coefficients import load_coefficients
    from autopack_pipeline.services.seed_files import load_prices_for
    from autopack_pipeline.storage.frames import event_arrays_from_frame

    arrays = event_arrays_from_frame(events())
    settings = load_settings()
    prices, table = load_prices_for(settings), load_coefficients(settings.seeds_dir / "estimator_coefficients.yaml")
    groups = coverage_groups(arrays)[2]
    multipliers = {g.key: 1.2 for g in groups}
    monkeypatch.setattr(group_economics, "_BATCH_ROWS", 0)  # each group alone, a plain gather
    alone = group_economics.group_economics(arrays, groups, table, prices, calibrated_multipliers=multipliers)
    monkeypatch.setattr(group_economics, "_BATCH_ROWS", 10**9)  # every group in one batch, by blocks
    monkeypatch.setattr(array_module, "_RUN_BLOCK", 16)
    monkeypatch.setattr(array_module, "_RUNS_FROM_BYTES", 0)
    together = group_economics.group_economics(arrays, groups, table, prices, calibrated_multipliers=multipliers)
    assert len(groups) >= 2 and len(arrays) > 16 and json.dumps(together) == json.dumps(alone)
