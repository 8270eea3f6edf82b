"""Each part's tally (``domain/event_tally``) and its events per run, kept in a small file beside the part.

The whole-history figures (the data-quality checks, raw_events' metadata) are sums over events, so a
snapshot adds up its parts' tallies (``storage/snapshot.py``) instead of reading every event. A part
is tallied as it is written (extraction, refresh, compaction), from the table already in memory: the
first run after an extraction then reads no event for them. Parts are never rewritten (a compaction
writes a new part), so a tally stays true as long as its part exists.

A store written before parts were tallied at writing has parts without a file here: the snapshot
tallies those from the part's rows the first time it is asked, and keeps the tally the same way.

File: ``tally-<part file>``, Parquet, its rows the part's events per run id (a run may have a row per
chunk; the reader sums them), the tally as JSON in the schema's metadata.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from autopack_pipeline.domain.event_tally import EventTally, tally_events
from autopack_pipeline.storage.arrow_modules import pa, pq
from autopack_pipeline.storage.columnar.arrays import counted_arrays
from autopack_pipeline.storage.columnar.encoding import arrow_of, filled, numpy_of, read_parquet

logger = logging.getLogger("autopack_pipeline.storage.columnar")

TALLY_PREFIX = "tally-"
_TALLY_FORMAT = b"1"


def tally_file_of(part_file: str) -> str:
    return f"{TALLY_PREFIX}{part_file}"


def tally_of_table(table: pa.Table) -> tuple[EventTally, pa.Table]:
    """The tally and the events per run of a part's rows in memory (the store's schema): the numbers
    and flags through the same conversion as a part read back (``arrays.counted_arrays``), run ids
    counted by their dictionary codes (no string per row)."""
    return tally_events(counted_arrays(table)), run_counts(table.column("run_id"))


def keep_tally(directory: Path, part_file: str, tally: EventTally, runs: pa.Table) -> None:
    """Write the tally file of ``part_file`` (atomically: a reader sees the whole file or none). A store
    that cannot be written still answers: the part is tallied from its rows when asked."""
    path = directory / tally_file_of(part_file)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        pq.write_table(runs.replace_schema_metadata({b"format": _TALLY_FORMAT,
                                                     b"tally": json.dumps(tally.as_dict()).encode()}), tmp)
        os.replace(tmp, path)
    except OSError as exc:
        logger.warning("could not keep the tally of %s: %s", part_file, exc)


def kept_tally(directory: Path, part_file: str) -> tuple[EventTally, pa.Table] | None:
    """The tally and run counts kept for ``part_file``, when there is a readable file of this format."""
    try:
        kept = read_parquet(directory / tally_file_of(part_file))
        metadata = kept.schema.metadata or {}
        if metadata.get(b"format") == _TALLY_FORMAT:
            return EventTally.from_dict(json.loads(metadata[b"tally"])), kept.replace_schema_metadata(None)
    except (FileNotFoundError, OSError, pa.ArrowInvalid, KeyError, ValueError, TypeError):
        pass  # missing (an older store) or unreadable: tallied from the part's rows
    return None


def runs_table(names: pa.Array | list[str], counts: pa.Array | list[int]) -> pa.Table:
    if isinstance(names, list):  # only ever empty lists: no Python value goes to Arrow per row
        names, counts = pa.nulls(0, pa.string()), arrow_of(np.zeros(0, dtype=np.int64))
    return pa.table({"run_id": names, "events": counts})


def run_counts(run_ids: pa.ChunkedArray) -> pa.Table:
    """Events per run id of a dictionary-encoded column (a run may have a row per chunk; missing ids
    are not counted)."""
    names, counts = [], []
    for chunk in run_ids.chunks:
        per_code = np.bincount(numpy_of(filled(chunk.indices, -1)) + 1,
                               minlength=len(chunk.dictionary) + 1)[1:]
        present = per_code > 0
        names.append(chunk.dictionary.cast(pa.string()).filter(arrow_of(present)))
        counts.append(arrow_of(per_code[present].astype(np.int64)))
    if not names:
        return runs_table([], [])
    return runs_table(pa.concat_arrays(names), pa.concat_arrays(counts))
