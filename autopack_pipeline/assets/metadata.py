"""Metadata a person reads in the UI: database identity, markdown tables, headline numbers."""

from typing import Any

import dagster as dg

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
