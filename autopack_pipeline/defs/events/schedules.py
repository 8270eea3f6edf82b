"""The daily drift check: PSI, KS and CUSUM of the estimator's error, as asset checks on raw_events."""

import dagster as dg

from autopack_pipeline.defs.events.jobs import drift_check_job

drift_check_schedule = dg.ScheduleDefinition(
    name="drift_check_schedule",
    job=drift_check_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day at 06:00 UTC: drift of log(actual/predicted) per group, last 7 days against before.",
)
