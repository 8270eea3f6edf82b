"""TokenEstimator, select_budget and the coefficient file (autopack_spec.md sections 2, 2.9 and 8).

Expected numbers are worked out by hand from the spec's formulas and written as literals, so a
changed coefficient or formula shows up as a failing number rather than a self-consistent one.
Every estimate runs against an empty ``tmp_path`` workspace unless the test writes files there,
so plain paths count as new files (the rule Autopack applies at execution time).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import yaml

from autopack_pipeline.domain import coefficient_blocks as coefficient_blocks_module
from autopack_pipeline.domain import coefficient_table as coefficient_table_module
from autopack_pipeline.domain import coefficients as coefficients_module
from autopack_pipeline.domain import deliverables as deliverables_module
from autopack_pipeline.domain import estimator as estimator_module
from autopack_pipeline.domain.coefficients import CoefficientTable, coefficients_path_in, load_coefficients
from autopack_pipeline.domain.deliverables import FileMeasurer, FileMeasures, measure_source, read_source
from autopack_pipeline.domain.estimator import (
    TokenEstimate,
    TokenEstimator,
    complexity_default_budget,
    deliverable_kind,
    estimate_confidence,
    extract_deliverable_path,
    extract_doc_features,
    file_complexity_multiplier,
    normalize_deliverables,
    select_budget,
)
from autopack_pipeline.settings import seeds_directory

SEED_FILE = Path(__file__).resolve().parents[3] / "seeds" / "estimator_coefficients.yaml"
MODES = ["canonical", "autopack"]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    # Another test (or the shell) may point the loader elsewhere; these tests pin the repo file.
    monkeypatch.delenv("AUTOPACK_SEEDS_DIR", raising=False)


@pytest.fixture
def table() -> CoefficientTable:
    return load_coefficients(SEED_FILE)


def make(table: CoefficientTable, workspace: Path, mode: str = "canonical") -> TokenEstimator:
    return TokenEstimator(coefficients=table, workspace=workspace, category_lookup=mode)


def estimate_of(
    tokens: int, count: int = 1, category: str = "implementation", confidence: float = 0.9
) -> TokenEstimate:
    return TokenEstimate(tokens, count, category, "low", {}, confidence)


def seed_dict() -> dict:
    return yaml.safe_load(SEED_FILE.read_text(encoding="utf-8"))


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# -- the coefficient file --------------------------------------------------------------------------


def test_seed_file_metadata_and_key_numbers(table: CoefficientTable) -> None:
    assert (table.version, table.calibration_date, table.calibration_samples) == ("v5-step1", "2025-12-29", 25)
    assert table.source
    assert table.safety_margin == 1.3
    assert table.phase_overhead.fallback == 2000
    assert table.phase_overhead.table["implementation"] == {"low": 634, "medium": 1176, "high": 5000}
    assert table.phase_overhead.table["testing"] == {"low": 915, "medium": 2500, "high": 4000}
    assert sorted(table.phase_overhead.table) == sorted(
        ["implementation", "refactoring", "configuration", "integration", "testing", "documentation", "docs",
         "backend", "frontend", "database", "deployment"]
    )
    assert table.budget.cap == 64000
    assert table.budget.base_floor["docs"]["low"] == 4096
    assert table.budget.base_floor["tests"]["low"] == 6144


def test_to_dict_round_trips_through_yaml(table: CoefficientTable, tmp_path: Path) -> None:
    path = tmp_path / "copy.yaml"
    path.write_text(table.to_yaml(), encoding="utf-8")
    assert load_coefficients(path) == table
    assert CoefficientTable.from_mapping(table.to_dict()) == table


def test_seeds_dir_env_var_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = seed_dict()
    data["version"] = "from-env"
    write_yaml(tmp_path / "estimator_coefficients.yaml", data)
    monkeypatch.setenv("AUTOPACK_SEEDS_DIR", str(tmp_path))
    assert load_coefficients(coefficients_path_in(seeds_directory())).version == "from-env"


def test_default_path_is_the_repo_seed_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(SEED_FILE.parents[1])  # ./seeds of the working directory, as a checkout runs
    assert coefficients_path_in(seeds_directory()) == SEED_FILE
    assert load_coefficients(coefficients_path_in(seeds_directory())).version == "v5-step1"


def _set(data: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


@pytest.mark.parametrize(
    ("dotted", "value", "named_key"),
    [
        ("phase_overhead.table.testing.low", "lots", "phase_overhead.table.testing.low"),
        ("phase_overhead.table.testing.low", -5, "phase_overhead.table.testing.low"),
        ("phase_overhead.table.testing", {"low": 915, "meduim": 2500}, "phase_overhead.table"),
        ("marginal_cost.python.new", 2000.5, "marginal_cost.python.new"),
        ("safety_margin", 0, "safety_margin"),
        ("safety_margn", 1.3, "safety_margn"),
        ("budget.base_floor.testing", {"low": 6144}, "budget.base_floor"),
        ("file_complexity.code_lines.factors", [0.7, 1.0], "file_complexity.code_lines"),
        ("doc_sot_update.sot_file_names", ["CHANGELOG.md"], "doc_sot_update.sot_file_names"),
    ],
)
def test_malformed_file_names_the_file_and_the_key(
    tmp_path: Path, dotted: str, value: object, named_key: str
) -> None:
    data = seed_dict()
    _set(data, dotted, value)
    path = write_yaml(tmp_path / "bad.yaml", data)
    with pytest.raises(ValueError) as caught:
        load_coefficients(path)
    message = str(caught.value)
    assert str(path) in message
    assert named_key in message


def test_missing_key_is_named(tmp_path: Path) -> None:
    data = seed_dict()
    del data["budget"]["cap"]
    with pytest.raises(ValueError, match=r"budget\.cap"):
        load_coefficients(write_yaml(tmp_path / "bad.yaml", data))


@pytest.mark.parametrize("text", ["version: [unclosed\n", "- just\n- a list\n", ""])
def test_unparseable_or_non_mapping_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match="broken.yaml"):
        load_coefficients(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_coefficients(tmp_path / "nowhere.yaml")


def test_conflicting_aliases_raise(tmp_path: Path) -> None:
    data = seed_dict()
    data["phase_overhead"]["table"]["docs"]["medium"] = 2600  # documentation/medium stays 2500
    with pytest.raises(ValueError, match=r"'documentation' and 'docs' both mean 'docs'.*medium.*2500 vs 2600"):
        load_coefficients(write_yaml(tmp_path / "conflict.yaml", data))


def test_conflicting_tests_alias_raises() -> None:
    data = seed_dict()
    data["phase_overhead"]["table"]["tests"] = {"low": 1500}
    with pytest.raises(ValueError, match="both mean 'tests'"):
        CoefficientTable.from_mapping(data, origin="inline")


# -- new versions ----------------------------------------------------------------------------------


def test_overhead_multiplier_addresses_canonical_category(table: CoefficientTable, tmp_path: Path) -> None:
    updated = table.with_overhead_multipliers({("tests", "low"): 1.2}, new_version="v6")
    # 915 * 1.2 = 1098.0; rounding is nearest-integer, halves up.
    assert updated.phase_overhead.table["testing"] == {"low": 1098, "medium": 2500, "high": 4000}
    assert updated.version == "v6"
    assert table.phase_overhead.table["testing"]["low"] == 915  # the original is untouched
    assert updated.to_dict()["phase_overhead"]["table"]["testing"]["low"] == 1098
    got = make(updated, tmp_path).estimate(["tests/test_x.py"], "tests", "low")
    assert got.estimated_tokens == int((1098 + 1400) * 1.3)


def test_overhead_multiplier_rounds_halves_up(table: CoefficientTable) -> None:
    updated = table.with_overhead_multipliers({("implementation", "low"): 1.5, ("frontend", "high"): 0.5001}, "v6")
    assert updated.phase_overhead.table["implementation"]["low"] == 951  # 634 * 1.5 = 951.0
    assert updated.phase_overhead.table["frontend"]["high"] == 2751  # 5500 * 0.5001 = 2750.55


def test_overhead_multiplier_keeps_aliases_equal(table: CoefficientTable) -> None:
    updated = table.with_overhead_multipliers({("documentation", "medium"): 0.8}, "v6")
    assert updated.phase_overhead.table["docs"]["medium"] == 2000
    assert updated.phase_overhead.table["documentation"]["medium"] == 2000


def test_overhead_multiplier_creates_row_for_fallback_group(table: CoefficientTable) -> None:
    updated = table.with_overhead_multipliers({("maintenance", "low"): 0.5}, "v6", calibration_samples=40)
    assert updated.phase_overhead.table["maintenance"] == {"low": 1000}
    assert updated.calibration_samples == 40
    assert updated.overhead("maintenance", "medium") == 2000


@pytest.mark.parametrize(
    ("changes", "version"),
    [({("tests", "low"): 1.2}, "v5-step1"), ({("tests", "low"): 0}, "v6"), ({("tests", "huge"): 1.1}, "v6")],
)
def test_overhead_multiplier_rejects_bad_input(table: CoefficientTable, changes: dict, version: str) -> None:
    with pytest.raises(ValueError):
        table.with_overhead_multipliers(changes, version)


# -- worked examples of spec section 2.9 -----------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_implementation_low_one_new_py(table: CoefficientTable, tmp_path: Path, mode: str) -> None:
    got = make(table, tmp_path, mode).estimate(["src/feature.py"], "implementation", "low")
    assert got.estimated_tokens == 3424  # (634 + 2000) * 1.3
    assert got.breakdown == {"backend_new": 2000}
    assert select_budget(got, "low", table) == 8192


def test_implementation_low_before_v5(table: CoefficientTable, tmp_path: Path) -> None:
    pre_v5 = table.with_overhead_multipliers({("implementation", "low"): 2000 / 634}, "pre-v5")
    assert pre_v5.phase_overhead.table["implementation"]["low"] == 2000
    got = make(pre_v5, tmp_path).estimate(["src/feature.py"], "implementation", "low")
    assert got.estimated_tokens == 5200  # (2000 + 2000) * 1.3
    assert select_budget(got, "low", pre_v5) == 8192


@pytest.mark.parametrize(("mode", "expected"), [("autopack", 4420), ("canonical", 3009)])
def test_tests_low_one_new_test_file(table: CoefficientTable, tmp_path: Path, mode: str, expected: int) -> None:
    # autopack: ("tests", "low") has no row -> 2000; canonical: the `testing` row, 915.
    got = make(table, tmp_path, mode).estimate(["tests/test_feature.py"], "tests", "low")
    assert got.estimated_tokens == expected
    assert got.category == "tests"
    assert select_budget(got, "low", table) == 6144


@pytest.mark.parametrize("mode", MODES)
def test_docs_low_readme(table: CoefficientTable, tmp_path: Path, mode: str) -> None:
    got = make(table, tmp_path, mode).estimate(["README.md"], "docs", "low")
    assert got.estimated_tokens == 2600  # (1500 + 500) * 1.3
    assert got.category == "docs"
    assert select_budget(got, "low", table) == 4096


@pytest.mark.parametrize("mode", MODES)
def test_backend_medium_create(table: CoefficientTable, tmp_path: Path, mode: str) -> None:
    got = make(table, tmp_path, mode).estimate(["Create src/x.py"], "backend", "medium")
    assert got.estimated_tokens == 6500 == int(5000 * 1.3)
    assert got.confidence == 1.0


# -- category lookup modes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "category", "expected_tokens", "expected_category"),
    [
        ("canonical", "IMPLEMENT_FEATURE", 3424, "implementation"),
        ("autopack", "IMPLEMENT_FEATURE", 5200, "IMPLEMENT_FEATURE"),
        ("canonical", "Implementation", 3424, "implementation"),
        ("autopack", "Implementation", 5200, "Implementation"),  # Autopack's lookup is case-sensitive
        ("canonical", "testing", int((915 + 2000) * 1.3), "tests"),
        ("autopack", "testing", int((915 + 2000) * 1.3), "testing"),
    ],
)
def test_lookup_modes(
    table: CoefficientTable, tmp_path: Path, mode: str, category: str, expected_tokens: int, expected_category: str
) -> None:
    got = make(table, tmp_path, mode).estimate(["src/feature.py"], category, "low")
    assert (got.estimated_tokens, got.category) == (expected_tokens, expected_category)


def test_canonical_mode_normalises_complexity(table: CoefficientTable, tmp_path: Path) -> None:
    got = make(table, tmp_path).estimate(["src/feature.py"], "implementation", "Medium_Complexity")
    assert (got.complexity, got.estimated_tokens) == ("medium", int((1176 + 2000) * 1.3))
    parity = make(table, tmp_path, "autopack").estimate(["src/feature.py"], "implementation", "Medium_Complexity")
    assert parity.estimated_tokens == 5200


def test_unknown_lookup_mode_is_refused(table: CoefficientTable) -> None:
    with pytest.raises(ValueError, match="category_lookup"):
        TokenEstimator(table, category_lookup="fuzzy")


# -- estimator cases of spec section 8 -------------------------------------------------------------


@pytest.mark.parametrize("empty", [None, [], {}, {"tests": [], "docs": ["  "]}, "   "])
def test_no_deliverables_uses_complexity_default(table: CoefficientTable, tmp_path: Path, empty: object) -> None:
    got = make(table, tmp_path).estimate(empty, "implementation", "medium")
    assert (got.estimated_tokens, got.confidence, got.deliverable_count) == (12288, 0.5, 0)
    assert (got.category, got.complexity, got.breakdown) == ("implementation", "medium", {})


@pytest.mark.parametrize(
    ("complexity", "expected"), [("low", 8192), ("high", 16384), ("critical", 8192), ("x", 8192)]
)
def test_complexity_defaults(table: CoefficientTable, tmp_path: Path, complexity: str, expected: int) -> None:
    assert make(table, tmp_path, "autopack").estimate([], "implementation", complexity).estimated_tokens == expected
    assert complexity_default_budget(complexity, table) == expected


def test_complexity_default_budget_of_the_seed_file(table: CoefficientTable) -> None:
    budgets = [complexity_default_budget(c, table) for c in ("low", "medium", "high", "maintenance")]
    assert budgets == [8192, 12288, 16384, 8192]


def test_frontend_medium_new_tsx(table: CoefficientTable, tmp_path: Path) -> None:
    got = make(table, tmp_path).estimate(["src/App.tsx"], "frontend", "medium")
    assert got.estimated_tokens == int(6300 * 1.3) == 8190
    assert got.breakdown == {"frontend_new": 2800}


def test_frontend_category_prices_code_as_frontend(table: CoefficientTable, tmp_path: Path) -> None:
    got = make(table, tmp_path).estimate(["src/view_model.py"], "frontend", "low")
    assert got.estimated_tokens == int((2500 + 2800) * 1.3)


def test_nested_deliverables_are_counted(table: CoefficientTable, tmp_path: Path) -> None:
    nested = {"code": ["src/a.py"], "tests": [("tests/test_a.py",)]}
    got = make(table, tmp_path).estimate(nested, "implementation", "low")
    assert got.deliverable_count == 2
    assert got.estimated_tokens == int((634 + 2000 + 1400) * 1.3)


@pytest.mark.parametrize(
    ("tokens", "count", "complexity", "expected"),
    [
        (20000, 10, "medium", 32000),  # >= 8 deliverables: x1.6
        (20000, 8, "medium", 32000),
        (20000, 7, "medium", 24000),
        (5000, 2, "high", 16384),  # floor wins over 6000
        (60000, 1, "medium", 64000),  # cap
        (5000, 1, "low", 8192),
    ],
)
def test_select_budget_cases(
    table: CoefficientTable, tokens: int, count: int, complexity: str, expected: int
) -> None:
    assert select_budget(estimate_of(tokens, count), complexity, table) == expected


@pytest.mark.parametrize(
    ("category", "complexity", "expected"),
    [
        ("docs", "low", 4096),
        ("docs", "medium", 8192),
        ("tests", "low", 6144),
        ("doc_synthesis", "low", 8192),
        ("doc_sot_update", "low", 8192),
        ("implementation", "low", 8192),
        ("unknown", "low", 8192),
        ("documentation", "low", 4096),
        ("testing", "low", 6144),
        ("IMPLEMENT_FEATURE", "medium", 12288),
        ("backend", "high", 16384),
        ("backend", "maintenance", 8192),
    ],
)
def test_base_budgets(table: CoefficientTable, category: str, complexity: str, expected: int) -> None:
    assert select_budget(estimate_of(1000, category=category), complexity, table) == expected


def test_buffered_estimate_beats_floor(table: CoefficientTable) -> None:
    assert select_budget(estimate_of(5000, category="docs"), "low", table) == 6000


def test_low_confidence_margin(table: CoefficientTable) -> None:
    assert select_budget(estimate_of(10000, confidence=0.69), "low", table) == 14000
    assert select_budget(estimate_of(10000, confidence=0.7), "low", table) == 12000


@pytest.mark.parametrize(
    ("category", "complexity", "expected"),
    [("IMPLEMENT_FEATURE", "high", 19200), ("integration", "high", 19200), ("integration", "medium", 14400),
     ("implementation", "high", 16384)],
)
def test_high_risk_margin(table: CoefficientTable, category: str, complexity: str, expected: int) -> None:
    assert select_budget(estimate_of(12000, category=category), complexity, table) == expected


@pytest.mark.parametrize("category", ["doc_synthesis", "doc_sot_update"])
def test_doc_model_margin_is_assigned_not_maxed(table: CoefficientTable, category: str) -> None:
    # 10 deliverables and low confidence would ask for 1.6; the doc models set 2.2 outright.
    assert select_budget(estimate_of(10000, count=10, category=category, confidence=0.5), "low", table) == 22000


def test_doc_model_margin_overrides_a_larger_margin() -> None:
    data = seed_dict()
    data["budget"]["many_deliverables"]["margin"] = 3.0
    custom = CoefficientTable.from_mapping(data)
    assert select_budget(estimate_of(10000, count=10, category="implementation"), "low", custom) == 30000
    assert select_budget(estimate_of(10000, count=10, category="doc_synthesis"), "low", custom) == 22000


def test_docs_low_waste_scenario(table: CoefficientTable, tmp_path: Path) -> None:
    old = seed_dict()
    old["budget"]["base_floor"]["docs"]["low"] = 8192  # before BUILD-142
    old_table = CoefficientTable.from_mapping(old)
    got = make(table, tmp_path).estimate(["docs/setup.md"], "docs", "low")
    actual_output = 3000
    assert select_budget(got, "low", table) / actual_output < 1.5
    assert select_budget(got, "low", old_table) / actual_output > 2.0


def test_twelve_file_scenario(table: CoefficientTable, tmp_path: Path) -> None:
    files = [f"Create src/module_{i}.py" for i in range(12)]
    got = make(table, tmp_path).estimate(files, "implementation", "high")
    assert got.estimated_tokens == 37700  # (5000 + 12 * 2000) * 1.3
    budget = select_budget(got, "high", table)
    assert budget == max(16384, int(got.estimated_tokens * 1.6)) == 60320


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Create src/foo.py", "src/foo.py"),
        ("Modify src/foo.py to add X", "src/foo.py"),
        ("src/foo.py (new file)", "src/foo.py"),
        ("tests/unit/test_foo.py", "tests/unit/test_foo.py"),
        ("Update the login flow (backend)", "the login flow"),
        ("new file: Settings Page", "settings page"),
        ("Add logging", "logging"),
    ],
)
def test_path_extraction(text: str, expected: str) -> None:
    assert extract_deliverable_path(text) == expected


@pytest.mark.parametrize(
    ("path", "category", "kind"),
    [
        ("tests/test_api.py", "implementation", "test"),
        ("src/app/tests/helpers.py", "implementation", "test"),
        ("web/Button.spec.tsx", "frontend", "test"),
        ("src/contest.py", "implementation", "python"),
        ("docs/guide.txt", "implementation", "doc"),
        ("config/settings.yaml", "implementation", "config"),
        ("alembic/versions/001_init.py", "implementation", "config"),
        ("web/Page.svelte", "implementation", "frontend"),
        ("src/thing.go", "frontend", "frontend"),
        ("src/types.pyi", "backend", "python"),
        ("db/schema.sql", "database", "sql"),
        ("src/main.go", "backend", "default"),
    ],
)
def test_deliverable_kind(path: str, category: str, kind: str) -> None:
    assert deliverable_kind(path, category) == kind


@pytest.mark.parametrize(
    ("deliverable", "cost", "label", "overhead"),
    [
        ("tests/test_api.py", 1400, "test_new", 634),
        ("docs/api_notes.txt", 500, "doc_new", 1500),  # a pure-doc phase is priced as docs/low
        ("config/app.toml", 1000, "config_new", 634),
        ("web/Page.jsx", 2800, "frontend_new", 634),
        ("db/schema.sql", 1500, "backend_new", 634),
        ("src/main.go", 2000, "backend_new", 634),
    ],
)
def test_marginal_costs_and_labels(
    table: CoefficientTable, tmp_path: Path, deliverable: str, cost: int, label: str, overhead: int
) -> None:
    got = make(table, tmp_path).estimate([deliverable], "implementation", "low")
    assert got.breakdown == {label: cost}
    assert got.estimated_tokens == int((overhead + cost) * 1.3)


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _small_file_lines() -> list[str]:
    return ["# a comment", ""] * 30 + [f"value_{i} = {i}" for i in range(10)]


def _large_file_lines() -> list[str]:
    imports = [f"import module_{i}" for i in range(20)]
    body = [" " * 16 + f"total += {i}" for i in range(600)]
    return imports + ["def run():"] + body


def test_complexity_multiplier_small_and_large(table: CoefficientTable, tmp_path: Path) -> None:
    small = _write(tmp_path / "src" / "small.py", _small_file_lines())
    large = _write(tmp_path / "src" / "large.py", _large_file_lines())
    normal = _write(tmp_path / "src" / "normal.py", [f"import m{i}" for i in range(10)] + ["        x = 1"] * 90)
    assert file_complexity_multiplier(small, table) == pytest.approx(0.7 * 0.9 * 0.9)  # comments don't count
    assert file_complexity_multiplier(small, table) < 1.0
    assert file_complexity_multiplier(large, table) == 2.0  # 1.5 * 1.2 * 1.2, clamped
    assert file_complexity_multiplier(normal, table) == pytest.approx(1.0)
    assert file_complexity_multiplier(tmp_path / "src", table) == 1.0  # unreadable -> neutral


def test_existing_files_are_modifications_priced_by_complexity(table: CoefficientTable, tmp_path: Path) -> None:
    _write(tmp_path / "src" / "small.py", _small_file_lines())
    _write(tmp_path / "src" / "large.py", _large_file_lines())
    est = make(table, tmp_path)
    small = est.estimate(["src/small.py"], "implementation", "low")
    assert small.breakdown == {"backend_modify": 396}  # int(700 * 0.567)
    large = est.estimate(["Update src/large.py"], "implementation", "low")
    assert large.breakdown == {"backend_modify": 1400}  # int(700 * 2.0)
    assert large.estimated_tokens == int((634 + 1400) * 1.3)
    # a verb meaning "new" wins over existence, and no multiplier applies to new files
    assert est.estimate(["Create src/large.py"], "implementation", "low").breakdown == {"backend_new": 2000}


def test_complexity_cache_follows_file_changes(table: CoefficientTable, tmp_path: Path) -> None:
    measurer = FileMeasurer()
    path = _write(tmp_path / "grow.py", _small_file_lines())
    assert file_complexity_multiplier(path, table, measurer) < 1.0
    _write(path, _large_file_lines())
    stamp = path.stat().st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(stamp, stamp))
    assert file_complexity_multiplier(path, table, measurer) == 2.0


class CountingReader:
    """Reads the disk like the default reader, counting the files it was asked for."""

    def __init__(self) -> None:
        self.reads: list[Path] = []

    def __call__(self, path: Path) -> str:
        self.reads.append(path)
        return read_source(path)


def test_a_measurer_reads_an_unchanged_file_once_and_belongs_to_its_estimator(
    table: CoefficientTable, tmp_path: Path
) -> None:
    _write(tmp_path / "src" / "small.py", _small_file_lines())
    reader = CountingReader()
    estimator = TokenEstimator(table, workspace=tmp_path, file_measurer=FileMeasurer(reader))
    for _ in range(3):
        assert estimator.estimate(["src/small.py"], "implementation", "low").breakdown == {"backend_modify": 396}
    assert reader.reads == [tmp_path / "src" / "small.py"]
    # no process-wide state: another estimator measures the file with its own measurer
    other = make(table, tmp_path)
    assert other.file_measurer is not estimator.file_measurer
    assert other.estimate(["src/small.py"], "implementation", "low").breakdown == {"backend_modify": 396}
    assert len(reader.reads) == 1
    estimator.file_measurer.clear()
    estimator.estimate(["src/small.py"], "implementation", "low")
    assert len(reader.reads) == 2


def test_the_measures_are_a_pure_rule_over_the_text() -> None:
    text = "# comment\n\nimport os\nfrom a import b\ndef f():\n        return 1\n   # indented comment\n"
    assert measure_source(text) == FileMeasures(code_lines=4, import_lines=2, max_indent=8)
    assert measure_source("") == FileMeasures(0, 0, 0)


def test_a_measurer_fetches_text_through_its_reader(table: CoefficientTable, tmp_path: Path) -> None:
    path = _write(tmp_path / "stub.py", ["x = 1"])  # on disk only for its size and mtime
    measurer = FileMeasurer(lambda _path: "\n".join(_large_file_lines()))
    assert file_complexity_multiplier(path, table, measurer) == 2.0
    assert file_complexity_multiplier(path, table) < 1.0  # the disk's own text: one short line


def test_workspace_defaults_to_cwd_at_call_time(
    table: CoefficientTable, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimator = TokenEstimator(table)
    _write(tmp_path / "src" / "existing.py", _small_file_lines())
    monkeypatch.chdir(tmp_path)
    assert estimator.estimate(["src/existing.py"], "implementation", "low").breakdown == {"backend_modify": 396}
    monkeypatch.chdir(tmp_path / "src")
    assert estimator.estimate(["src/existing.py"], "implementation", "low").breakdown == {"backend_new": 2000}


@pytest.mark.parametrize(
    ("deliverables", "expected"),
    [
        (["Create src/foo.py"], 1.0),
        (["examples/x/foo.py"], 0.8),
        (["Add logging"], 0.7),
        (["The login flow"], 0.5),
        (["Create src/foo.py", "The login flow"], 0.75),
    ],
)
def test_confidence(table: CoefficientTable, tmp_path: Path, deliverables: list[str], expected: float) -> None:
    assert estimate_confidence(deliverables) == pytest.approx(expected)
    assert make(table, tmp_path).estimate(deliverables, "implementation", "low").confidence == pytest.approx(expected)


# -- documentation models --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("deliverables", "scope", "description", "expected", "breakdown"),
    [
        # investigate(none) 2500 + api 1200 + examples 1400 + writing 2 * 850 = 6800 -> 8840
        (["docs/API_REFERENCE.md", "docs/EXAMPLES.md"], None, "", 8840, [2500, 1200, 1400, 1700, 0]),
        # investigate(some) 2000 + api 1200 + writing 4250 + coordination int(0.12 * 4250) = 510 -> 7960 -> 10348
        (["docs/api.md", "docs/a.md", "docs/b.md", "docs/c.md", "docs/d.md"], ["src/a.py"] * 3, "",
         10348, [2000, 1200, 0, 4250, 510]),
        # examples + research: investigate(strong) 1500 + examples 1400 + writing 850 = 3750 -> 4875
        (["docs/EXAMPLES.md"], [f"src/m{i}.py" for i in range(11)], "Write comprehensive docs",
         4875, [1500, 0, 1400, 850, 0]),
    ],
)
def test_doc_synthesis_route(
    table: CoefficientTable, tmp_path: Path, deliverables: list[str], scope: list[str] | None,
    description: str, expected: int, breakdown: list[int],
) -> None:
    got = make(table, tmp_path).estimate(deliverables, "documentation", "low", scope, description)
    assert (got.estimated_tokens, got.category, got.confidence) == (expected, "doc_synthesis", 0.75)
    assert list(got.breakdown.values()) == breakdown
    assert select_budget(got, "low", table) == max(8192, int(expected * 2.2))


def test_examples_alone_is_plain_doc_writing(table: CoefficientTable, tmp_path: Path) -> None:
    got = make(table, tmp_path).estimate(["docs/EXAMPLES.md"], "docs", "low")
    assert (got.estimated_tokens, got.category) == (2600, "docs")
    assert got.doc_features["examples_required"] is True


@pytest.mark.parametrize(
    ("deliverables", "scope", "expected", "sot_name"),
    [
        # context(none) 3000 + write 900 + consistency 135 = 4035 -> 5245
        (["BUILD_LOG.md"], None, 5245, "build_log.md"),
        # SOT beats synthesis: context(strong) 1500 + write 1800 + consistency 270 = 3570 -> 4641
        (["docs\\CHANGELOG.md", "docs/API_REFERENCE.md"], [f"p{i}" for i in range(12)], 4641, "changelog.md"),
    ],
)
def test_sot_route(
    table: CoefficientTable, tmp_path: Path, deliverables: list[str], scope: list[str] | None,
    expected: int, sot_name: str,
) -> None:
    got = make(table, tmp_path).estimate(deliverables, "implementation", "low", scope)
    assert (got.estimated_tokens, got.category, got.confidence) == (expected, "doc_sot_update", 0.70)
    assert got.doc_features["is_sot_file"] is True
    assert got.doc_features["sot_file_name"] == sot_name
    assert got.doc_features["sot_entry_count_hint"] == len(deliverables)
    assert select_budget(got, "low", table) == int(expected * 2.2)


def test_sot_file_in_mixed_phase_uses_overhead_model(table: CoefficientTable, tmp_path: Path) -> None:
    got = make(table, tmp_path).estimate(["CHANGELOG.md", "src/x.py"], "implementation", "low")
    assert (got.estimated_tokens, got.category) == (4074, "implementation")  # (634 + 500 + 2000) * 1.3
    assert got.doc_features["is_sot_file"] is False


@pytest.mark.parametrize(("mode", "category"), [("canonical", "docs"), ("autopack", "documentation")])
def test_pure_doc_phase_becomes_documentation(
    table: CoefficientTable, tmp_path: Path, mode: str, category: str
) -> None:
    got = make(table, tmp_path, mode).estimate(["docs/setup.md"], "implementation", "medium", ["a", "b"])
    assert (got.category, got.estimated_tokens) == (category, int((2500 + 500) * 1.3))
    assert got.doc_features["context_quality"] == "some"


def test_doc_features() -> None:
    features = extract_doc_features(["docs/USER_GUIDE.md"], "Document the REST API from scratch")
    assert features == {
        "api_reference_required": True,
        "examples_required": False,
        "research_required": True,
        "usage_guide_required": False,
    }
    # research looks at the description only
    assert extract_doc_features(["docs/investigate.md"], "")["research_required"] is False


# -- deliverable normalisation and module hygiene --------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (None, []),
        ("  src/a.py ", ["src/a.py"]),
        (["a", " ", ["b", ("c",)]], ["a", "b", "c"]),
        ({"tests": ["t.py"], "docs": {"x": "d.md"}}, ["t.py", "d.md"]),
        ({"one"}, ["one"]),
        ([42, 3.5, None], ["42", "3.5"]),
    ],
)
def test_normalize_deliverables(raw: object, expected: list[str]) -> None:
    assert normalize_deliverables(raw) == expected


def test_token_estimate_is_frozen() -> None:
    with pytest.raises(AttributeError):
        estimate_of(1).estimated_tokens = 2  # type: ignore[misc]


@pytest.mark.parametrize("module", [estimator_module, coefficients_module, deliverables_module,
                                    coefficient_table_module, coefficient_blocks_module])
def test_domain_modules_import_no_infrastructure(module: object) -> None:
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        for name in (
            [alias.name for alias in node.names] if isinstance(node, ast.Import)
            else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        )
    }
    assert not imported & {"dagster", "sqlalchemy", "requests", "httpx", "anthropic", "socket", "urllib"}
