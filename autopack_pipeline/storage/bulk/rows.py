"""Generated chunks as table rows: the run ids, which column of ``runs``, ``tiers``, ``phases`` and
``token_estimation_v2_events`` takes which generated column or constant, and the encodings the loaders
hand to the database (Arrow tables: ingested by ADBC into SQLite, with DATETIME text, and written as CSV
for PostgreSQL's ``COPY``). Text columns such as phase ids and event uids are built as code
points with numpy, without a Python loop per row."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from autopack_pipeline.storage.bulk.chunk import SynthChunk

# The model every synthetic event names.
SYNTH_MODEL = "claude-sonnet-4-5"


def run_id_for(seed: int, run: int) -> str:
    return f"synth-{seed}-r{run:05d}"


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
_RUN_COLUMNS = (
    "id", "state", "created_at", "updated_at", "started_at", "completed_at", "safety_profile", "run_scope",
    "token_cap", "max_phases", "max_duration_minutes", "tokens_used", "ci_runs_used", "minor_issues_count",
    "major_issues_count", "promotion_eligible_to_main", "goal_anchor",
)
_TIER_COLUMNS = (
    "tier_id", "run_id", "tier_index", "name", "state", "token_cap", "ci_run_cap", "max_major_issues_tolerated",
    "tokens_used", "ci_runs_used", "minor_issues_count", "major_issues_count", "cleanliness", "created_at",
    "updated_at",
)
_FAILURE_TEXT = "synthetic: the phase did not complete"


def _fixed_width_text(codes: np.ndarray) -> np.ndarray:
    """A (rows, width) uint32 array of code points as a numpy unicode array of that width."""
    codes = np.ascontiguousarray(codes, dtype=np.uint32)
    return codes.view(f"<U{codes.shape[1]}").ravel()


def _text_timestamp_array(us: np.ndarray) -> np.ndarray:
    """Microsecond UTC timestamps as SQLAlchemy's SQLite DATETIME text (``YYYY-MM-DD HH:MM:SS.ffffff``),
    a numpy unicode array."""
    text = np.datetime_as_string(np.asarray(us, dtype=np.int64).astype("datetime64[us]"), unit="us")
    codes = np.ascontiguousarray(text).view(np.uint32).reshape(len(text), -1).copy()
    codes[:, 10] = ord(" ")  # numpy writes the ISO "T"
    return _fixed_width_text(codes)


def _text_timestamps(us: np.ndarray) -> list[str]:
    """:func:`_text_timestamp_array` as a list of ``str``."""
    return _text_timestamp_array(us).tolist()


def _numbered(prefix: str, numbers: np.ndarray, digits: int) -> np.ndarray:
    """``prefix`` + zero-padded ``numbers``, built as code points without a Python loop."""
    return _composed([prefix, (numbers, digits)], len(numbers))


def _composed(pieces: list, rows: int) -> np.ndarray:
    """Text made of fixed ``str`` pieces and ``(numbers, digits)`` zero-padded numbers, per row, as code
    points with numpy (no Python loop per row)."""
    blocks = []
    for piece in pieces:
        if isinstance(piece, str):
            head = np.frombuffer(piece.encode("utf-32-le"), dtype=np.uint32)
            blocks.append(np.broadcast_to(head, (rows, len(head))))
        else:
            numbers, digits = piece
            rest = np.asarray(numbers, dtype=np.int64).copy()
            codes = np.empty((rows, digits), dtype=np.uint32)
            for position in range(digits - 1, -1, -1):
                codes[:, position] = 48 + rest % 10
                rest //= 10
            blocks.append(codes)
    return _fixed_width_text(np.hstack(blocks)).astype(object)


def phase_ids_for(chunk: SynthChunk, seed: int, runs: np.ndarray, phase_index: np.ndarray) -> np.ndarray:
    """The phase ids of rows of ``chunk`` (their run numbers and 0-based phase numbers in the run).

    ``per-run``: ``s<seed>-r<run>-p<phase>``, distinct in every run; ``reused``: ``phase-<phase>``.
    """
    if chunk.phase_ids == "reused":
        return _composed(["phase-", (phase_index + 1, chunk.phase_digits)], len(phase_index))
    return _composed([f"s{seed}-r", (runs, chunk.run_digits), "-p", (phase_index + 1, chunk.phase_digits)],
                     len(phase_index))


def _chunk_columns(chunk: SynthChunk, run_ids: np.ndarray, tier_pk: np.ndarray, seed: int) -> tuple[dict, dict]:
    """The phases and events of one chunk as named numpy columns (timestamps as µs since the epoch)."""
    ph, ev = chunk.phases, chunk.events
    completed = ph["completed"]
    retries = ph["attempts"] - 1
    phase_cols = {
        "phase_id": phase_ids_for(chunk, seed, ph["run"], ph["phase_index"]),
        "run_id": run_ids[ph["run"]],
        "tier_id": tier_pk[ph["run"]],
        "phase_index": ph["phase_index"],
        "state": np.where(completed, "COMPLETE", "FAILED").astype(object),
        "category": ph["category"],
        "complexity": ph["complexity"],
        "attempts": ph["attempts"],
        "tokens_used": ph["tokens_used"],
        "retries": retries,
        "last": ph["last_us"],
        "started": ph["started_us"],
        "failure": np.where(completed, None, _FAILURE_TEXT),
        "completed_at": np.where(completed, ph["last_us"], -1),  # -1: NULL
    }
    event_cols = {
        "run_id": run_ids[ev["run"]],
        "phase_id": phase_ids_for(chunk, seed, ev["run"], ev["phase_index"]),
        "timestamp": ev["timestamp_us"],
        "category": ev["category"],
        "complexity": ev["complexity"],
        "deliverable_count": ev["deliverable_count"],
        "deliverables_json": ev["deliverables_json"],
        "predicted_output_tokens": ev["predicted_output_tokens"],
        "actual_output_tokens": ev["actual_output_tokens"],
        "selected_budget": ev["selected_budget"],
        "actual_max_tokens": ev["actual_max_tokens"],
        "success": ev["success"],
        "truncated": ev["truncated"],
        "stop_reason": ev["stop_reason"],
        "smape_percent": ev["smape_percent"],
        "waste_ratio": ev["waste_ratio"],
        "underestimated": ev["underestimated"],
        "attempt": ev["attempt"],
        "event_uid": _numbered(f"synth-{seed}-", ev["event_number"], 10),
        "phase_completed": ev["phase_completed"],
    }
    return phase_cols, event_cols


_TIMESTAMP_SOURCES = {"timestamp", "last", "started", "completed_at"}


def _arrow_columns(columns: dict[str, np.ndarray], spec: tuple, n: int, *, text_timestamps: bool = False) -> pa.Table:
    """The rows of ``spec`` as an Arrow table: constants repeated, timestamps as ``timestamp[us]`` or, with
    ``text_timestamps``, as SQLite's DATETIME text (NULL where the µs value is negative)."""
    arrays: dict[str, pa.Array] = {}
    converted: dict[str, pa.Array] = {}  # a source feeding two columns is converted once
    for column, source in spec:
        if isinstance(source, _Const):
            arrays[column] = pa.array(np.full(n, source.value, dtype=object if isinstance(source.value, str) else None))
            continue
        if source not in converted:
            values = columns[source]
            if source in _TIMESTAMP_SOURCES:
                if text_timestamps:
                    converted[source] = pa.array(_text_timestamp_array(np.maximum(values, 0)), mask=values < 0)
                else:
                    converted[source] = pa.array(values, type=pa.timestamp("us"), mask=values < 0)
            else:
                converted[source] = pa.array(values, from_pandas=True) if values.dtype == object else pa.array(values)
        arrays[column] = converted[source]
    return pa.table(arrays)


def _csv_bytes(table: pa.Table) -> bytes:
    """A chunk as CSV for ``COPY ... (FORMAT csv)``: NULL is an unquoted empty field."""
    sink = io.BytesIO()
    pa_csv.write_csv(table, sink, write_options=pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    return sink.getvalue()


def _run_rows(seed: int, runs: int, start_text: str) -> list[tuple]:
    goal = f"synthetic telemetry (autopack-telemetry synth, seed {seed})"
    return [
        (run_id_for(seed, k), "DONE_SUCCESS", start_text, start_text, start_text, None, "normal", "multi_tier",
         5_000_000, 0, 120, 0, 0, 0, 0, "false", goal)
        for k in range(runs)
    ]


def _tier_rows(run_ids: list[str], start_text: str) -> list[tuple]:
    return [("T1", rid, 0, "Synthetic tier", "COMPLETE", 5_000_000, 20, 0, 0, 0, 0, 0, "clean", start_text, start_text)
            for rid in run_ids]


def _tier_keys(rows: list[tuple], run_ids: np.ndarray) -> np.ndarray:
    by_run = dict(rows)
    return np.array([by_run[r] for r in run_ids.tolist()], dtype=np.int64)
