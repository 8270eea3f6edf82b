"""Clean samples: the events calibration may learn from."""

import dagster as dg
import pandas as pd

from autopack_pipeline.assets.metadata import events_column_schema, markdown_table, sample_group_metadata
from autopack_pipeline.domain.calibration import group_samples
from autopack_pipeline.domain.gates import DEFAULT_MIN_GROUP_SAMPLES
from autopack_pipeline.domain.samples import clean_samples, sample_exclusions


class SamplesConfig(dg.Config):
    dedup: bool = True


@dg.asset(group_name="metrics", kinds={"pandas"})
def success_samples(config: SamplesConfig, raw_events: pd.DataFrame) -> dg.MaterializeResult:
    """Successful, untruncated events with at least 50 output tokens, one per (run, phase) unless
    dedup is off; categories and complexities in their canonical spelling.
    """
    samples = clean_samples(raw_events, dedup=config.dedup)
    exclusions = sample_exclusions(raw_events, dedup=config.dedup)
    groups = group_samples(samples)
    return dg.MaterializeResult(
        value=samples,
        metadata={
            "dagster/row_count": len(samples),
            "dagster/column_schema": events_column_schema(),
            "sample_count": len(samples),
            **sample_group_metadata(groups, min_samples=DEFAULT_MIN_GROUP_SAMPLES),
            "excluded_count": sum(exclusions.values()),
            "exclusions": dg.MetadataValue.json(exclusions),
            "groups": dg.MetadataValue.md(
                markdown_table(["category", "complexity", "clean samples"], [[c, x, len(g)] for (c, x), g in groups.items()])
            ),
        },
    )
