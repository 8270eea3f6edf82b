"""The result of a check that had too little data to compare anything."""

from typing import Any

import dagster as dg


def not_evaluated(reason: str, metadata: dict[str, Any], **check: Any) -> dg.AssetCheckResult:
    """A check that had too little data to compare anything: a WARN that does not pass, and says why."""
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={**metadata, "evaluated": False},
        description=f"could not evaluate: {reason}",
        **check,
    )
