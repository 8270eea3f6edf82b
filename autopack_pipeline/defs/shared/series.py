"""One telemetry database per plotted series: the metric assets refuse to mix two.

The UI plots an asset's numeric metadata across its materialisations. Figures of two telemetry
databases in one series would read as a change that never happened, so the metric assets record the
database they read (``telemetry_database``) and refuse another one, naming the way out.
"""

import dagster as dg

from autopack_pipeline.defs.shared.metadata import database_metadata
from autopack_pipeline.storage.database import DatabaseIdentity

DATABASE_KEY = "telemetry_database"


def series_database(instance: dg.DagsterInstance, asset_key: dg.AssetKey) -> str | None:
    """The telemetry database an asset's series holds figures of (its latest materialisation's)."""
    records = instance.fetch_materializations(asset_key, limit=1).records
    if not records:
        return None
    entry = records[0].asset_materialization.metadata.get(DATABASE_KEY)
    return entry.value if entry is not None else None


def refuse_another_database(instance: dg.DagsterInstance, asset_key: dg.AssetKey, identity: DatabaseIdentity,
                            backfill_hint: str = "") -> None:
    """Fail with the way out when the asset's series holds figures of a telemetry database other than
    ``identity``'s."""
    held = series_database(instance, asset_key)
    if held is None or held == identity.url:
        return
    name = asset_key.to_user_string()
    raise dg.Failure(
        description=(
            f"the {name} series holds figures of {held}, not of {identity.url}; one series never mixes two "
            f"telemetry databases: use a separate DAGSTER_HOME for this database, or start the series again "
            f"with `dagster asset wipe {name}`{backfill_hint}"
        ),
        metadata=database_metadata(identity),
    )
