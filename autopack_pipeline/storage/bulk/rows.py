"""Generated chunks as table rows: the run ids, which column of ``runs``, ``tiers``, ``phases`` and
``token_estimation_v2_events`` takes which generated column or constant, and the Arrow tables the
loaders hand to ADBC (with DATETIME text for SQLite, ``timestamp[us]`` cast to the column types for
PostgreSQL's binary COPY). Text made of numbers (phase ids, event uids, timestamps) is written as ASCII
codes with numpy straight into Arrow string buffers, without a Python object per value."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from autopack_pipeline.storage.bulk.chunk import SynthChunk

# The model every synthetic event names.
SYNTH_MODEL = "claude-sonnet-4-5"


def run_id_for(seed: int, run: int) -> str:
    return f"synth-{seed}-r{run:05d}"


# A synthetic run's state once its load is complete. A PostgreSQL append commits several times, so its
# runs are LOADING until the last commit is through: a load killed in between (no Python left to undo
# it) is found by that mark and removed by the next one (``postgresql_steps.remove_interrupted_loads``).
# Both are Autopack's own run states, so they fit its native ``runstate`` enum on PostgreSQL too.
LOADED_STATE = "DONE_SUCCESS"
LOADING_STATE = "RUN_CREATED"


@dataclass(frozen=True)
class _Const:
    """A value every synthetic row shares: a literal in the SQL, a repeated column in a COPY."""

    value: object


# (column, source): the source names a column of :func:`_chunk_columns`, or is a constant.
_EVENT_SPEC: tuple[tuple[str, str | _Const], ...] = (
    ("run_id", "run_id"), ("phase_id", "phase_id"), ("timestamp", "timestamp"), ("category", "category"),
    ("complexity", "complexity"), ("deliverable_count", "deliverable_count"),
    ("deliverables_json", "deliverables_json"), ("predicted_output_tokens", "predicted_output_tokens"),
    ("actual_output_tokens", "actual_output_tokens"), ("selected_budget", "selected_budget"),
    ("actual_max_tokens", "actual_max_tokens"), ("success", "success"), ("truncated", "truncated"),
    ("stop_reason", "stop_reason"), ("model", _Const(SYNTH_MODEL)), ("smape_percent", "smape_percent"),
    ("waste_ratio", "waste_ratio"), ("underestimated", "underestimated"), ("is_truncated_output", "truncated"),
    ("is_sot_file", _Const(False)), ("created_at", "timestamp"), ("attempt", "attempt"),
    ("event_uid", "event_uid"), ("actual_is_total_tokens", _Const(False)), ("phase_completed", "phase_completed"),
)
_PHASE_SPEC: tuple[tuple[str, str | _Const], ...] = (
    ("phase_id", "phase_id"), ("run_id", "run_id"), ("tier_id", "tier_id"), ("phase_index", "phase_index"),
    ("name", "phase_id"), ("state", "state"), ("task_category", "category"), ("complexity", "complexity"),
    ("builder_mode", _Const("full_file")), ("max_builder_attempts", _Const(3)), ("max_auditor_attempts", _Const(2)),
    ("incident_token_cap", _Const(50_000)), ("builder_attempts", "attempts"), ("auditor_attempts", _Const(0)),
    ("tokens_used", "tokens_used"), ("minor_issues_count", _Const(0)), ("major_issues_count", _Const(0)),
    ("issue_state", _Const("no_issues")), ("quality_blocked", _Const(False)), ("retry_attempt", "retries"),
    ("revision_epoch", _Const(0)), ("escalation_level", "retries"), ("last_attempt_timestamp", "last"),
    ("last_failure_reason", "failure"), ("created_at", "started"), ("updated_at", "last"),
    ("started_at", "started"), ("completed_at", "completed_at"),
)
_FAILURE_TEXT = "synthetic: the phase did not complete"


def _ascii_text(codes: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """A (rows, width) array of ASCII codes as an Arrow string array (NULL where ``valid`` is False).

    The codes are the array's data buffer as they are and the offsets step by ``width``, so no value
    becomes a Python object on the way.
    """
    rows, width = codes.shape
    data = np.ascontiguousarray(codes, dtype=np.uint8)
    offsets = np.arange(0, (rows + 1) * width, width, dtype=np.int32)  # a chunk's column stays far below 2 GiB
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.StringArray.from_buffers(rows, pa.py_buffer(offsets), pa.py_buffer(data), bitmap)


def _ascii_codes(pieces: list, rows: int) -> np.ndarray:
    """(rows, width) ASCII codes of text made of fixed ``str`` pieces and ``(numbers, digits)``
    zero-padded numbers (the last ``digits`` digits), written with numpy into one array."""
    width = sum(len(piece) if isinstance(piece, str) else piece[1] for piece in pieces)
    # Filled position by position (each a contiguous row here), then transposed once.
    codes = np.empty((width, rows), dtype=np.uint8)
    at = 0
    for piece in pieces:
        if isinstance(piece, str):
            codes[at:at + len(piece)] = np.frombuffer(piece.encode("ascii"), dtype=np.uint8)[:, None]
            at += len(piece)
            continue
        numbers, digits = piece
        rest = np.asarray(numbers, dtype=np.int64)
        for position in range(at + digits - 1, at - 1, -1):
            rest, digit = np.divmod(rest, 10)
            np.add(digit, 48, out=codes[position], casting="unsafe")
        at += digits
    return np.ascontiguousarray(codes.T)


def _composed(pieces: list, rows: int) -> pa.Array:
    """:func:`_ascii_codes` as an Arrow string array."""
    return _ascii_text(_ascii_codes(pieces, rows))


def _timestamp_codes(us: np.ndarray) -> np.ndarray:
    """Microsecond UTC timestamps as the ASCII codes of SQLAlchemy's SQLite DATETIME text
    (``YYYY-MM-DD HH:MM:SS.ffffff``): the calendar date from numpy's datetime64, the rest by division."""
    us = np.asarray(us, dtype=np.int64)
    days, in_day = np.divmod(us, 86_400_000_000)
    day = days.astype("datetime64[D]")
    month_start = day.astype("datetime64[M]")
    seconds, fraction = np.divmod(in_day, 1_000_000)
    return _ascii_codes([
        (day.astype("datetime64[Y]").astype(np.int64) + 1970, 4), "-", (month_start.astype(np.int64) % 12 + 1, 2),
        "-", ((day - month_start.astype("datetime64[D]")).astype(np.int64) + 1, 2), " ", (seconds // 3600, 2), ":",
        (seconds // 60 % 60, 2), ":", (seconds % 60, 2), ".", (fraction, 6),
    ], len(us))


def _text_timestamps(us: np.ndarray) -> list[str]:
    """Microsecond UTC timestamps as DATETIME text, a list of ``str``."""
    return _ascii_text(_timestamp_codes(us)).to_pylist()


def _phase_id_codes(chunk: SynthChunk, seed: int, runs: np.ndarray, phase_index: np.ndarray) -> pa.Array:
    if chunk.phase_ids == "reused":
        return _composed(["phase-", (phase_index + 1, chunk.phase_digits)], len(phase_index))
    return _composed([f"s{seed}-r", (runs, chunk.run_digits), "-p", (phase_index + 1, chunk.phase_digits)],
                     len(phase_index))


def phase_ids_for(chunk: SynthChunk, seed: int, runs: np.ndarray, phase_index: np.ndarray) -> np.ndarray:
    """The phase ids of rows of ``chunk`` (their run numbers and 0-based phase numbers in the run).

    ``per-run``: ``s<seed>-r<run>-p<phase>``, distinct in every run; ``reused``: ``phase-<phase>``.
    """
    return _phase_id_codes(chunk, seed, runs, phase_index).to_numpy(zero_copy_only=False)


def _labels(chunk: SynthChunk, columns: dict, name: str) -> pa.Array:
    """A text column of ``chunk``'s phases or events (``columns``) as Arrow: its texts taken by code where
    the chunk has them (:attr:`SynthChunk.labels`), else from the object column (None: NULL)."""
    texts = chunk.labels.get(name)
    if texts is not None and f"{name}_code" in columns:
        return texts.take(pa.array(columns[f"{name}_code"]))
    return pa.array(columns[name], type=pa.string(), from_pandas=True)


def _chunk_columns(chunk: SynthChunk, run_ids: pa.Array, tier_pk: np.ndarray | None, seed: int) -> tuple[dict, dict]:
    """The phases and events of one chunk as named columns: Arrow arrays for text, numpy for numbers,
    timestamps as µs since the epoch (negative: NULL). Without ``tier_pk`` (the tier row id of each
    run) the phases have no ``tier_id`` column."""
    ph, ev = chunk.phases, chunk.events
    completed = pa.array(ph["completed"])
    retries = ph["attempts"] - 1
    phase_cols = {
        "phase_id": _phase_id_codes(chunk, seed, ph["run"], ph["phase_index"]),
        "run_id": run_ids.take(pa.array(ph["run"])),
        "phase_index": ph["phase_index"],
        "state": pc.if_else(completed, "COMPLETE", "FAILED"),
        "category": _labels(chunk, ph, "category"),
        "complexity": _labels(chunk, ph, "complexity"),
        "attempts": ph["attempts"],
        "tokens_used": ph["tokens_used"],
        "retries": retries,
        "last": ph["last_us"],
        "started": ph["started_us"],
        "failure": pc.if_else(completed, pa.scalar(None, pa.string()), _FAILURE_TEXT),
        "completed_at": np.where(ph["completed"], ph["last_us"], -1),  # -1: NULL
    }
    if tier_pk is not None:
        phase_cols["tier_id"] = tier_pk[ph["run"]]
    event_cols = {
        "run_id": run_ids.take(pa.array(ev["run"])),
        "phase_id": _phase_id_codes(chunk, seed, ev["run"], ev["phase_index"]),
        "timestamp": ev["timestamp_us"],
        "category": _labels(chunk, ev, "category"),
        "complexity": _labels(chunk, ev, "complexity"),
        "deliverable_count": ev["deliverable_count"],
        "deliverables_json": _labels(chunk, ev, "deliverables_json"),
        "predicted_output_tokens": ev["predicted_output_tokens"],
        "actual_output_tokens": ev["actual_output_tokens"],
        "selected_budget": ev["selected_budget"],
        "actual_max_tokens": ev["actual_max_tokens"],
        "success": ev["success"],
        "truncated": ev["truncated"],
        "stop_reason": _labels(chunk, ev, "stop_reason"),
        "smape_percent": ev["smape_percent"],
        "waste_ratio": ev["waste_ratio"],
        "underestimated": ev["underestimated"],
        "attempt": ev["attempt"],
        "event_uid": _composed([f"synth-{seed}-", (ev["event_number"], 10)], len(ev["event_number"])),
        "phase_completed": ev["phase_completed"],
    }
    return phase_cols, event_cols


_TIMESTAMP_SOURCES = {"timestamp", "last", "started", "completed_at"}


def _source_array(values: pa.Array | np.ndarray, source: str, *, text_timestamps: bool) -> pa.Array:
    """One generated column as Arrow: timestamps as ``timestamp[us]`` or, with ``text_timestamps``, as
    SQLite's DATETIME text (NULL where the µs value is negative)."""
    if isinstance(values, pa.Array):
        return values
    if source not in _TIMESTAMP_SOURCES:
        return pa.array(values)
    valid = values >= 0
    if text_timestamps:
        return _ascii_text(_timestamp_codes(np.maximum(values, 0)), valid)
    return pa.array(values, type=pa.timestamp("us"), mask=~valid)


def _arrow_columns(columns: dict, spec: tuple, n: int, *, text_timestamps: bool = False) -> pa.Table:
    """The rows of ``spec`` as an Arrow table, a column per table column: constants repeated, a source
    feeding two columns converted once."""
    arrays: dict[str, pa.Array] = {}
    converted: dict[str, pa.Array] = {}
    for column, source in spec:
        if isinstance(source, _Const):
            arrays[column] = pa.repeat(source.value, n)
            continue
        if source not in converted:
            converted[source] = _source_array(columns[source], source, text_timestamps=text_timestamps)
        arrays[column] = converted[source]
    return pa.table(arrays)


def _sqlite_insert(table: str, spec: tuple) -> tuple[str, tuple[str, ...]]:
    """A prepared INSERT for ``spec`` that binds each distinct source once: constants are SQL literals
    and columns sharing a source share a numbered parameter (``?N``). Returns it with the sources in
    parameter order (what :func:`_source_table` builds; the same order as :func:`_sqlite_copy`'s)."""
    values, sources = _select_list(spec, lambda i: f"?{i + 1}")
    columns = ", ".join(column for column, _source in spec)
    return f"INSERT INTO {table} ({columns}) VALUES ({values})", sources


def _select_list(spec: tuple, parameter) -> tuple[str, tuple[str, ...]]:
    """The values of ``spec``'s columns, in order: constants as SQL literals, each distinct source
    as ``parameter(i)`` for its position ``i`` among the sources (returned in that order)."""
    sources: list[str] = []
    values = []
    for _column, source in spec:
        if isinstance(source, _Const):
            value = source.value
            values.append("'" + value.replace("'", "''") + "'" if isinstance(value, str) else str(int(value)))
            continue
        if source not in sources:
            sources.append(source)
        values.append(parameter(sources.index(source)))
    return ", ".join(values), tuple(sources)


def _sqlite_copy(table: str, spec: tuple, stage: str) -> tuple[str, tuple[str, ...]]:
    """An ``INSERT ... SELECT`` for ``spec`` from the table ``stage``, which holds each distinct source
    column once (``p0``, ``p1``... in the order returned, what :func:`_source_table` builds), taking its
    rows in the order they were added. Constants are SQL literals; columns sharing a source read the
    same column."""
    values, sources = _select_list(spec, lambda i: f"p{i}")
    columns = ", ".join(column for column, _source in spec)
    return f"INSERT INTO {table} ({columns}) SELECT {values} FROM {stage} ORDER BY rowid", sources


def _source_table(columns: dict, sources: tuple[str, ...]) -> pa.Table:
    """The rows a :func:`_sqlite_insert` binds or a :func:`_sqlite_copy` reads: each source once,
    timestamps as text."""
    return pa.table({f"p{i}": _source_array(columns[source], source, text_timestamps=True)
                     for i, source in enumerate(sources)})


def _cast_to(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with the column types of ``schema`` (a database's own column types, for binary COPY)."""
    return table.cast(pa.schema([schema.field(name) for name in table.column_names]))


def _repeated(values: dict, rows: int) -> pa.Table:
    """A table of ``rows`` rows: Arrow arrays as they are, any other value repeated in every row."""
    return pa.table({name: value if isinstance(value, pa.Array) else pa.repeat(value, rows)
                     for name, value in values.items()})


def _run_table(seed: int, run_ids: pa.Array, start_text: str, state: str = LOADED_STATE) -> pa.Table:
    """The load's runs, one per id; their counts are written at the end of the load."""
    return _repeated({
        "id": run_ids, "state": state, "created_at": start_text, "updated_at": start_text,
        "started_at": start_text, "completed_at": None, "safety_profile": "normal", "run_scope": "multi_tier",
        "token_cap": 5_000_000, "max_phases": 0, "max_duration_minutes": 120, "tokens_used": 0, "ci_runs_used": 0,
        "minor_issues_count": 0, "major_issues_count": 0, "promotion_eligible_to_main": "false",
        "goal_anchor": f"synthetic telemetry (autopack-telemetry synth, seed {seed})",
    }, len(run_ids))


def _tier_table(run_ids: pa.Array, start_text: str) -> pa.Table:
    """One tier ``T1`` per run."""
    return _repeated({
        "tier_id": "T1", "run_id": run_ids, "tier_index": 0, "name": "Synthetic tier", "state": "COMPLETE",
        "token_cap": 5_000_000, "ci_run_cap": 20, "max_major_issues_tolerated": 0, "tokens_used": 0,
        "ci_runs_used": 0, "minor_issues_count": 0, "major_issues_count": 0, "cleanliness": "clean",
        "created_at": start_text, "updated_at": start_text,
    }, len(run_ids))


def _tier_keys(stored: pa.Table, run_ids: pa.Array) -> np.ndarray:
    """The row id of each run's tier, in run order, from the stored tiers' ``run_id`` and ``id``."""
    at = pc.index_in(run_ids, value_set=stored["run_id"])
    if at.null_count:
        raise RuntimeError(f"{at.null_count} of the load's runs have no tier row")
    return stored["id"].take(at).to_numpy().astype(np.int64)
