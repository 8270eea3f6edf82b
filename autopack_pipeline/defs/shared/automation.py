"""Declarative automation of the metric assets: recompute when new events arrive, and once a day.

The calibration gate and task generation stay sensors (sensors.py): their skip reasons say which
number stopped them, which an automation condition cannot. Conditions here only answer "is the
figure out of date", which is what declarative automation is for.
"""

from datetime import timedelta

import dagster as dg

from autopack_pipeline.defs.shared.run_tags import READS

# Just after midnight UTC the rolling windows move on by a day even when no event arrived.
NEW_DAY_CRON = "5 0 * * *"

# Both the current day and the one before: events written just before midnight often reach
# raw_events just after it, and yesterday's figures must still take them in.
_LAST_TWO_DAYS = dg.AutomationCondition.in_latest_time_window(lookback_delta=timedelta(days=2))

# New events (raw_events materialised again) whose data-quality checks passed: the per-day figures
# of the last two days are recomputed; older days change only by a backfill.
ON_NEW_EVENTS_PER_DAY = dg.AutomationCondition.eager().replace(
    "in_latest_time_window", _LAST_TWO_DAYS
) & dg.AutomationCondition.all_deps_blocking_checks_passed()

# The rolling-window assets: on new (checked) events, and once a day so the window moves on.
ON_NEW_EVENTS_OR_NEW_DAY = (
    dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
) | (dg.AutomationCondition.cron_tick_passed(NEW_DAY_CRON, "UTC") & ~dg.AutomationCondition.in_progress())


def metrics_automation_sensor(target: dg.AssetSelection) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the conditions above; running by default, as the other sensors."""
    return dg.AutomationConditionSensorDefinition(
        name="metrics_automation_sensor",
        target=target,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        run_tags=READS,  # the metric assets read the columnar copy; they never write the telemetry database
        description="Recomputes the per-day and rolling-window metrics when new events arrive, and once a day.",
    )
