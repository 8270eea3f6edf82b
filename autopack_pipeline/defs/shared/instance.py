"""What sensors read of the Dagster instance: latest materialisations, their metadata, unfinished runs."""

from typing import Any

import dagster as dg


def latest_materialization(instance: dg.DagsterInstance, asset: dg.AssetsDefinition) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(asset.key, limit=1).records
    return records[0] if records else None


def metadata_value(record: dg.EventLogRecord, key: str) -> Any:
    entry = record.asset_materialization.metadata.get(key)
    return entry.value if entry is not None else None


def unfinished_run(instance: dg.DagsterInstance, record: dg.EventLogRecord) -> dg.DagsterRun | None:
    """The run that produced ``record`` while it is still going (a later step may do our job)."""
    if not record.run_id:
        return None  # reported from outside any run
    run = instance.get_run_by_id(record.run_id)
    return run if run is not None and not run.is_finished else None
