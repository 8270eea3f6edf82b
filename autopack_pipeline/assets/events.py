"""Raw events: every row of ``token_estimation_v2_events``, failed and truncated ones included."""

import dagster as dg
import pandas as pd

from autopack_pipeline.assets.collection import telemetry_collection_run
from autopack_pipeline.assets.metadata import database_metadata, events_column_schema
from autopack_pipeline.domain.samples import success_mask, truncated_mask, truncation_flag_disagreements
from autopack_pipeline.resources import TelemetryDatabase
from autopack_pipeline.storage.events import read_events


@dg.asset(group_name="telemetry", kinds={"pandas", "sqlite"}, deps=[telemetry_collection_run])
def raw_events(context: dg.AssetExecutionContext, telemetry_db: TelemetryDatabase) -> dg.MaterializeResult:
    """Every token-estimation event in the telemetry database, as Autopack's table holds them.

    Failed and truncated calls stay in: they are the evidence for truncation and success rates.
    """
    from autopack_pipeline.storage.columnar import ColumnarStoreError, refresh_store

    engine = telemetry_db.engine()
    try:
        # Only events above the columnar copy's high-water event id are read from the database.
        store, refresh = refresh_store(engine)
    except (ColumnarStoreError, OSError) as exc:
        context.log.warning("columnar store unavailable (%s); reading the whole events table", exc)
        store, refresh = None, None
    if store is None:
        events = read_events(engine)
    else:
        context.log.info(refresh.summary())
        events = store.events_frame()
    disagreements = truncation_flag_disagreements(events)
    if disagreements:
        context.log.warning(
            "%d events disagree between truncated and is_truncated_output; truncated is trusted", disagreements
        )
    return dg.MaterializeResult(
        value=events,
        metadata={
            "dagster/row_count": len(events),
            "dagster/column_schema": events_column_schema(),
            "runs": int(events["run_id"].nunique()),
            "events_succeeded": int(success_mask(events).sum()),
            "events_truncated": int(truncated_mask(events).sum()),
            "truncation_flag_disagreements": disagreements,
            "events_by_run": dg.MetadataValue.md(_counts_markdown(events)),
            **database_metadata(telemetry_db.identity()),
        },
    )


def _counts_markdown(events: pd.DataFrame) -> str:
    if events.empty:
        return "_no events_"
    counts = events.groupby("run_id").size().sort_values(ascending=False).head(20)
    return "| run | events |\n|---|---|\n" + "\n".join(f"| {run} | {n} |" for run, n in counts.items())
