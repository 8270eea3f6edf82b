"""Data-quality checks on raw_events, blocking: metrics and calibration computed on no events, on nothing
but failures, or on impossible token counts would be wrong, so the run stops before them. Blocking
only acts inside a run; the calibration gate sensor reads these checks' latest results as well.
Every result states what was observed and the threshold it was held to.
"""

import dagster as dg

from autopack_pipeline.defs.events.assets import raw_events
from autopack_pipeline.defs.shared.metadata import markdown_table
from autopack_pipeline.domain.event_tally import MAX_PLAUSIBLE_DELIVERABLES, MAX_PLAUSIBLE_TOKENS
from autopack_pipeline.storage.snapshot import EventHistory

EVENTS_EXIST = "events_exist"
NOT_ALL_FAILURES = "not_all_failures"
PLAUSIBLE_COUNTS = "token_counts_plausible"
DATA_QUALITY_CHECK_KEYS = [
    dg.AssetCheckKey(raw_events.key, name) for name in (EVENTS_EXIST, NOT_ALL_FAILURES, PLAUSIBLE_COUNTS)
]
# The checks judge every event raw_events saw, through its figures over every event (EventHistory:
# each part of the columnar copy tallied once), so no event is read for them.


@dg.asset_check(asset=raw_events, name=EVENTS_EXIST, blocking=True)
def events_exist(raw_events: EventHistory) -> dg.AssetCheckResult:
    """The telemetry database holds at least one token-estimation event (blocks the analysis)."""
    n = raw_events.tally.events
    return dg.AssetCheckResult(
        passed=n > 0,
        metadata={"observed_events": n, "threshold_min_events": 1},
        description=f"{n} events (need at least 1)" if n else "no events in the telemetry database: collect first",
    )


@dg.asset_check(asset=raw_events, name=NOT_ALL_FAILURES, blocking=True)
def not_all_failures(raw_events: EventHistory) -> dg.AssetCheckResult:
    """At least one Builder call succeeded; all failures means a broken backend, not an estimator to tune."""
    n = raw_events.tally.events
    succeeded = raw_events.tally.succeeded if n else 0
    rate = 100.0 * succeeded / n if n else 0.0
    return dg.AssetCheckResult(
        passed=succeeded > 0,
        metadata={
            "observed_successes": succeeded,
            "observed_events": n,
            "observed_success_rate_pct": rate,
            "threshold_min_successes": 1,
        },
        description=f"{succeeded} of {n} events succeeded ({rate:.1f}%); at least 1 needed",
    )


@dg.asset_check(asset=raw_events, name=PLAUSIBLE_COUNTS, blocking=True)
def token_counts_plausible(raw_events: EventHistory) -> dg.AssetCheckResult:
    """No negative token or deliverable counts, none beyond 1,000,000 tokens or 1,000 deliverables."""
    found = raw_events.tally.implausible
    negative = sum(v["negative"] for v in found.values())
    absurd = sum(v["absurd"] for v in found.values())
    offenders = [f"{c}: {v['negative']} negative, {v['absurd']} > {v['ceiling']:,}" for c, v in found.items()
                 if v["negative"] or v["absurd"]]
    return dg.AssetCheckResult(
        passed=negative == 0 and absurd == 0,
        metadata={
            "observed_negative_values": negative,
            "observed_absurd_values": absurd,
            "threshold_min_value": 0,
            "threshold_max_tokens": MAX_PLAUSIBLE_TOKENS,
            "threshold_max_deliverables": MAX_PLAUSIBLE_DELIVERABLES,
            "by_column": dg.MetadataValue.md(
                markdown_table(["column", "negative", "above ceiling", "ceiling"],
                               [[c, v["negative"], v["absurd"], v["ceiling"]] for c, v in found.items()])
            ),
        },
        description="; ".join(offenders) if offenders else f"all counts within 0..{MAX_PLAUSIBLE_TOKENS:,} tokens",
    )


DATA_QUALITY_CHECKS = [events_exist, not_all_failures, token_counts_plausible]
