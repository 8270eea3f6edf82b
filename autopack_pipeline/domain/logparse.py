"""Autopack's token-estimation log lines as event records, and the V3 analyser's metrics over them.

Three line shapes are read (autopack_spec §3.1, §3.4):

- ``[TokenEstimationV2] predicted_output=N actual_output=M smape=X% selected_budget=B category=C
  complexity=X deliverables=D success=S stop_reason=R truncated=T model=M``: the primary line;
- the same marker with ``actual_total=M`` instead of ``actual_output=``: Autopack's fallback path,
  where M is input + output tokens (pitfall P10). Kept, marked ``v2-fallback``, and left out of the
  analysis unless asked for, because its "actual" is not an output size;
- ``[TokenEstimation] Predicted: N output tokens, Actual: M output tokens, Error: X%``: legacy V1.

A line carrying a marker that does not parse is counted as unreadable for its file; nothing here
raises on bad input. The metrics are :mod:`autopack_pipeline.domain.analysis`, the same code as
the database path, with the V3 analyser's own rules where it differs: V1 lines are never successful (so
``success_only`` drops them) and truncation and success rates are over V2 records only, as is the
stratification.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from autopack_pipeline.domain.analysis import EventArrays, compute_metrics_arrays, truncated_flags
from autopack_pipeline.domain.analysis.rates import needs_tuning
from autopack_pipeline.domain.targets import UNDER_TOLERANCE

V2_MARKER = "[TokenEstimationV2]"
V1_MARKER = "[TokenEstimation]"
FORMATS = ("v2", "v2-fallback", "v1")
_MARKERS_START = "[TokenEstimation"  # the start both markers share
_TIMESTAMP = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})")
_PAIR = re.compile(r"(\w+)=(\S+)")
_V1 = re.compile(
    r"\[TokenEstimation\]\s+Predicted:\s*(\d+)\s+output tokens,\s*Actual:\s*(\d+)\s+output tokens,"
    r"\s*Error:\s*([\d.]+)%"
)


@dataclass(frozen=True)
class LogRecord:
    """One parsed line: the event fields plus where it came from and what it logged as its error."""

    format: str
    source_file: str
    line_number: int
    predicted: int
    actual: int
    logged_error_pct: float | None = None
    timestamp: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def _none(text: str | None) -> str | None:
    return None if text is None or text == "None" else text


def _int(text: str | None) -> int | None:
    text = _none(text)
    return int(text) if text is not None and text.isdigit() else None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _timestamp(text: str | None) -> datetime | None:
    # The text is "YYYY-MM-DDTHH:MM:SS" as parse_line builds it; log times are UTC.
    try:
        return datetime.fromisoformat(text).replace(tzinfo=timezone.utc) if text else None
    except ValueError:  # a prefix that looks like a time but is not one (month 13) is just ignored
        return None


def _bool(text: str | None) -> bool | None:
    # Autopack compares str(value).lower() == "true"; anything else but "false" is unknown.
    text = _none(text)
    if text is None:
        return None
    return {"true": True, "false": False}.get(text.lower())


def parse_line(line: str, source_file: str = "<memory>", line_number: int = 0) -> LogRecord | None | bool:
    """A :class:`LogRecord`, ``None`` for a line without a marker, or ``False`` for an unreadable one."""
    if _MARKERS_START not in line:  # most of a log: no time read for them
        return None
    stamp = _TIMESTAMP.match(line)
    timestamp = f"{stamp.group(1)}T{stamp.group(2)}" if stamp else None
    if V2_MARKER in line:
        pairs = dict(_PAIR.findall(line.split(V2_MARKER, 1)[1]))
        predicted = _int(pairs.get("predicted_output"))
        actual = _int(pairs.get("actual_output"))
        fmt = "v2"
        if actual is None and "actual_output" not in pairs:
            actual, fmt = _int(pairs.get("actual_total")), "v2-fallback"
        if predicted is None or actual is None:
            return False
        return LogRecord(
            format=fmt, source_file=source_file, line_number=line_number, predicted=predicted, actual=actual,
            logged_error_pct=_float(pairs.get("smape", "").rstrip("%")), timestamp=timestamp,
            fields={
                "selected_budget": _int(pairs.get("selected_budget")),
                "category": _none(pairs.get("category")),
                "complexity": _none(pairs.get("complexity")),
                "deliverable_count": _int(pairs.get("deliverables")),
                "success": _bool(pairs.get("success")),
                "stop_reason": _none(pairs.get("stop_reason")),
                "truncated": _bool(pairs.get("truncated")),
                "model": _none(pairs.get("model")),
            },
        )
    if V1_MARKER in line:
        match = _V1.search(line)
        if match is None:
            return False
        return LogRecord(format="v1", source_file=source_file, line_number=line_number,
                         predicted=int(match.group(1)), actual=int(match.group(2)),
                         logged_error_pct=_float(match.group(3)), timestamp=timestamp)
    return None


@dataclass
class ParsedLogs:
    """Every record found, per-file counts (by format, plus ``unreadable``) and files that failed to open."""

    records: list[LogRecord] = field(default_factory=list)
    files: dict[str, Counter] = field(default_factory=dict)
    unopenable: dict[str, str] = field(default_factory=dict)

    @property
    def unreadable_lines(self) -> int:
        return sum(counts["unreadable"] for counts in self.files.values())

    def format_counts(self) -> dict[str, int]:
        counts = Counter(record.format for record in self.records)
        return {fmt: counts.get(fmt, 0) for fmt in FORMATS}


def parse_lines(lines: Iterable[str], source_file: str, into: ParsedLogs) -> None:
    counts = into.files.setdefault(source_file, Counter())
    for number, line in enumerate(lines, start=1):
        parsed = parse_line(line, source_file, number)
        if parsed is False:
            counts["unreadable"] += 1
        elif parsed is not None:
            counts[parsed.format] += 1
            into.records.append(parsed)


def parse_log_dir(log_dir: Path, pattern: str = "*.log") -> ParsedLogs:
    """Parse every file matching ``pattern`` under ``log_dir``, recursively, in sorted path order."""
    parsed = ParsedLogs()
    for path in sorted(p for p in Path(log_dir).rglob(pattern) if p.is_file()):
        try:
            # errors="replace": a stray byte spoils one line (then counted unreadable), not the file.
            with path.open(encoding="utf-8", errors="replace") as handle:
                parse_lines(handle, str(path), parsed)
        except OSError as exc:
            parsed.unopenable[str(path)] = exc.strerror or type(exc).__name__
    return parsed


def event_record(record: LogRecord) -> dict[str, Any]:
    """The event fields of a parsed line, keyed by the events table's column names (``timestamp`` in UTC)."""
    return {"predicted_output_tokens": record.predicted, "actual_output_tokens": record.actual,
            "timestamp": _timestamp(record.timestamp), **record.fields}


def analyse_logs(
    parsed: ParsedLogs,
    *,
    success_only: bool = False,
    stratify: bool = False,
    under_multiplier: float = UNDER_TOLERANCE,
    include_fallback: bool = False,
) -> dict[str, Any]:
    """The metrics document for the parsed records, with the V3 analyser's rules (module docstring).

    Keys: ``tier1`` (with ``v2_samples``), ``tier2``, ``diagnostics`` (plus ``logged_error_mean``, the
    V3 figure: the mean of the logged, rounded errors, V1's included), ``needs_tuning``, ``strata``
    when asked, and ``records`` (counts found, analysed and left out).
    """
    records = parsed.records
    formats = {"v2", "v1"} | ({"v2-fallback"} if include_fallback else set())
    keep = np.array([r.format in formats for r in records], dtype=bool)
    if success_only:  # an unknown success is not a success; V1 lines never are
        keep &= np.array([r.format != "v1" and r.fields.get("success") is True for r in records], dtype=bool)
    kept = [r for r, chosen in zip(records, keep) if chosen]
    v2 = np.array([r.format != "v1" for r in kept], dtype=bool)
    arrays = EventArrays.from_records([event_record(r) for r in records]).take(keep)

    document = compute_metrics_arrays(arrays, under_multiplier=under_multiplier)
    tier1 = document["tier1"]
    v2_document = compute_metrics_arrays(arrays, rows=v2, under_multiplier=under_multiplier, stratify=stratify)
    v2_tier1 = v2_document["tier1"]
    for key in ("truncation_rate_pct", "success_rate_pct"):
        tier1[key], tier1[f"{key}_ci"] = v2_tier1[key], v2_tier1[f"{key}_ci"]
    tier1["truncated_count"], tier1["success_count"] = v2_tier1["truncated_count"], v2_tier1["success_count"]
    tier1["v2_samples"] = int(v2.sum())
    document["needs_tuning"] = needs_tuning(tier1)

    untruncated = ~truncated_flags(arrays)
    logged = np.array([np.nan if r.logged_error_pct is None else r.logged_error_pct for r in kept], dtype=float)
    logged = logged[untruncated]
    logged = logged[~np.isnan(logged)]
    document["diagnostics"]["logged_error_mean"] = float(logged.mean()) if logged.size else None
    if stratify:
        document["strata"] = v2_document["strata"]
    found = parsed.format_counts()
    document["records"] = {
        "found": found,
        "analysed": len(kept),
        "fallback_left_out": 0 if include_fallback else found["v2-fallback"],
        "unreadable_lines": parsed.unreadable_lines,
        "success_only": success_only,
    }
    return document


def source_counts(parsed: ParsedLogs) -> dict[str, dict[str, int]]:
    """Per file: records by format and unreadable lines; files that would not open carry ``error``."""
    out: dict[str, dict[str, Any]] = {
        name: {key: int(counts.get(key, 0)) for key in (*FORMATS, "unreadable")} for name, counts in parsed.files.items()
    }
    for name, error in parsed.unopenable.items():
        out[name] = {"error": error}
    return out
