"""Cells of the calibration report's markdown tables, and its "Frontier and cost" section.

Apart from ``reporting`` so that the report module stays readable; the section reads only the
per-group economics (``domain.group_economics``), never a calibration result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cell(value: Any) -> str:
    # A pipe inside a value would split the markdown table cell.
    return str(value).replace("|", "\\|")


def waste(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def pct_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def frontier_and_cost_lines(economics: Sequence[dict[str, Any]]) -> list[str]:
    """The "Frontier and cost" section: per group, the cheapest Tier-1 point, Tier 2, certification, cost."""
    lines = [
        "## Frontier and cost",
        "",
        "Per group, from its observed actual/predicted (truncated calls count above every candidate): the "
        "cheapest prediction multiplier m and budget margin b (budget = b x m x predicted) meeting Tier 1 "
        "(underestimation <= 5%, truncation <= 2%), and whether Tier 2 (budget waste P90 < 3x) holds with it. "
        "Cost: billed output tokens of every stored attempt x the model's output price (input tokens are not "
        "stored), and the output-rate-limit capacity the budgets reserve (max_tokens sent), per 1,000 calls, "
        "now vs each proposal with the floor and cap kept.",
        "",
        "| Category | Complexity | N (truncated) | m | b | Under % | Trunc % | Pred waste P90 | Budget waste P90 "
        "| Tier 2 | Certified |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for entry in economics:
        f = entry["frontier"]
        reach = f["reachable"]
        cells = [cell(entry["category"]), cell(entry["complexity"]), f"{f['observations']} ({f['censored']})",
                 f"{f['multiplier']:.3f}" if reach else "-", f"{f['margin']:.3f}" if reach else "-",
                 pct_text(f["underestimation"]["pct"]) if reach else "-",
                 pct_text(f["truncation"]["pct"]) if reach else "-",
                 waste(f["prediction_waste_p90"]), waste(f["budget_waste_p90"]),
                 "-" if f["tier2_holds"] is None else ("holds" if f["tier2_holds"] else "no: Tier 1 wins"),
                 "yes" if f["certified"] else f"no (~{f['observations_needed']} needed)"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for entry in economics:
        lines += [f"### {entry['category']}/{entry['complexity']}", "", entry["frontier"]["verdict"], ""]
        cost = entry["cost"]
        now = cost["now"]
        lines.append(f"- Now: ${now['dollars_per_1000_calls']:.2f} per 1,000 calls, reserved "
                     f"{now['reserved_output_tokens_per_1000_calls'] / 1e6:.2f}M output tokens per 1,000 calls over "
                     f"{now['calls']} stored attempts ({now['truncated_calls']} truncated); {cost['prices']}")
        for proposal in cost["proposals"]:
            margin = proposal["margin"]
            margin_text = "each call's current margin" if margin == "current" else f"margin {margin:.3f}"
            lines.append(f"- With the {proposal['label']} proposal (x{proposal['multiplier']:.3f}, {margin_text}, "
                         f"floor {cost['floor']}, cap {cost['cap']}): {proposal['summary']}; "
                         f"{proposal['proposed']['truncated_calls']} of {now['calls']} would truncate")
        lines.append("")
    return lines
