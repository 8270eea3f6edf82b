"""Raw events: every row of ``token_estimation_v2_events``, failed and truncated ones included."""

import dagster as dg

from autopack_pipeline.defs.collection.assets import telemetry_collection_run
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.defs.shared.metadata import database_metadata, events_column_schema
from autopack_pipeline.storage.snapshot import EventHistory, snapshot_events
from autopack_pipeline.storage.timestamps import describe_unreadable

# The resource key of the IO manager that stores raw_events (events/io_manager.py).
EVENTS_IO_MANAGER = "event_snapshot_io_manager"


@dg.asset(group_name="telemetry", kinds={"parquet", "sqlite"}, deps=[telemetry_collection_run],
          io_manager_key=EVENTS_IO_MANAGER)
def raw_events(context: dg.AssetExecutionContext, telemetry_db: TelemetryDatabase) -> dg.MaterializeResult:
    """Every token-estimation event in the telemetry database, as Autopack's table holds them.

    Failed and truncated calls stay in: they are the evidence for truncation and success rates.
    Only events above the columnar copy's high-water event id are read from the database; the value
    handed on is an EventSnapshot (the copy's directory, row count and high-water id, and the figures
    over every event, added up from each part's tally); its IO manager hands each downstream step
    the events it reads, as arrays (the analysis assets: only their rolling window's).
    """
    snapshot, refresh, fallback = snapshot_events(telemetry_db.engine(), with_history=True)
    if fallback:
        context.log.warning(fallback)
    else:
        context.log.info(refresh.summary())
    history = snapshot.history
    disagreements = history.tally.truncation_disagreements
    if disagreements:
        context.log.warning(
            "%d events disagree between truncated and is_truncated_output; truncated is trusted", disagreements
        )
    set_aside = describe_unreadable(snapshot.unreadable)
    if set_aside:
        context.log.warning(set_aside)
    refresh_metadata = {} if refresh is None else {
        "columnar_store": dg.MetadataValue.path(refresh.directory),
        "events_extracted": refresh.new_rows,
        "extraction_seconds": refresh.seconds,
    }
    return dg.MaterializeResult(
        value=snapshot,
        metadata={
            "dagster/row_count": snapshot.rows,
            "dagster/column_schema": events_column_schema(),
            "high_water_event_id": snapshot.high_water_event_id,
            "runs": history.runs,
            "events_succeeded": history.tally.succeeded,
            "events_truncated": history.tally.truncated,
            "truncation_flag_disagreements": disagreements,
            "unreadable_timestamps": int(snapshot.unreadable["count"]),
            "events_by_run": dg.MetadataValue.md(_counts_markdown(history)),
            **refresh_metadata,
            **database_metadata(telemetry_db.identity()),
        },
    )


def _counts_markdown(history: EventHistory) -> str:
    if not history.largest_runs:
        return "_no events_"
    return "| run | events |\n|---|---|\n" + "\n".join(f"| {run} | {n} |" for run, n in history.largest_runs)
