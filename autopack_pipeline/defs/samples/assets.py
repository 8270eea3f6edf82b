"""Clean samples: the events calibration may learn from."""

import dagster as dg

from autopack_pipeline.defs.events.io_manager import ANALYSIS_REACH
from autopack_pipeline.defs.shared.automation import ON_NEW_EVENTS_OR_NEW_DAY
from autopack_pipeline.defs.shared.metadata import markdown_table, sample_group_metadata
from autopack_pipeline.domain.analysis import EventArrays
from autopack_pipeline.domain.targets import MIN_GROUP_SAMPLES
from autopack_pipeline.services.analysis import events_for_analysis
from autopack_pipeline.services.pipeline import sample_stage
from autopack_pipeline.settings import load_settings


class SamplesConfig(dg.Config):
    dedup: bool = True


@dg.asset(group_name="metrics", kinds={"numpy"}, automation_condition=ON_NEW_EVENTS_OR_NEW_DAY,
          ins={"raw_events": dg.AssetIn(metadata=ANALYSIS_REACH)})
def success_samples(config: SamplesConfig, raw_events: EventArrays) -> dg.MaterializeResult:
    """Successful, untruncated events with at least 50 output tokens, one per (run, phase) unless
    dedup is off; categories and complexities in their canonical spelling; over the rolling window
    the calibration gate reads (the last 28 UTC days of telemetry, AUTOPACK_METRICS_WINDOW_DAYS; 0 = all events).
    Handed on as counts per (category, complexity) group with the reasons the other events were left out.
    """
    windowed = events_for_analysis(load_settings(), raw_events)
    summary = sample_stage(windowed, dedup=config.dedup)
    counts = summary.group_counts
    return dg.MaterializeResult(
        value=summary,
        metadata={
            "window": dg.MetadataValue.text(windowed.label),
            "dagster/row_count": summary.count,
            "sample_count": summary.count,
            **sample_group_metadata(counts, min_samples=MIN_GROUP_SAMPLES),
            "excluded_count": sum(summary.exclusions.values()),
            "exclusions": dg.MetadataValue.json(summary.exclusions),
            "groups": dg.MetadataValue.md(
                markdown_table(["category", "complexity", "clean samples"], [[c, x, n] for (c, x), n in counts.items()])
            ),
        },
    )
