"""A task's evidence as lines a person reads: figures with their units, no Python reprs.

The evidence is the JSON stored with a task (``generated_tasks.evidence``); its keys depend on the
finding (a Tier-1 breach, a calibration recommendation, a sample shortfall, a phase-outcome
pattern, a drift finding). Known figures get their unit (%, tokens, samples, x); anything else is
shown as ``key: value`` with plain numbers, lists and mappings, so a new key is readable too.
"""

from __future__ import annotations

from typing import Any

# Figures counted in tokens.
TOKEN_KEYS = frozenset({"total_tokens", "avg_tokens", "threshold_tokens"})
# Figures stored as a fraction and shown as a percentage.
FRACTION_KEYS = frozenset({"phase_type_failure_rate", "failure_rate_threshold"})
# Shown on lines of their own (or not at all: the figures a line above already carries).
_STRUCTURED = frozenset({"metric", "observed", "threshold", "ci", "total_samples", "symptoms", "examples", "source",
                         "approval", "superseded", "reopened", "scope", "category", "complexity"})
_LABELS = {"sample_count": "clean samples", "proposed_multiplier": "proposed multiplier", "count": "occurrences",
           "phase_type_failure_rate": "failure rate of the phase type", "retry_threshold": "retry threshold (runs)",
           "failure_rate_threshold": "failure-rate threshold", "threshold_tokens": "cost-sink threshold",
           "avg_tokens": "per outcome", "total_tokens": "used", "n_recent": "recent events",
           "n_reference": "reference events", "occurrences": "findings in the pattern"}


def number(value: Any) -> str:
    """A number as a person reads it: thousands separated, at most 3 decimals, no trailing zeros."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) >= 0.001 else f"{value:.2g}"


def plain(value: Any) -> str:
    """Any JSON value without brackets or quotes: lists joined by commas, mappings as ``k=v``."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={plain(v)}" for k, v in value.items() if v not in (None, "", [], {}))
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value)
    return "-" if value is None else number(value)


def rate_line(figures: dict[str, Any]) -> str:
    """``underestimation rate 46.6% (95% interval 40.1-53.2%; target at most 5%; 203 events)``."""
    name = str(figures.get("metric") or "rate").removesuffix("_rate_pct")
    parts = []
    ci = figures.get("ci")
    if ci and len(ci) == 2:
        parts.append(f"95% interval {float(ci[0]):.1f}-{float(ci[1]):.1f}%")
    if figures.get("threshold") is not None:
        parts.append(f"target at most {number(figures['threshold'])}%")
    if figures.get("total_samples"):
        parts.append(f"{number(figures['total_samples'])} events")
    observed = float(figures.get("observed") or 0.0)
    return f"{name} rate {observed:.1f}%" + (f" ({'; '.join(parts)})" if parts else "")


def _figure(key: str, value: Any) -> str:
    label = _LABELS.get(key, key.replace("_", " "))
    if key in TOKEN_KEYS:
        return f"{label}: {number(value)} tokens"
    if key in FRACTION_KEYS and isinstance(value, (int, float)):
        return f"{label}: {100 * value:.1f}%"
    if key == "proposed_multiplier" and isinstance(value, (int, float)):
        return f"{label}: x{value:.3f}"
    if key == "window_days":
        return f"window: last {number(value)} days"
    return f"{label}: {plain(value)}"


def _group(evidence: dict[str, Any]) -> str | None:
    if evidence.get("category") and evidence.get("complexity"):
        return f"{evidence['category']}/{evidence['complexity']}"
    scope = evidence.get("scope")
    return str(scope).removeprefix("group=") if scope else None


def group_label(evidence: dict[str, Any] | None) -> str:
    """What a task is about, for a to-do list: ``docs/low``, ``overall``, or the phase types of a
    phase-outcome pattern (``phases: docs, implementation``)."""
    evidence = evidence or {}
    group = _group(evidence)
    if group:
        return group
    types = sorted({str(e.get("phase_type")) for e in evidence.get("examples") or [] if e.get("phase_type")})
    if not types and evidence.get("phase_type"):
        types = [str(evidence["phase_type"])]
    return f"phases: {', '.join(types)}" if types else "-"


def evidence_lines(evidence: dict[str, Any] | None) -> list[str]:
    """The evidence as bullet-less lines, most telling first; provenance and decisions last."""
    evidence = dict(evidence or {})
    lines = []
    group = _group(evidence)
    if group:
        lines.append(f"group: {group}")
    if evidence.get("metric"):
        lines.append(rate_line(evidence))
    elif "observed" in evidence and "threshold" in evidence:  # a sample shortfall: counts of clean samples
        lines.append(f"clean samples: {number(evidence['observed'])} of the {number(evidence['threshold'])} needed")
    for symptom in evidence.get("symptoms") or []:
        lines.append(f"Tier-1: {rate_line(symptom)}")
    lines += [_figure(k, v) for k, v in evidence.items() if k not in _STRUCTURED and v not in (None, "", [], {})]
    for example in evidence.get("examples") or []:
        lines.append("example: " + "; ".join(_figure(k, v) for k, v in example.items()
                                             if v not in (None, "", [], {}) and not k.startswith("window_")))
    source = evidence.get("source") or {}
    if source:
        lines.append("source: " + plain({k: v for k, v in source.items() if k != "input_materialization"}))
    if evidence.get("approval"):
        lines.append("approved: " + plain(evidence["approval"]))
    if evidence.get("superseded"):
        lines.append("superseded: " + plain(evidence["superseded"]))
    if evidence.get("reopened"):
        lines.append("reopened: " + plain(evidence["reopened"]))
    return lines
