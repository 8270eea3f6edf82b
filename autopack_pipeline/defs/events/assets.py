"""Raw events: every row of ``token_estimation_v2_events``, failed and truncated ones included."""

import heapq

import dagster as dg

from autopack_pipeline.defs.collection.assets import telemetry_collection_run
from autopack_pipeline.defs.resources import TelemetryDatabase
from autopack_pipeline.defs.shared.metadata import database_metadata, events_column_schema
from autopack_pipeline.domain.analysis import success_flags, truncated_flags, truncation_disagreements
from autopack_pipeline.storage.snapshot import EventSnapshot, snapshot_events, with_arrays_loaded
from autopack_pipeline.storage.timestamps import describe_unreadable

# The resource key of the IO manager that stores raw_events (events/io_manager.py).
EVENTS_IO_MANAGER = "event_snapshot_io_manager"


@dg.asset(group_name="telemetry", kinds={"parquet", "sqlite"}, deps=[telemetry_collection_run],
          io_manager_key=EVENTS_IO_MANAGER)
def raw_events(context: dg.AssetExecutionContext, telemetry_db: TelemetryDatabase) -> dg.MaterializeResult:
    """Every token-estimation event in the telemetry database, as Autopack's table holds them.

    Failed and truncated calls stay in: they are the evidence for truncation and success rates.
    Only events above the columnar copy's high-water event id are read from the database; the value
    handed on is an EventSnapshot (the copy's directory, row count and high-water id); its IO manager
    hands the downstream assets the events it names, as arrays.
    """
    snapshot, refresh, fallback = snapshot_events(telemetry_db.engine())
    if fallback:
        context.log.warning(fallback)
    else:
        context.log.info(refresh.summary())
    # Loaded once and kept in the snapshot: the IO manager hands these same arrays downstream.
    snapshot = with_arrays_loaded(snapshot)
    arrays = snapshot.arrays()
    disagreements = truncation_disagreements(arrays)
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
            "runs": len(snapshot.run_counts),
            "events_succeeded": int(success_flags(arrays).sum()),
            "events_truncated": int(truncated_flags(arrays).sum()),
            "truncation_flag_disagreements": disagreements,
            "unreadable_timestamps": int(snapshot.unreadable["count"]),
            "events_by_run": dg.MetadataValue.md(_counts_markdown(snapshot)),
            **refresh_metadata,
            **database_metadata(telemetry_db.identity()),
        },
    )


def _counts_markdown(snapshot: EventSnapshot) -> str:
    if not snapshot.run_counts:
        return "_no events_"
    # The 20 largest without sorting every run (hundreds of thousands at ten million events).
    top = heapq.nsmallest(20, snapshot.run_counts.items(), key=lambda item: (-item[1], item[0]))
    return "| run | events |\n|---|---|\n" + "\n".join(f"| {run} | {n} |" for run, n in top)
