"""Raw events: every row of ``token_estimation_v2_events``, failed and truncated ones included."""

import dagster as dg
import pandas as pd

from autopack_pipeline.assets.collection import telemetry_collection_run
from autopack_pipeline.assets.metadata import database_metadata
from autopack_pipeline.domain.events import EVENT_COLUMNS
from autopack_pipeline.domain.samples import truncation_flag_disagreements
from autopack_pipeline.resources import TelemetryDatabase
from autopack_pipeline.storage.events import read_events

_SCHEMA_TYPES = {"Int64": "int", "string": "string", "boolean": "bool", "datetime64[ns, UTC]": "timestamp"}


@dg.asset(group_name="telemetry", kinds={"pandas", "sqlite"}, deps=[telemetry_collection_run])
def raw_events(context: dg.AssetExecutionContext, telemetry_db: TelemetryDatabase) -> dg.MaterializeResult:
    """Every token-estimation event in the telemetry database, as Autopack's table holds them.

    Failed and truncated calls stay in: they are the evidence for truncation and success rates.
    """
    events = read_events(telemetry_db.engine())
    disagreements = truncation_flag_disagreements(events)
    if disagreements:
        context.log.warning(
            "%d events disagree between truncated and is_truncated_output; truncated is trusted", disagreements
        )
    return dg.MaterializeResult(
        value=events,
        metadata={
            "dagster/row_count": len(events),
            "dagster/column_schema": dg.TableSchema(
                columns=[dg.TableColumn(name, _SCHEMA_TYPES.get(dtype, dtype)) for name, dtype in EVENT_COLUMNS.items()]
            ),
            "runs": int(events["run_id"].nunique()),
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
