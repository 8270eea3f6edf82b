"""Auto-execution of generated tasks on a real SQLite database with the simulated Builder, and the
task-generation settings that govern it."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from autopack_pipeline.llm.backends import LLMCallError, LLMRequest, LLMResponse
from autopack_pipeline.llm.factory import make_backend
from autopack_pipeline.services.tasks_execution import (
    execute_pending_tasks,
    execute_task,
    group_sample_counts,
    phases_for_shortfall,
    template_group_for,
)
from autopack_pipeline.settings import SettingsError, load_settings
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import read_events
from autopack_pipeline.storage.migrate import upgrade_database
from autopack_pipeline.storage.models import Run
from autopack_pipeline.storage.tasks import get_task, save_generated_tasks
from autopack_pipeline_tests.oracle.samples import clean_samples


@pytest.fixture
def engine(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


def _collect_task(task_id: str, category: str = "docs", complexity: str = "low", threshold: int = 3, **fields) -> dict:
    evidence = {"category": category, "complexity": complexity, "observed": 0, "threshold": threshold}
    return {"task_id": task_id, "title": f"Collect samples for {category}/{complexity}", "priority": "medium",
            "kind": "collect_samples", "requires_approval": False, "evidence": evidence, **fields}


def _runs(engine) -> list[str]:
    with Session(engine) as session:
        return list(session.scalars(select(Run.id).order_by(Run.id)))


class _DownBackend:
    """Every call fails, as an API outage would."""

    name = "down"

    def complete(self, request: LLMRequest) -> LLMResponse:
        raise LLMCallError("service unavailable")


def test_a_collect_samples_task_runs_a_targeted_collection_and_completes(engine):
    settings = load_settings()
    backend = make_backend(settings, "simulated")
    save_generated_tasks(engine, [_collect_task("TASK-DOCS")])
    assert group_sample_counts(engine, "docs", "low") == (0, 0)

    # The simulated Builder loses some phases (truncation, tiny answers), so an attempt may fall short
    # and be retried; each attempt is its own run, and the task ends completed within its retries.
    results = []
    while len(results) < 3 and (not results or results[-1].outcome == "retry"):
        (result,) = execute_pending_tasks(engine, settings, backend, limit=5)
        results.append(result)
    assert results[-1].outcome == "completed", [r.message for r in results]
    assert [r.run_id for r in results] == [f"TASK-DOCS-attempt-{n}" for n in range(1, len(results) + 1)]
    assert results[0].phases_requested == 4  # a shortfall of 3 at the default 75% yield
    assert results[0].clean_samples_before == 0 and results[-1].clean_samples_after >= 3
    task = get_task(engine, "TASK-DOCS")
    assert task["status"] == "completed" and task["completed_at"] is not None
    assert task["executed_in_run_id"] == results[-1].run_id and task["retry_count"] == len(results) - 1
    # The new samples are in the database, in the task's group, from the task's runs.
    samples = clean_samples(read_events(engine))
    assert set(samples["run_id"]) == set(_runs(engine)) == {r.run_id for r in results}
    assert set(zip(samples["category"], samples["complexity"])) == {("docs", "low")}
    assert len(samples) == results[-1].clean_samples_after


def test_a_group_recorded_under_the_estimators_category_is_collected_from_matching_templates(engine):
    settings = load_settings()
    assert template_group_for(settings, "doc_synthesis", "medium") == ("docs", "medium")
    save_generated_tasks(engine, [_collect_task("TASK-SYN", category="doc_synthesis", complexity="medium",
                                                threshold=1)])
    result = execute_task(engine, settings, make_backend(settings, "simulated"), "TASK-SYN")
    assert result.outcome == "completed" and result.clean_samples_after >= 1
    samples = clean_samples(read_events(engine))
    assert set(zip(samples["category"], samples["complexity"])) == {("doc_synthesis", "medium")}


def test_auto_execute_off_runs_nothing_and_says_so(engine, monkeypatch):
    monkeypatch.setenv("AUTOPACK_TASK_GENERATION_AUTO_EXECUTE", "false")
    settings = load_settings()
    save_generated_tasks(engine, [_collect_task("TASK-DOCS")])
    results = execute_pending_tasks(engine, settings, None)
    assert [(r.task_id, r.outcome) for r in results] == [("TASK-DOCS", "auto_execute_off")]
    assert "AUTOPACK_TASK_GENERATION_AUTO_EXECUTE=false" in results[0].message
    assert execute_task(engine, settings, None, "TASK-DOCS").outcome == "auto_execute_off"
    assert get_task(engine, "TASK-DOCS")["status"] == "pending" and _runs(engine) == []


def test_tasks_that_need_a_person_are_never_run(engine):
    settings = load_settings()
    save_generated_tasks(engine, [
        {"task_id": "TASK-COEF", "title": "Review PHASE_OVERHEAD", "kind": "review_coefficients",
         "requires_approval": False, "evidence": {"category": "docs", "complexity": "low", "threshold": 3}},
        _collect_task("TASK-WAIT", requires_approval=True),
    ])
    results = {r.task_id: r for r in execute_pending_tasks(engine, settings, _DownBackend())}
    assert {k: r.outcome for k, r in results.items()} == {"TASK-COEF": "needs_person", "TASK-WAIT": "needs_person"}
    assert "never applied by a task" in results["TASK-COEF"].message
    assert "tasks approve TASK-WAIT" in results["TASK-WAIT"].message
    # Even approved, a coefficient review stays a person's job.
    assert execute_task(engine, settings, _DownBackend(), "TASK-COEF").outcome == "needs_person"
    assert {get_task(engine, t)["status"] for t in results} == {"pending"} and _runs(engine) == []


def test_a_failed_collection_is_retried_then_failed_with_the_reason(engine):
    settings = load_settings()
    save_generated_tasks(engine, [_collect_task("TASK-DOCS", max_retries=2)])
    first = execute_task(engine, settings, _DownBackend(), "TASK-DOCS")
    assert first.outcome == "retry" and first.clean_samples_after == 0
    assert "docs/low has 0 clean samples, 3 needed" in first.message
    task = get_task(engine, "TASK-DOCS")
    assert (task["status"], task["retry_count"], task["failure_runs"]) == ("pending", 1, ["TASK-DOCS-attempt-1"])
    second = execute_task(engine, settings, _DownBackend(), "TASK-DOCS")
    assert second.outcome == "failed" and second.run_id == "TASK-DOCS-attempt-2"
    task = get_task(engine, "TASK-DOCS")
    assert task["status"] == "failed" and "gave up after 2 attempts" in task["failure_reason"]
    assert execute_task(engine, settings, _DownBackend(), "TASK-DOCS").outcome == "not_pending"


def test_a_group_without_templates_fails_at_once(engine):
    settings = load_settings()
    save_generated_tasks(engine, [_collect_task("TASK-HIGH", complexity="high")])
    result = execute_task(engine, settings, _DownBackend(), "TASK-HIGH")
    assert result.outcome == "failed" and "no phase templates for docs/high" in result.message
    task = get_task(engine, "TASK-HIGH")
    assert task["status"] == "failed" and task["retry_count"] == 0


def test_a_group_already_at_its_threshold_completes_without_a_run(engine):
    settings = load_settings()
    backend = make_backend(settings, "simulated")
    save_generated_tasks(engine, [_collect_task("TASK-A"), _collect_task("TASK-B", threshold=1)])
    assert execute_task(engine, settings, backend, "TASK-A").outcome == "completed"
    runs = _runs(engine)
    result = execute_task(engine, settings, backend, "TASK-B")
    assert result.outcome == "completed" and "already has" in result.message and result.run_id is None
    assert _runs(engine) == runs


def test_bad_evidence_and_unknown_ids(engine):
    settings = load_settings()
    save_generated_tasks(engine, [_collect_task("TASK-BAD", threshold=0)])
    assert execute_task(engine, settings, _DownBackend(), "TASK-BAD").outcome == "failed"
    assert get_task(engine, "TASK-BAD")["status"] == "failed"
    assert execute_task(engine, settings, _DownBackend(), "TASK-NOPE").outcome == "not_found"


def test_limit_caps_the_tasks_run_most_urgent_first(engine):
    settings = load_settings()
    save_generated_tasks(engine, [_collect_task("TASK-LOW", priority="low"),
                                  _collect_task("TASK-HIGH", priority="high", category="tests")])
    results = execute_pending_tasks(engine, settings, _DownBackend(), limit=1)
    assert [r.task_id for r in results] == ["TASK-HIGH"]
    assert get_task(engine, "TASK-LOW")["retry_count"] == 0


def test_phases_for_shortfall_scale_with_the_groups_yield():
    assert phases_for_shortfall(3, 0, 0) == 4  # no history: 75%
    assert phases_for_shortfall(2, 10, 10) == 3  # never lost a phase: still assume 80%
    assert phases_for_shortfall(2, 1, 2) == 4  # half the phases became samples
    assert phases_for_shortfall(2, 0, 10) == 8  # at worst 4x the shortfall
    assert phases_for_shortfall(1, 1, 1) >= 1


# --- settings: Autopack's variables, aliases and validation (spec §7.1) -----------------------------

TASK_VARIABLES = ("AUTOPACK_TASK_GENERATION_ENABLED", "TASK_GENERATION_ENABLED",
                  "AUTOPACK_TASK_GENERATION_AUTO_EXECUTE", "TASK_GENERATION_AUTO_EXECUTE",
                  "AUTOPACK_TASK_GENERATION_MAX_TASKS", "TASK_GENERATION_MAX_TASKS_PER_RUN",
                  "AUTOPACK_TASK_GENERATION_MIN_CONFIDENCE", "TASK_GENERATION_MIN_CONFIDENCE")


@pytest.fixture
def clean_env(monkeypatch):
    for name in TASK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_are_autopacks(clean_env):
    s = load_settings()
    assert (s.task_generation_enabled, s.task_generation_auto_execute, s.task_generation_max_tasks,
            s.task_generation_min_confidence) == (True, True, 10, 0.7)


@pytest.mark.parametrize(("variable", "value", "field", "expected"), [
    ("AUTOPACK_TASK_GENERATION_ENABLED", "false", "task_generation_enabled", False),
    ("TASK_GENERATION_ENABLED", "0", "task_generation_enabled", False),
    ("AUTOPACK_TASK_GENERATION_AUTO_EXECUTE", "no", "task_generation_auto_execute", False),
    ("TASK_GENERATION_AUTO_EXECUTE", "off", "task_generation_auto_execute", False),
    ("AUTOPACK_TASK_GENERATION_MAX_TASKS", "0", "task_generation_max_tasks", 0),
    ("TASK_GENERATION_MAX_TASKS_PER_RUN", "25", "task_generation_max_tasks", 25),
    ("AUTOPACK_TASK_GENERATION_MIN_CONFIDENCE", "1", "task_generation_min_confidence", 1.0),
    ("TASK_GENERATION_MIN_CONFIDENCE", "0.0", "task_generation_min_confidence", 0.0),
])
def test_every_variable_and_alias_is_read(clean_env, variable, value, field, expected):
    clean_env.setenv(variable, value)
    assert getattr(load_settings(), field) == expected


def test_the_autopack_name_wins_over_the_alias(clean_env):
    clean_env.setenv("AUTOPACK_TASK_GENERATION_MAX_TASKS", "3")
    clean_env.setenv("TASK_GENERATION_MAX_TASKS_PER_RUN", "7")
    assert load_settings().task_generation_max_tasks == 3


@pytest.mark.parametrize(("variable", "value", "problem"), [
    ("AUTOPACK_TASK_GENERATION_ENABLED", "maybe", "valid boolean"),
    ("TASK_GENERATION_ENABLED", "2", "valid boolean"),
    ("AUTOPACK_TASK_GENERATION_AUTO_EXECUTE", "sometimes", "valid boolean"),
    ("TASK_GENERATION_AUTO_EXECUTE", "", "valid boolean"),
    ("AUTOPACK_TASK_GENERATION_MAX_TASKS", "-1", "greater than or equal to 0"),
    ("TASK_GENERATION_MAX_TASKS_PER_RUN", "2.5", "valid integer"),
    ("AUTOPACK_TASK_GENERATION_MIN_CONFIDENCE", "1.5", "less than or equal to 1"),
    ("TASK_GENERATION_MIN_CONFIDENCE", "-0.1", "greater than or equal to 0"),
    ("AUTOPACK_TASK_GENERATION_MIN_CONFIDENCE", "nan", "finite number"),
])
def test_invalid_values_name_the_variable_that_was_set(clean_env, variable, value, problem):
    clean_env.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"invalid setting: {variable}: ") and problem in message
    assert f"(got {value!r})" in message


def test_a_secret_is_never_echoed(clean_env):
    clean_env.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    clean_env.setenv("AUTOPACK_TASK_GENERATION_MAX_TASKS", "many")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "sk-ant-secret" not in str(caught.value)


def test_group_counts_through_the_columnar_copy_equal_the_reference_on_a_mixed_history(engine):
    from autopack_pipeline.domain.categories import normalise_category, normalise_complexity
    from autopack_pipeline.synth import bulk_load
    from autopack_pipeline_tests.oracle.samples import as_events_frame, canonical_labels

    bulk_load(engine, 3_000, runs=6, seed=5)  # every category and complexity, legacy spellings included
    events = as_events_frame(read_events(engine))
    labels = pd.DataFrame({"category": canonical_labels(events["category"], normalise_category),
                           "complexity": canonical_labels(events["complexity"], normalise_complexity)})
    checked = 0
    for (category, complexity), rows in labels.groupby(["category", "complexity"]):
        group = events[labels.index.isin(rows.index)]
        expected = (len(clean_samples(group)), len(group[["run_id", "phase_id"]].drop_duplicates()))
        assert group_sample_counts(engine, category, complexity) == expected, (category, complexity)
        checked += 1
    assert checked >= 10
