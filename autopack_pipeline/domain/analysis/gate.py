"""The calibration gate (DESIGN §6): when recalibrating is both possible and warranted.

Autopack documented these conditions but never enforced them (its pitfall P15), and recalibrated on
25 samples spread over groups of 3 to 15. Here they are one function that the Dagster sensor, the
asset and the CLI all call, and every refusal carries the number that failed next to its threshold.

Tier 1 is breached overall, or in one (category, complexity) group whose breach is certain: its own
Wilson 95% lower bound above the target, with at least ``min_samples`` clean samples. The overall rate
averages a group's misses away (one group at 10% among nine at 3% is 3.7% overall), so without the
group rule that group would never be calibrated again; the lower bound keeps one unlucky small group
from reopening the gate on noise.

Tier 2 can reopen it: when the caller knows the round's budget waste P90 against the oracle's
(``domain.oracle``: per-group multipliers known in advance, fitted on that round) and it is above
:data:`WASTE_OVER_ORACLE_LIMIT`, a Tier 1 within targets does not close the gate. Without this, a
round that met Tier 1 early kept, for every later round, margins set on a window of many
truncations (simulated seed 42: 1.44x and 1.60x the oracle in rounds 2 and 3, both closed, and 1.19x
in round 4 on round 1's margins; reopened, 1.33x, 1.40x, 1.09x); the margins calibration sets are
measured on the recent window, so reopening moves them to what it shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from autopack_pipeline.domain.analysis.rates import wilson_interval
from autopack_pipeline.domain.targets import (
    MIN_GROUP_SAMPLES,
    MIN_TOTAL_SAMPLES,
    TRUNCATION_TARGET_PCT,
    UNDERESTIMATION_TARGET_PCT,
    WASTE_OVER_ORACLE_LIMIT,
)


@dataclass(frozen=True)
class GateDecision:
    """Outcome of :func:`decide_gate`.

    ``open`` is whether calibration may run; ``forced`` whether it was opened by ``--force`` despite
    ``reasons`` (which are kept, so the report can say what was overridden). ``observed`` and
    ``thresholds`` hold the figures behind the decision for metadata and JSON output.
    """

    open: bool
    forced: bool
    reasons: list[str] = field(default_factory=list)
    observed: dict[str, Any] = field(default_factory=dict)
    thresholds: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for logs, sensor skip messages and report headers."""
        if self.forced and self.reasons:
            return "Calibration gate forced open (--force) despite: " + "; ".join(self.reasons)
        if self.open:
            group = self.observed.get("largest_group") or {}
            text = (
                f"Calibration gate open{' (forced)' if self.forced else ''}: "
                f"{self.observed.get('clean_samples', 0)} clean samples, largest group "
                f"{group.get('category')}/{group.get('complexity')} with {group.get('n')}, "
                f"underestimation {self.observed.get('underestimation_rate_pct', 0.0):.1f}%, "
                f"truncation {self.observed.get('truncation_rate_pct', 0.0):.1f}%"
            )
            breaches = self.observed.get("group_breaches") or []
            if breaches:
                text += "; Tier 1 certainly breached in " + "; ".join(group_breach_text(b) for b in breaches)
            ratio = self.observed.get("waste_over_oracle")
            if ratio is not None and ratio > WASTE_OVER_ORACLE_LIMIT:
                text += (f"; Tier 2: budget waste P90 {ratio:.2f}x the oracle's, above "
                         f"{WASTE_OVER_ORACLE_LIMIT:.2f}x")
            if self.observed.get("estimator_drift"):
                text += f"; the estimator's error moved since the previous version ({self.observed['estimator_drift']})"
            return text
        return "Calibration gate closed: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form, with the summary line included."""
        return {
            "open": self.open,
            "forced": self.forced,
            "reasons": list(self.reasons),
            "observed": dict(self.observed),
            "thresholds": dict(self.thresholds),
            "summary": self.summary(),
        }


def largest_group(counts: Mapping[tuple[str, str], int]) -> dict[str, Any] | None:
    """The (category, complexity) group with the most clean samples, or ``None`` when there is none.

    ``counts`` are the clean samples per canonical group. Ties go to the alphabetically first group,
    so the answer does not depend on row order.
    """
    found = [(key, int(n)) for key, n in counts.items() if n > 0]
    if not found:
        return None
    (category, complexity), n = min(found, key=lambda item: (-item[1], item[0]))
    return {"category": category, "complexity": complexity, "n": n}


def _count(block: Mapping[str, Any], key: str) -> int:
    return int(block.get(key) or 0)


def certain_group_breaches(
    group_tier1: Mapping[tuple[str, str], Mapping[str, Any]] | Iterable[Mapping[str, Any]],
    clean_counts: Mapping[tuple[str, str], int],
    *,
    min_samples: int = MIN_GROUP_SAMPLES,
) -> list[dict[str, Any]]:
    """The (category, complexity) groups whose own Tier-1 breach is certain, sorted by group.

    ``group_tier1`` holds each group's Tier-1 counts (``tier1_block``'s ``underestimated_count`` of
    ``underestimation_samples``, ``truncated_count`` of ``total_samples``): a mapping by group, as
    ``group_tier1_arrays`` returns, or records with ``category`` and ``complexity`` (the metadata
    form). ``clean_counts`` are the clean samples per group. A group counts when it has at least
    ``min_samples`` clean samples (calibration can learn from it) and a rate's Wilson 95% lower bound
    is above its target; the rates are recomputed from the counts, so only counts need to travel.
    """
    if isinstance(group_tier1, Mapping):
        records = [{"category": c, "complexity": x, **block} for (c, x), block in group_tier1.items()]
    else:
        records = list(group_tier1)
    breaches = []
    for record in records:
        key = (str(record["category"]), str(record["complexity"]))
        clean = int(clean_counts.get(key, 0))
        if clean < min_samples:
            continue
        found = []
        for name, k, n, target in (
            ("underestimation", _count(record, "underestimated_count"), _count(record, "underestimation_samples"),
             UNDERESTIMATION_TARGET_PCT),
            ("truncation", _count(record, "truncated_count"), _count(record, "total_samples"), TRUNCATION_TARGET_PCT),
        ):
            low, high = wilson_interval(k, n)
            if n and low > target:
                found.append({"metric": name, "count": k, "of": n, "pct": 100.0 * k / n, "ci": [low, high],
                              "target_pct": target})
        if found:
            breaches.append({"category": key[0], "complexity": key[1], "clean_samples": clean, "breaches": found})
    return sorted(breaches, key=lambda b: (b["category"], b["complexity"]))


def group_breach_text(breach: Mapping[str, Any]) -> str:
    """``implementation/medium: underestimation 9 of 86 = 10.5% [5.6-18.7], lower bound above 5.0%; ...``."""
    rates = ", ".join(
        f"{b['metric']} {b['count']} of {b['of']} = {b['pct']:.1f}% [{b['ci'][0]:.1f}-{b['ci'][1]:.1f}], "
        f"lower bound above {b['target_pct']:.1f}%" for b in breach["breaches"])
    return f"{breach['category']}/{breach['complexity']} ({breach['clean_samples']} clean samples): {rates}"


def decide_gate(
    clean: int,
    group: dict[str, Any] | None,
    under: float,
    truncation: float,
    *,
    min_total: int = MIN_TOTAL_SAMPLES,
    min_samples: int = MIN_GROUP_SAMPLES,
    force: bool = False,
    group_breaches: list[dict[str, Any]] | None = None,
    waste_over_oracle: float | None = None,
    drift: str | None = None,
) -> GateDecision:
    """The gate's rule from its figures, whichever path computed them (arrays or asset metadata).

    ``group_breaches`` is :func:`certain_group_breaches`' answer; None when the caller has no
    per-group figures (then only the overall rates decide, and the reasons do not mention groups).
    ``waste_over_oracle`` (budget waste P90 / the oracle's, for the events the rates describe; None
    when unknown) above :data:`WASTE_OVER_ORACLE_LIMIT` opens a gate Tier 1 alone would close, and so
    does ``drift``, the summary of a drift test that found the estimator's error moved since the
    previous coefficient version: budgets fitted before the move hold only by luck (a round that met
    Tier 1 after a drift cut 4.4% of calls in the next round on the same budgets).
    """
    tier2_breach = waste_over_oracle is not None and waste_over_oracle > WASTE_OVER_ORACLE_LIMIT
    reasons: list[str] = []
    if clean < min_total:
        reasons.append(f"only {clean} clean samples; the gate needs at least {min_total}")
    if group is None:
        reasons.append(f"no (category, complexity) group has samples; the gate needs one with at least {min_samples}")
    elif group["n"] < min_samples:
        reasons.append(
            f"the largest (category, complexity) group, {group['category']}/{group['complexity']}, "
            f"has {group['n']} clean samples; the gate needs one with at least {min_samples}"
        )
    if not (under > UNDERESTIMATION_TARGET_PCT or truncation > TRUNCATION_TARGET_PCT or group_breaches
            or tier2_breach or drift):
        reasons.append(
            f"Tier 1 is within targets: underestimation {under:.1f}% (limit {UNDERESTIMATION_TARGET_PCT:.1f}%), "
            f"truncation {truncation:.1f}% (limit {TRUNCATION_TARGET_PCT:.1f}%); calibration runs only "
            "when one is breached"
            + ("" if group_breaches is None else
               f", overall or certainly in one group (Wilson 95% lower bound above the target, with at least "
               f"{min_samples} clean samples); no group's is")
            + ("" if waste_over_oracle is None else
               f"; budget waste P90 is {waste_over_oracle:.2f}x the oracle's (reopens above "
               f"{WASTE_OVER_ORACLE_LIMIT:.2f}x)")
        )
    return GateDecision(
        open=force or not reasons,
        forced=force,
        reasons=reasons,
        observed={
            "clean_samples": clean,
            "largest_group": group,
            "underestimation_rate_pct": under,
            "truncation_rate_pct": truncation,
            **({} if group_breaches is None else {"group_breaches": list(group_breaches)}),
            **({} if waste_over_oracle is None else {"waste_over_oracle": waste_over_oracle}),
            **({} if drift is None else {"estimator_drift": drift}),
        },
        thresholds={
            "min_clean_samples": min_total,
            "min_group_samples": min_samples,
            "underestimation_rate_pct": UNDERESTIMATION_TARGET_PCT,
            "truncation_rate_pct": TRUNCATION_TARGET_PCT,
        },
    )
