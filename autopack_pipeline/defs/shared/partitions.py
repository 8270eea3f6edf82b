"""The day partitions of the event-derived metric assets.

Daily partitions from a fixed start date rather than dynamic partitions added for the days that
have events. Trade-off: the fixed calendar lists days without events (they materialise as empty
days, which is what they are), and events before the start date are in no partition (move it back
with AUTOPACK_PARTITIONS_START); in exchange Dagster knows the partitions are time: the UI plots
them in date order, a backfill takes a date range, and declarative automation can ask for "the
latest days" (in_latest_time_window), none of which dynamic keys offer. ``end_offset=1`` makes today
a partition: a collection run writes today's events, and today's figures are the ones to watch.
"""

import dagster as dg

from autopack_pipeline.settings import partitions_start

event_days = dg.DailyPartitionsDefinition(start_date=partitions_start(), end_offset=1, timezone="UTC")
