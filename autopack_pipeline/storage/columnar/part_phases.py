"""The phase codes of a part about to be written (``phases.py`` says what a code is): its own phases
encoded, then the phases of runs that earlier parts hold (a run whose events a refresh splits; the parts
that hold it are found from their tallies, ``tallies.py``) given the codes those parts gave them, every
other phase a new code past the store's last (the manifest's ``phase_codes``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autopack_pipeline.storage.columnar.encoding import arrow_of, filled, numpy_of, read_parquet
from autopack_pipeline.storage.columnar.phases import PHASE_CODE, PhaseEncoder
from autopack_pipeline.storage.columnar.tallies import kept_tally


def run_codes(column: pa.ChunkedArray) -> np.ndarray:
    """A dictionary-encoded column of one chunk (a part in memory) as its codes, -1 where missing."""
    return numpy_of(filled(column.combine_chunks().indices, -1)).astype(np.int32)


def part_phase_codes(directory: Path, manifest: dict[str, Any], table: pa.Table) -> pa.Array:
    """The phase codes of a new part's rows (``table``, the store's schema), continuing the codes of
    the parts ``manifest`` lists; the manifest's next free code moves past the new ones. Null where the
    phase id is missing."""
    runs = run_codes(table.column("run_id"))
    local = PhaseEncoder(np.zeros(table.num_rows, dtype=np.int32))
    local.add(table.column("phase_id"), 0)
    local_codes = local.finish(runs)
    codes = np.full(table.num_rows, -1, dtype=np.int32)
    _take_earlier_codes(directory, manifest, table, runs, codes)
    fresh = (codes < 0) & (local_codes >= 0)
    used = np.zeros(int(local_codes.max()) + 1 if table.num_rows else 0, dtype=bool)
    used[local_codes[fresh]] = True
    rank = np.cumsum(used, dtype=np.int64) - 1  # a new code per local code in use, in their order
    base = int(manifest.get("phase_codes", 0))
    codes[fresh] = base + rank[local_codes[fresh]]
    top = base + int(used.sum())
    if top > np.iinfo(np.int32).max:
        raise OverflowError(f"{top} phase codes do not fit int32")
    manifest["phase_codes"] = top
    valid = codes >= 0
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.int32(), len(codes), [bitmap, pa.py_buffer(np.where(valid, codes, 0))])


def _take_earlier_codes(directory: Path, manifest: dict[str, Any], table: pa.Table, runs: np.ndarray,
                        codes: np.ndarray) -> None:
    """Into ``codes``, the code the earlier parts gave each phase of ``table`` they hold (its run and
    phase id both there)."""
    names = table.column("run_id").combine_chunks().dictionary.cast(pa.string())
    present = np.zeros(len(names), dtype=bool)
    present[runs[runs >= 0]] = True
    names = names.filter(arrow_of(present))
    if not len(names) or not manifest["parts"]:
        return
    earlier = []
    for part in manifest["parts"]:
        kept = kept_tally(directory, part["file"])  # its runs, without reading the part's rows
        held = kept[1].column("run_id") if kept is not None else read_parquet(
            directory / part["file"], ["run_id"]).column("run_id").cast(pa.string())
        if pc.any(pc.is_in(held, value_set=names)).as_py():
            rows = read_parquet(directory / part["file"], ["run_id", "phase_id", PHASE_CODE])
            rows = rows.filter(pc.is_in(rows.column("run_id").cast(pa.string()), value_set=names))
            earlier.append(rows.filter(pc.is_valid(rows.column(PHASE_CODE))))
    if not earlier:
        return
    before = pa.concat_tables(earlier, promote_options="permissive")
    mine = np.flatnonzero(numpy_of(pc.is_in(table.column("run_id").cast(pa.string()), value_set=before.column(
        "run_id").cast(pa.string())).combine_chunks().fill_null(False)))
    if not len(mine):
        return
    # (run id, phase id) as one integer over both sides: each id dictionary-encoded over both at once.
    rows_of_table = arrow_of(mine)
    run_text = pa.chunked_array([*before.column("run_id").cast(pa.string()).chunks,
                                 table.column("run_id").cast(pa.string()).take(rows_of_table).combine_chunks()])
    phase_text = pa.chunked_array([*before.column("phase_id").chunks,
                                   table.column("phase_id").take(rows_of_table).combine_chunks()], type=pa.string())
    run_key = numpy_of(pc.dictionary_encode(run_text).combine_chunks().indices).astype(np.int64)
    phase_key = numpy_of(filled(pc.dictionary_encode(phase_text).combine_chunks().indices, -1)).astype(np.int64)
    key = run_key * (int(phase_key.max()) + 2) + phase_key
    old_keys, new_keys = key[:before.num_rows], key[before.num_rows:]
    old_codes = numpy_of(before.column(PHASE_CODE).combine_chunks())
    order = np.argsort(old_keys, kind="stable")
    old_keys, old_codes = old_keys[order], old_codes[order]
    at = np.minimum(np.searchsorted(old_keys, new_keys), len(old_keys) - 1)
    found = (old_keys[at] == new_keys) & (phase_key[before.num_rows:] >= 0)
    codes[mine[found]] = old_codes[at[found]]
