"""The run and phase codes of a part about to be written (``phases.py`` says what the codes are).

Runs and phases that earlier parts hold (a run whose events a refresh splits; the parts that hold it
are found from their tallies, ``tallies.py``, or in memory for the part written just before) take the
codes those parts gave them; every other run gets a new code in the order of its first row, every
other phase one per phase of the part (encoded in pieces, ``phases.PhaseEncoder``), past the store's
last (the manifest's ``run_codes`` and ``phase_codes``).

Each part's entry in the manifest keeps its lowest and highest run id (:func:`run_id_range`), so a part
whose range the new runs fall outside is passed over without reading its tally: run ids that grow with
time (Autopack's, ours, the synthetic loads') leave the earlier parts' tallies unread, and a refresh
costs the same after a hundred parts as after one. Other ids (random ones) fall inside and are looked
up in the tallies as before; so is every part of a store written before the ranges were kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autopack_pipeline.storage.arrow_modules import pa, pc
from autopack_pipeline.storage.columnar.encoding import arrow_of, filled, numpy_of, read_parquet
from autopack_pipeline.storage.columnar.phases import PHASE_CODE, RUN_CODE, PhaseEncoder
from autopack_pipeline.storage.columnar.tallies import kept_tally

_INT32_MAX = np.iinfo(np.int32).max


@dataclass
class Written:
    """What the parts one refresh wrote tell the codes of its later parts, kept in memory instead of read
    back: each part's run ids, and the rows of the last (a run the refresh splits goes on in the next)."""

    runs: dict[str, pa.Array] = field(default_factory=dict)  # part file -> its run ids
    last: tuple[str, pa.Table] | None = None  # part file, its run and phase ids and codes

    def keep(self, name: str, table: pa.Table, runs: pa.Array) -> None:
        self.runs[name] = runs
        self.last = (name, table.select(["run_id", "phase_id", RUN_CODE, PHASE_CODE]))


def run_id_range(run_ids: pa.Array) -> dict[str, str | None]:
    """A part's lowest and highest run id (its manifest entry's ``min_run_id``, ``max_run_id``; None and
    None when it names no run). Arrow orders strings by their UTF-8 bytes, which is the order of their
    code points, as Python compares them."""
    low, high = pc.min_max(run_ids).values()
    return {"min_run_id": low.as_py(), "max_run_id": high.as_py()}


def _may_hold(part: dict[str, Any], lowest: str, highest: str) -> bool:
    """Whether ``part`` can hold a run id between ``lowest`` and ``highest``: unknown (a part written
    before the ranges were kept) counts as yes."""
    if "min_run_id" not in part:
        return True
    return part["min_run_id"] is not None and part["min_run_id"] <= highest and lowest <= part["max_run_id"]


def part_codes(directory: Path, manifest: dict[str, Any], table: pa.Table,
               written: Written | None = None) -> tuple[pa.Array, pa.Array]:
    """The run codes and phase codes of a new part's rows (``table``, the store's schema), continuing
    the codes of the parts ``manifest`` lists (``written``: what this refresh knows of some of them); the
    manifest's next free codes move past the new ones. Null where an id is missing."""
    column = table.column("run_id").combine_chunks()
    runs = numpy_of(filled(column.indices, -1)).astype(np.int32)  # the part's own run codes
    dictionary = column.dictionary.cast(pa.string())
    local = PhaseEncoder(np.zeros(table.num_rows, dtype=np.int32))
    local.add(table.column("phase_id"), 0)
    local_phases = local.finish(runs)
    present = np.zeros(len(dictionary), dtype=bool)  # the dictionary's entries the rows name
    present[runs[runs >= 0]] = True
    run_of_entry = np.full(len(dictionary), -1, dtype=np.int64)  # per entry of the dictionary, its code
    phases = np.full(table.num_rows, -1, dtype=np.int32)
    _take_earlier_codes(directory, manifest, table, runs, dictionary.filter(arrow_of(present)), dictionary,
                        run_of_entry, phases, written or Written())
    _number_new(manifest, "run_codes", run_of_entry, present & (run_of_entry < 0), np.arange(len(dictionary)))
    run_codes = np.where(runs >= 0, np.append(run_of_entry, -1)[runs], -1)
    _number_new(manifest, "phase_codes", phases, (phases < 0) & (local_phases >= 0), local_phases)
    return _codes_array(run_codes), _codes_array(phases)


def _number_new(manifest: dict[str, Any], counter: str, codes: np.ndarray, fresh: np.ndarray,
                local: np.ndarray) -> None:
    """New codes past the manifest's ``counter`` into ``codes`` where ``fresh``: one per local code there
    (``local``: the places' codes in the part), in the order of the local codes."""
    used = np.zeros(int(local.max()) + 1 if len(local) else 0, dtype=bool)
    used[local[fresh]] = True
    rank = np.cumsum(used, dtype=np.int64) - 1
    base = int(manifest.get(counter, 0))
    codes[fresh] = base + rank[local[fresh]]
    top = base + int(used.sum())
    if top > _INT32_MAX:
        raise OverflowError(f"{top} {counter.replace('_', ' ')} do not fit int32")
    manifest[counter] = top


def _codes_array(codes: np.ndarray) -> pa.Array:
    """Codes as an int32 Arrow array, negative ones null (built from buffers: no pandas import)."""
    valid = codes >= 0
    bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.int32(), len(codes), [bitmap, pa.py_buffer(np.where(valid, codes, 0).astype(np.int32))])


def _take_earlier_codes(directory: Path, manifest: dict[str, Any], table: pa.Table, runs: np.ndarray,
                        names: pa.Array, dictionary: pa.Array, run_of_entry: np.ndarray, phases: np.ndarray,
                        written: Written) -> None:
    """The codes the earlier parts gave the runs of ``table`` they hold (into ``run_of_entry``, by entry
    of the part's run ``dictionary``; ``names``: the run ids its rows name) and its phases they hold (into
    ``phases``, by row). Runs are matched on the parts' run dictionaries (tens of thousands of ids, not a
    string per row)."""
    if not len(names):
        return
    lowest, highest = run_id_range(names).values()
    earlier = []
    for part in manifest["parts"]:
        if not _may_hold(part, lowest, highest):
            continue
        held = written.runs.get(part["file"])
        if held is None and (kept := kept_tally(directory, part["file"])) is not None:
            held = kept[1].column("run_id")  # its runs, without reading the part's rows
        if held is not None and not pc.any(pc.is_in(names, value_set=held)).as_py():
            continue
        if written.last is not None and written.last[0] == part["file"]:
            rows = written.last[1]
        else:
            rows = read_parquet(directory / part["file"], ["run_id", "phase_id", RUN_CODE, PHASE_CODE])
        column = rows.column("run_id").combine_chunks()
        mine = pc.is_in(column.dictionary.cast(pa.string()), value_set=names)
        if pc.any(mine).as_py():
            earlier.append(rows.filter(arrow_of(np.append(numpy_of(mine), False)[numpy_of(filled(column.indices, -1))])))
    if not earlier:
        return
    before = pa.concat_tables(earlier, promote_options="permissive")
    # Runs: each entry of the part's dictionary that an earlier row names takes that row's run code.
    run_text = before.column("run_id").cast(pa.string())
    at = numpy_of(filled(pc.index_in(dictionary, value_set=run_text.combine_chunks()), -1))
    found = at >= 0
    run_of_entry[found] = numpy_of(before.column(RUN_CODE).combine_chunks())[at[found]]
    # Phases: (run id, phase id) as one integer over both sides, each id dictionary-encoded over both.
    mine = np.flatnonzero(np.append(found, False)[runs])  # runs -1 (missing) pick the False appended
    before = before.filter(pc.is_valid(before.column(PHASE_CODE)))
    if not len(mine) or not before.num_rows:
        return
    taken = table.select(["run_id", "phase_id"]).take(arrow_of(mine))
    run_text = pa.chunked_array([*before.column("run_id").cast(pa.string()).chunks,
                                 *taken.column("run_id").cast(pa.string()).chunks])
    phase_text = pa.chunked_array([*before.column("phase_id").chunks, *taken.column("phase_id").chunks],
                                  type=pa.string())
    run_key = numpy_of(pc.dictionary_encode(run_text).combine_chunks().indices).astype(np.int64)
    phase_key = numpy_of(filled(pc.dictionary_encode(phase_text).combine_chunks().indices, -1)).astype(np.int64)
    key = run_key * (int(phase_key.max()) + 2) + phase_key
    old_keys, new_keys = key[:before.num_rows], key[before.num_rows:]
    old_codes = numpy_of(before.column(PHASE_CODE).combine_chunks())
    order = np.argsort(old_keys, kind="stable")
    old_keys, old_codes = old_keys[order], old_codes[order]
    at = np.minimum(np.searchsorted(old_keys, new_keys), len(old_keys) - 1)
    matched = (old_keys[at] == new_keys) & (phase_key[before.num_rows:] >= 0)
    phases[mine[matched]] = old_codes[at[matched]]
