"""The parts of a columnar store: which files a part has, which parts can hold an id range, and the
rows of a part inside it."""

from __future__ import annotations

from typing import Any

from autopack_pipeline.storage.arrow_modules import pa
from autopack_pipeline.storage.columnar.encoding import arrow_of, numpy_of
from autopack_pipeline.storage.columnar.tallies import tally_file_of


def inputs_file_of(part_file: str) -> str:
    return part_file.replace("part-", "inputs-", 1)


def files_of(part: dict[str, Any]) -> list[str]:
    """The files of ``part``: its rows, its prediction inputs when read, and its tally (tallies.py),
    which a store written by an earlier version may lack."""
    return [part["file"], *([part["inputs"]] if "inputs" in part else []), tally_file_of(part["file"])]


def parts_holding(manifest: dict[str, Any], id_range: tuple[int, int] | None) -> list[dict[str, Any]]:
    """The manifest's parts that can hold events of ``id_range`` (lowest, highest id; None: every part)."""
    return [p for p in manifest["parts"]
            if id_range is None or (p["max_event_id"] >= id_range[0] and p["min_event_id"] <= id_range[1])]


def rows_within(table: pa.Table, id_range: tuple[int, int] | None) -> pa.Table:
    """The rows of ``table`` whose ``event_id`` lies in ``id_range`` (both ends included; None: all)."""
    if id_range is None:
        return table
    ids = numpy_of(table.column("event_id"))  # in numpy: Arrow scalars load pandas (encoding.arrow_of)
    keep = (ids >= id_range[0]) & (ids <= id_range[1])
    return table if keep.all() else table.filter(arrow_of(keep))
