"""Money and capacity on constructed calls, with the dollars worked out by hand; the price table's checks."""

from pathlib import Path

import numpy as np
import pytest

from autopack_pipeline.domain.cost import (
    clamped_budgets,
    compare,
    comparison_line,
    cost_now,
    cost_with_budgets,
    spend_by_model_and_day,
)
from autopack_pipeline.domain.prices import PriceTable, load_price_table

SEEDS = Path(__file__).resolve().parents[3] / "seeds" / "model_prices.yaml"
TABLE = PriceTable.from_mapping({
    "version": "t1", "as_of": "2025-01-01", "source": "test",
    "models": {"opus": {"input": 15, "output": 75}, "sonnet": {"input": 3, "output": 15}},
    "default": {"input": 1, "output": 10},
})


def test_cost_now_and_with_new_budgets_by_hand():
    # Four calls of one group at $15 per million output tokens; the last one truncated at its ceiling.
    predicted = np.array([1000, 1000, 2000, 2000])
    actual = np.array([900, 1500, 1000, 4000])
    sent = np.array([4096, 4096, 4096, 4000])
    truncated = np.array([False, False, False, True])
    now = cost_now(actual, sent, truncated, 15.0)
    # Billed 900 + 1500 + 1000 + 4000 = 7400 tokens = $0.111; per 1,000 calls: $27.75.
    assert now.billed_output_tokens == 7400
    assert now.dollars == pytest.approx(0.111)
    assert now.to_dict()["dollars_per_1000_calls"] == pytest.approx(27.75)
    # Reserved 16288 for 7400 produced: 4,072,000 per 1,000 calls.
    assert now.to_dict()["reserved_output_tokens_per_1000_calls"] == 4_072_000

    # x1.1 and margin 1.2 with floor 1000 and cap 2500: floor(1.32 * p) = 1320, 1320, 2640 -> 2500 (cap).
    budgets = clamped_budgets(predicted, 1.1, 1.2, 1000, 2500)
    assert budgets.tolist() == [1320, 1320, 2500, 2500]
    proposed = cost_with_budgets(actual, budgets, truncated, 15.0)
    # The 1500-token call no longer fits 1320: billed 1320 + a 1500 retry. Billed 900 + 2820 + 1000 + 4000
    # = 8720 tokens = $0.1308, $32.70 per 1,000 calls; reserved 7640 -> 1,910,000 per 1,000 calls.
    assert proposed.billed_output_tokens == 8720
    assert proposed.dollars == pytest.approx(0.1308)
    assert proposed.truncated_calls == 2
    comparison = compare(now, proposed)
    assert comparison["dollars_per_1000_calls_change"] == pytest.approx(32.70 - 27.75)
    assert comparison["reserved_per_1000_calls_change"] == 1_910_000 - 4_072_000
    assert comparison_line(comparison).startswith("$27.75 -> $32.70 per 1,000 calls; reserved 4.07M -> 1.91M")


def test_spend_per_model_and_day_by_hand():
    day = 86_400 * 1_000_000
    labels = ("opus", "sonnet-2025", "mystery")
    codes = np.array([0, 1, 1, 2, -1])
    stamps = np.array([0, 0, day, day + 5, 2 * day])
    tokens = np.array([1000, 2000, 4000, 1000, 500])
    spend = spend_by_model_and_day(codes, labels, stamps, tokens, TABLE)
    # opus 1000 x $75/M = $0.075; sonnet-2025 (priced as sonnet) 6000 x $15/M = $0.09;
    # mystery and the event without a model at the default $10/M: $0.01 and $0.005.
    by_model = {m["model"]: m for m in spend.per_model}
    assert by_model["opus"]["dollars"] == pytest.approx(0.075)
    assert by_model["sonnet-2025"]["dollars"] == pytest.approx(0.09)
    assert by_model["sonnet-2025"]["priced_as"] == "sonnet"
    assert by_model["mystery"]["priced_as"] is None and by_model["mystery"]["dollars"] == pytest.approx(0.01)
    assert by_model[None]["dollars"] == pytest.approx(0.005)
    assert [m["model"] for m in spend.per_model][:2] == ["sonnet-2025", "opus"]
    # 1970-01-01: $0.075 + $0.03; 01-02: $0.06 + $0.01; 01-03: $0.005.
    assert spend.per_day == pytest.approx({"1970-01-01": 0.105, "1970-01-02": 0.07, "1970-01-03": 0.005})
    assert spend.total_dollars == pytest.approx(0.18)
    assert spend.billed_output_tokens == 8500
    assert "default price, assumed" in spend.line()


def test_spend_ignores_unknown_token_counts():
    spend = spend_by_model_and_day(np.array([0, 0]), ("opus",), np.array([0, 0]), np.array([1000, 99999]), TABLE,
                                   known=np.array([True, False]))
    assert spend.billed_output_tokens == 1000


def test_seed_price_table_loads_and_prices_dated_snapshots():
    table = load_price_table(SEEDS)
    assert table.price_of("claude-sonnet-4-5").output == 15.0
    assert table.entry_for("claude-sonnet-4-5-20250929") == "claude-sonnet-4-5"
    assert table.entry_for("claude-opus-4-1-20250805") == "claude-opus-4-1"  # the longest entry wins
    assert table.entry_for("claude-opus-4-20250514") == "claude-opus-4"
    assert table.entry_for("claude-test-model") is None  # the default, labelled assumed
    assert table.price_of("claude-3-5-haiku").output == 4.0


@pytest.mark.parametrize(("text", "message"), [
    ("version: v\nas_of: x\nsource: s\nmodels: {a: {input: 1, output: -2}}\ndefault: {input: 1, output: 2}\n",
     "key 'models.a.output'"),
    ("version: v\nas_of: x\nsource: s\nmodels: {a: {input: 1}}\ndefault: {input: 1, output: 2}\n",
     "key 'models.a.output': Field required"),
    ("version: v\nas_of: x\nsource: s\nmodels: {}\n", "key 'default': Field required"),
    ("version: v\nas_of: x\nsource: s\nmodels: {}\ndefault: {input: 1, output: 2, cached: 1}\n",
     "key 'default.cached'"),
    ("version: v\nas_of: x\nsource: s\nmodels: {a: {input: one, output: 2}}\ndefault: {input: 1, output: 2}\n",
     "key 'models.a.input'"),
    ("- just a list\n", "must be a mapping at the top level"),
    ("version: [unclosed\n", "not valid YAML"),
])
def test_price_table_errors_name_the_file_and_key(tmp_path, text, message):
    path = tmp_path / "model_prices.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        load_price_table(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_missing_price_table_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="price table not found: .*nowhere.yaml"):
        load_price_table(tmp_path / "nowhere.yaml")


def test_clamped_budgets_are_the_clamps_of_select_budget_whatever_the_shapes():
    predicted = np.array([10.0, 100.0, 1000.0, 5000.0])
    margins = np.array([1.5, 1.2, 1.1, 1.3])
    want = np.minimum(8000, np.maximum(200, np.floor(predicted * 1.1 * margins)))
    assert clamped_budgets(predicted, 1.1, margins, 200, 8000).tolist() == want.tolist()
    # A floor per call over one prediction broadcasts to the floors' shape.
    floors = np.array([100.0, 200.0, 300.0])
    assert clamped_budgets(150.0, 1.0, 1.5, floors, 8000).tolist() == [225.0, 225.0, 300.0]
    assert float(clamped_budgets(150.0, 1.0, 1.5, 300, 250)) == 250.0


def test_the_seed_files_read_the_same_through_libyaml_as_through_pythons_parser():
    """``read_yaml_file`` parses with libyaml where PyYAML has it: every seed file must give the very
    document ``yaml.safe_load`` gives; a file it refuses is parsed again in Python for the message."""
    import yaml

    from autopack_pipeline.domain.coefficients import read_yaml_file

    repo = Path(__file__).resolve().parents[3]
    files = sorted([*(repo / "seeds").glob("*.yaml"), *(repo / "autopack_pipeline" / "seeds_default").glob("*.yaml")])
    assert len(files) >= 10
    for path in files:
        assert read_yaml_file(path, "seed") == yaml.safe_load(path.read_text(encoding="utf-8")), path


def test_a_yaml_error_quotes_the_line_as_pythons_parser_does(tmp_path):
    path = tmp_path / "model_prices.yaml"
    path.write_text("version: v\nmodels: {a: 1: 2}\n")
    with pytest.raises(ValueError) as caught:
        load_price_table(path)
    assert "models: {a: 1: 2}" in str(caught.value) and "^" in str(caught.value)  # the line, and a caret under it
