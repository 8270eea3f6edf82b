"""Phase sets from seeds/: Autopack's ten phases and the template groups."""

import pytest

from autopack_pipeline.collection.phases import (
    PhaseSetError,
    default_phase_set,
    load_phase_file,
    load_templates,
    phases_from_templates,
)
from autopack_pipeline.settings import REPO_ROOT

SEEDS = REPO_ROOT / "seeds"


def test_autopack_seed_run_has_its_ten_phases_and_mix():
    run, phases = load_phase_file(SEEDS / "telemetry_collection_phases.yaml")
    assert run.run_id == "telemetry-collection-v4"
    assert [p.phase_id for p in phases][:2] == ["telemetry-p1-string-util", "telemetry-p2-number-util"]
    mix = {}
    for p in phases:
        mix[(p.category, p.complexity)] = mix.get((p.category, p.complexity), 0) + 1
    assert mix == {("implementation", "low"): 2, ("implementation", "medium"): 4, ("tests", "low"): 1,
                   ("tests", "medium"): 2, ("docs", "low"): 1}
    assert sum(len(p.deliverables) == 2 for p in phases) == 1
    assert all(p.max_builder_attempts == 3 and p.scope_paths == ["examples/telemetry_utils/"] for p in phases)


def test_templates_cycle_and_number_their_paths():
    phases = phases_from_templates(SEEDS, "testing", "medium", 3)
    assert [p.phase_id for p in phases] == ["tpl-tests-medium-001", "tpl-tests-medium-002", "tpl-tests-medium-003"]
    assert phases[0].goal == phases[2].goal != phases[1].goal
    assert phases[2].deliverables[0].startswith("examples/generated/tests_medium_3/")


def test_unknown_group_names_the_groups_that_exist():
    with pytest.raises(PhaseSetError, match="templates exist for: .*docs/low"):
        phases_from_templates(SEEDS, "frontend", "low", 2)


def test_default_set_adds_template_phases_for_every_group():
    groups = load_templates(SEEDS)
    _, phases = default_phase_set(SEEDS, 2)
    assert len(phases) == 10 + 2 * len(groups)
    assert len({p.phase_id for p in phases}) == len(phases)
    assert [p.phase_index for p in phases] == list(range(len(phases)))


def test_bad_phase_file_is_reported_with_its_path(tmp_path):
    bad = tmp_path / "phases.yaml"
    bad.write_text("phases:\n  - phase_id: x\n")
    with pytest.raises(PhaseSetError, match=str(bad)):
        load_phase_file(bad)
    bad.write_text("phases: [unclosed")
    with pytest.raises(PhaseSetError, match="not valid YAML"):
        load_phase_file(bad)


def test_unknown_complexity_in_a_phases_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "phases.yaml"
    path.write_text("phases:\n  - {phase_id: a, name: a, goal: g, category: tests, complexity: LOW, deliverables: [x]}\n"
                    "  - {phase_id: b, name: b, goal: g, category: tests, complexity: extreme, deliverables: [y]}\n")
    with pytest.raises(PhaseSetError) as caught:
        load_phase_file(path)
    message = str(caught.value)
    assert "extreme" in message and "phase 2" in message and str(path) in message and "\n" not in message


def test_targeted_phase_count_has_an_upper_bound():
    with pytest.raises(PhaseSetError, match="1 to 10000"):
        phases_from_templates(SEEDS, "tests", "low", 10_001)
    assert len(phases_from_templates(SEEDS, "tests", "low", 3)) == 3
