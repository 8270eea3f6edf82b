"""One NDJSON line, ours or Autopack's, validated on its own into an events row, or refused with the
reason (:class:`LineRejected`). Rows without an ``event_uid`` get one derived from their content."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime
from typing import Any

from autopack_pipeline.domain.categories import canonical_complexity, normalise_category
from autopack_pipeline.storage.events import deliverables_json, estimation_metrics
from autopack_pipeline.storage.models import naive_utc, utc_now

MAX_ACTUAL_OUTPUT_TOKENS = 200_000
MAX_PREDICTED_OUTPUT_TOKENS = 1_000_000
_MAX_OTHER_INT = 2_147_483_647  # PostgreSQL INTEGER
_MAX_TEXT = 255  # identifiers and labels; longer values overflow PostgreSQL's index rows anyway

REQUIRED_FIELDS = (
    "run_id", "phase_id", "category", "complexity", "predicted_output_tokens", "actual_output_tokens", "success",
)
_OPTIONAL_BOOLS = (
    "api_reference_required", "examples_required", "research_required", "usage_guide_required",
    "actual_is_total_tokens", "phase_completed", "underestimated",
)
_OPTIONAL_TEXT = ("stop_reason", "context_quality", "sot_file_name", "coefficients_version")
_OPTIONAL_INTS = ("actual_max_tokens", "attempt", "sot_entry_count_hint")


class LineRejected(ValueError):
    """A line that cannot be imported; the message is the reason shown to the user."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _text(record: dict[str, Any], key: str, *, required: bool = False, limit: int | None = _MAX_TEXT) -> str | None:
    """A string field; ``required`` ones may not be blank (their presence is checked by ``_parse_line``)."""
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise LineRejected(f"'{key}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise LineRejected(f"'{key}' is empty")
    if "\x00" in value:
        raise LineRejected(f"'{key}' contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LineRejected(f"'{key}' is not valid Unicode text") from None
    if limit is not None and len(value) > limit:
        raise LineRejected(f"'{key}' is longer than {limit} characters")
    return value


def _int(record: dict[str, Any], key: str, *, maximum: int = _MAX_OTHER_INT) -> int | None:
    value = record.get(key)
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LineRejected(f"'{key}' must be an integer, got {type(value).__name__}")
    if value < 0:
        raise LineRejected(f"'{key}' is negative ({value})")
    if value > maximum:
        raise LineRejected(f"'{key}' is absurdly large ({value} > {maximum})")
    return value


def _bool(record: dict[str, Any], key: str) -> bool | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise LineRejected(f"'{key}' must be true or false, got {type(value).__name__}")
    return value


def _float(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    if value is None:
        return None
    try:
        number = None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
    except OverflowError:  # an integer beyond any float
        number = None
    if number is None or not math.isfinite(number) or number < 0:
        raise LineRejected(f"'{key}' must be a non-negative number")
    return number


def _timestamp(record: dict[str, Any], key: str) -> datetime | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise LineRejected(f"'{key}' must be an ISO-8601 string, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value.strip())
        return naive_utc(moment)
    except (ValueError, OverflowError):
        raise LineRejected(f"unreadable timestamp in '{key}': {value[:40]!r}") from None


def _deliverables(record: dict[str, Any]) -> list[str]:
    value = record.get("deliverables")
    if value is None and isinstance(record.get("deliverables_json"), str):
        try:
            value = json.loads(record["deliverables_json"])
        except (ValueError, RecursionError):
            raise LineRejected("'deliverables_json' is not a JSON list") from None
    if value is None:
        return []
    if not isinstance(value, list):
        raise LineRejected(f"'deliverables' must be a list, got {type(value).__name__}")
    # Autopack's nested dict deliverables (its pitfall P6) are kept as their JSON text.
    return [item if isinstance(item, str) else json.dumps(item, sort_keys=True) for item in value]


def derive_event_uid(run_id: str, phase_id: str, timestamp: datetime | None, predicted: int, actual: int,
                     category: str) -> str:
    """A stable id for a row that has none: the same event imported twice gets the same id."""
    key = json.dumps([run_id, phase_id, timestamp.isoformat() if timestamp else None, predicted, actual, category])
    return "imp1-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]


def parse_line(raw: bytes) -> dict[str, Any]:
    """The events row for one NDJSON line (column -> value, no ``event_id``); raises LineRejected."""
    try:
        return _parse_line(raw)
    except RecursionError:  # absurdly nested JSON, in the line or in a deliverable
        raise LineRejected("nested too deeply") from None


def _parse_line(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LineRejected("not valid UTF-8") from None
    try:
        record = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise LineRejected(f"not JSON ({str(exc).splitlines()[0][:80]})") from None
    if not isinstance(record, dict):
        raise LineRejected(f"not a JSON object (got {type(record).__name__})")
    missing = [key for key in REQUIRED_FIELDS if record.get(key) is None]
    if missing:
        raise LineRejected("missing required field" + ("s " if len(missing) > 1 else " ") + ", ".join(missing))

    run_id = _text(record, "run_id", required=True)
    phase_id = _text(record, "phase_id", required=True)
    category = normalise_category(_text(record, "category", required=True))
    raw_complexity = _text(record, "complexity", required=True)
    complexity = canonical_complexity(raw_complexity)
    if complexity is None:
        raise LineRejected(f"unknown complexity {raw_complexity!r}")
    predicted = _int(record, "predicted_output_tokens", maximum=MAX_PREDICTED_OUTPUT_TOKENS)
    actual = _int(record, "actual_output_tokens", maximum=MAX_ACTUAL_OUTPUT_TOKENS)
    success = _bool(record, "success")
    timestamp = _timestamp(record, "timestamp")
    created_at = _timestamp(record, "created_at")
    deliverables = _deliverables(record)
    truncated = bool(_bool(record, "truncated"))
    is_truncated_output = _bool(record, "is_truncated_output")
    row: dict[str, Any] = {
        "run_id": run_id,
        "phase_id": phase_id,
        "timestamp": timestamp or utc_now(),
        "category": category,
        "complexity": complexity,
        "deliverable_count": _int(record, "deliverable_count", maximum=MAX_PREDICTED_OUTPUT_TOKENS),
        "deliverables_json": deliverables_json(deliverables),
        "predicted_output_tokens": predicted,
        "actual_output_tokens": actual,
        "selected_budget": _int(record, "selected_budget", maximum=MAX_PREDICTED_OUTPUT_TOKENS) or 0,
        "success": success,
        "truncated": truncated,
        "is_truncated_output": truncated if is_truncated_output is None else is_truncated_output,
        "model": _text(record, "model") or "unknown",
        "is_sot_file": _bool(record, "is_sot_file") if "is_sot_file" in record else False,
        "created_at": created_at or utc_now(),
    }
    if row["deliverable_count"] is None:
        row["deliverable_count"] = len(deliverables)
    for key in _OPTIONAL_TEXT:
        row[key] = _text(record, key)
    for key in _OPTIONAL_BOOLS:
        row[key] = _bool(record, key)
    for key in _OPTIONAL_INTS:
        row[key] = _int(record, key, maximum=MAX_PREDICTED_OUTPUT_TOKENS)
    row["smape_percent"] = _float(record, "smape_percent")
    row["waste_ratio"] = _float(record, "waste_ratio")
    if not any(key in record for key in ("smape_percent", "waste_ratio", "underestimated")):
        row["smape_percent"], row["waste_ratio"], row["underestimated"] = estimation_metrics(predicted, actual)
    uid = _text(record, "event_uid", limit=64)
    row["event_uid"] = uid or derive_event_uid(run_id, phase_id, timestamp, predicted, actual, category)
    return row
