"""The daily drift schedule: a tick requests the checks-only job, whose checks flag a shifted group."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import numpy as np

from autopack_pipeline.defs.definitions import defs

DRIFT_CHECKS = {"log_ratio_psi_drift", "log_ratio_ks_drift", "underestimation_cusum_drift"}


def _rows(start: datetime, n: int, log_ratio_mean: float, seed: int) -> list[tuple[datetime, int, int]]:
    rng = np.random.default_rng(seed)
    predicted = rng.integers(2_000, 8_000, n)
    actual = np.round(predicted * np.exp(rng.normal(log_ratio_mean, 0.2, n))).astype(int)
    return [(start + timedelta(hours=3 * i), int(p), int(a)) for i, (p, a) in enumerate(zip(predicted, actual))]


def test_schedule_is_daily_and_targets_only_the_drift_checks():
    schedule = defs.resolve_schedule_def("drift_check_schedule")
    assert schedule.cron_schedule == "0 6 * * *" and schedule.execution_timezone == "UTC"
    assert schedule.job_name == "drift_check_job"
    job = defs.resolve_job_def("drift_check_job")
    assert [node.name for node in job.nodes] == ["estimator_drift"]
    assert job.tags["autopack/telemetry-db"] == "read"


def test_schedule_tick_runs_the_drift_checks_and_they_flag_a_shift(sqlite_url, write_events):
    now = datetime.now(timezone.utc)
    write_events(_rows(now - timedelta(days=20), 60, -0.1, seed=1), category="implementation", complexity="medium",
                 phase_per_event=True)
    write_events(_rows(now - timedelta(days=4), 30, 0.45, seed=2), category="implementation", complexity="medium",
                 run_id="recent", phase_per_event=True)
    write_events(_rows(now - timedelta(days=3), 10, 0.0, seed=3), category="tests", complexity="low", run_id="few",
                 phase_per_event=True)

    with dg.instance_for_test() as instance:
        schedule = defs.resolve_schedule_def("drift_check_schedule")
        tick = schedule.evaluate_tick(
            dg.build_schedule_context(instance=instance, scheduled_execution_time=datetime(2026, 11, 25, 6, tzinfo=timezone.utc))
        )
        (request,) = tick.run_requests
        assert request.tags["dagster/schedule_name"] == "drift_check_schedule"

        result = defs.resolve_job_def("drift_check_job").execute_in_process(instance=instance, tags=request.tags)
        assert result.success  # WARN results never fail the run
        evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert set(evaluations) == DRIFT_CHECKS
        for evaluation in evaluations.values():
            assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
            assert "implementation/medium" in evaluation.description
            assert evaluation.metadata["groups_compared"].value == 1
            assert evaluation.metadata["groups_skipped"].value == 1  # tests/low has too few events
            assert evaluation.metadata["threshold_min_events_per_window"].value == 30
        psi = evaluations["log_ratio_psi_drift"].metadata
        assert psi["observed_max_psi"].value > psi["threshold_psi"].value == 0.25
        cusum = evaluations["underestimation_cusum_drift"].metadata
        assert cusum["observed_max_cusum"].value > cusum["threshold_cusum_h"].value
        ks = evaluations["log_ratio_ks_drift"].metadata
        assert ks["observed_min_ks_pvalue"].value < ks["threshold_ks_alpha"].value


def test_drift_checks_that_compared_nothing_say_so_and_do_not_pass(sqlite_url, write_events):
    write_events(_rows(datetime.now(timezone.utc) - timedelta(days=1), 8, 0.0, seed=4))
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("drift_check_job").execute_in_process(instance=instance)
        evaluations = result.get_asset_check_evaluations()
        assert len(evaluations) == 3 and not any(e.passed for e in evaluations)
        assert all(e.severity == dg.AssetCheckSeverity.WARN for e in evaluations)
        assert all(e.description.startswith("could not evaluate") and "no group has 30 events" in e.description
                   for e in evaluations)
