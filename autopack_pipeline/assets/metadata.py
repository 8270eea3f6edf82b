"""Metadata a person reads in the UI: database identity, markdown tables, headline numbers."""

from typing import Any

import dagster as dg

from autopack_pipeline.domain.events import EVENT_COLUMNS
from autopack_pipeline.storage.database import DatabaseIdentity


def database_metadata(identity: DatabaseIdentity) -> dict[str, Any]:
    """Which telemetry database the asset read or wrote (password masked), so runs can be audited."""
    meta: dict[str, Any] = {"telemetry_database": dg.MetadataValue.text(identity.url)}
    if identity.sqlite_path:
        meta["telemetry_database_file"] = dg.MetadataValue.path(str(identity.sqlite_path))
    return meta


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{_fmt(value[0])}–{_fmt(value[1])}"
    return str(value)


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def tier1_rows(tier1: dict[str, Any]) -> list[list[Any]]:
    return [
        ["underestimation %", tier1["underestimation_rate_pct"], tier1["underestimation_rate_pct_ci"], "≤ 5"],
        ["truncation %", tier1["truncation_rate_pct"], tier1["truncation_rate_pct_ci"], "≤ 2"],
        ["success %", tier1["success_rate_pct"], tier1["success_rate_pct_ci"], "monitor"],
    ]


_SCHEMA_TYPES = {"Int64": "int", "string": "string", "boolean": "bool", "datetime64[ns, UTC]": "timestamp"}


def events_column_schema() -> dg.TableSchema:
    """Column schema of the events table as the columnar copy holds it."""
    return dg.TableSchema(
        columns=[dg.TableColumn(name, _SCHEMA_TYPES.get(dtype, dtype)) for name, dtype in EVENT_COLUMNS.items()]
    )


def sample_group_metadata(group_counts: dict[tuple[str, str], int], min_samples: int) -> dict[str, Any]:
    """Group sizes of the clean samples, as the calibration gate sensor reads them back.

    ``group_counts`` is the full list, so the sensor can re-run the gate function itself on the
    latest materialisation without loading the samples.
    """
    counts = sorted(((c, x, n) for (c, x), n in group_counts.items()), key=lambda item: (-item[2], item[0], item[1]))
    largest = counts[0] if counts else None
    return {
        "group_count": len(counts),
        "groups_at_min_samples": sum(1 for *_, n in counts if n >= min_samples),
        "largest_group": dg.MetadataValue.text(f"{largest[0]}/{largest[1]}" if largest else "none"),
        "largest_group_samples": largest[2] if largest else 0,
        "group_counts": dg.MetadataValue.json([{"category": c, "complexity": x, "n": n} for c, x, n in counts]),
    }


GROUP_TIER1_COUNTS = ("total_samples", "underestimation_samples", "underestimated_count", "truncated_count")


def group_tier1_metadata(group_tier1: dict[tuple[str, str], dict[str, Any]]) -> dg.MetadataValue:
    """Each (category, complexity) group's Tier-1 counts, which is all ``gates.certain_group_breaches`` reads."""
    return dg.MetadataValue.json([{"category": c, "complexity": x, **{k: int(block[k]) for k in GROUP_TIER1_COUNTS}}
                                  for (c, x), block in group_tier1.items()])


def strata_table(dimension: str, strata: dict[str, dict[str, Any]]) -> str:
    """Tier-1 rates per stratum value (category, complexity or deliverable bucket)."""
    rows = [
        [name, block["total_samples"], block["underestimation_rate_pct"], block["truncation_rate_pct"],
         block["success_rate_pct"]]
        for name, block in strata.items()
    ]
    if not rows:
        return "_no events_"
    return markdown_table([dimension, "events", "underestimation %", "truncation %", "success %"], rows)
