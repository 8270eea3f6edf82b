"""The numpy generator of synthetic phases and their estimation events, in chunks.

The draws come in blocks of :data:`DRAW_BLOCK_PHASES` phases, each from a generator seeded by ``(seed,
block number)``, so a seed gives the same rows whatever reads them and however they are cut into
chunks. Each phase follows the simulated backend's output lengths (log-normal body, Pareto tail,
malformed and degenerate answers) and the Builder's rules: the first call runs under the selected
budget, a truncated call (or a failed one that used 95% of its ceiling) escalates once, a second
truncation fails. The columns the writer derives (SMAPE, waste ratio, underestimated) are computed
as the writer computes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from autopack_pipeline.domain import escalation as rule
from autopack_pipeline.llm.simulated import DEGENERATE_TOKENS
from autopack_pipeline.settings import PACKAGED_SEEDS_DIR
from autopack_pipeline.storage.bulk.chunk import SynthChunk
from autopack_pipeline.storage.events import MIN_VALID_OUTPUT_TOKENS
from autopack_pipeline.synth.archetypes import (
    ARCHETYPE_VARIANTS,
    CATEGORY_WEIGHTS,
    COMPLEXITY_WEIGHTS,
    DEFAULT_LEGACY_FRACTION,
    DELIVERABLE_WEIGHTS,
    LEGACY_SPELLINGS,
    ArchetypePricer,
    Archetypes,
    archetype_pricer,
)

# Phases per block of random draws, each block from its own stream seeded by (seed, block number). The
# rows a seed gives depend on this and on nothing else of the cutting: chunks take any number of
# phases from consecutive blocks, so a loader may ask for a small first chunk. (Until the draws were
# per block, each 50k-phase chunk had its own stream, and a smaller first chunk would have changed the
# data.)
DRAW_BLOCK_PHASES = 5_000
# Phases per generated chunk, and in the first one by default: small, because a loader can start writing
# only when the first chunk exists. The chunks after it double in size up to PHASES_PER_CHUNK (5k, 10k,
# 20k, 40k, 50k...). A loader may ask for a smaller first chunk (``first_chunk_phases``): the PostgreSQL
# append's events COPY starts with the piece after its first ~15k phases, which with 2.5k exists after
# 17.5k phases generated instead of 35k; SQLite's append stages each piece, and one more small piece
# cost it more than it gained.
PHASES_PER_CHUNK = 50_000
FIRST_CHUNK_PHASES = 5_000
# Mean seconds between two phase starts, and the spread of a retry after its first attempt.
PHASE_GAP_SECONDS = 1.5
RETRY_DELAY_SECONDS = (20.0, 120.0)
DEFAULT_START = datetime(2025, 1, 1)
# How phase ids relate to runs. "per-run" (the default) is Autopack's shape: every run has its own phase
# ids, so a million events hold about as many distinct phase ids as phases (~590k), and runs differ in
# size. "reused" restarts ``phase-00001``... in every run of equal size, the shape synth had before: a
# million events hold only ~1,700 distinct phase ids, which hides what per-phase work costs.
PHASE_ID_SCHEMES = ("per-run", "reused")
# A database Autopack wrote held 29,422 runs and 588,428 phases per million events: ~34 events and
# ~20 phases per run. Run sizes spread log-normally around that (sigma in log space; an assumption:
# Autopack's runs range from a handful of phases to a few hundred).
EVENTS_PER_RUN = {"per-run": 34, "reused": 2_000}
RUN_SIZE_SIGMA = 1.0


def _draw_phases(rng: np.random.Generator, n: int, pricer: ArchetypePricer, legacy_fraction: float) -> dict[str, np.ndarray]:
    """Per-phase draws and the Builder's outcome of up to two attempts, vectorised."""
    arch = pricer.archetypes
    profile = arch.profile
    cat_p = np.array(list(CATEGORY_WEIGHTS.values()))
    cx_p = np.array(list(COMPLEXITY_WEIGHTS.values()))
    cat = rng.choice(len(cat_p), size=n, p=cat_p / cat_p.sum())
    cx = rng.choice(len(cx_p), size=n, p=cx_p / cx_p.sum())
    deliverables = rng.choice(len(DELIVERABLE_WEIGHTS), size=n, p=DELIVERABLE_WEIGHTS / DELIVERABLE_WEIGHTS.sum()) + 1
    variant = rng.integers(0, ARCHETYPE_VARIANTS, size=n)
    legacy = rng.random(n) < legacy_fraction
    # The simulated backend: median per group, +45% per extra deliverable, log-normal body, Pareto tail.
    median = arch.medians[cat, cx] * (1 + profile.extra_deliverable_fraction * (deliverables - 1))
    tokens = median * np.exp(rng.normal(0.0, profile.sigma, size=n))
    tail = rng.random(n) < profile.tail_probability
    tokens = np.where(tail, tokens * (rng.pareto(profile.tail_alpha, size=n) + 1.0), tokens)
    wanted = np.maximum(60, np.floor(tokens)).astype(np.int64)
    degenerate = rng.random((2, n)) < profile.degenerate_probability
    malformed = rng.random((2, n)) < profile.malformed_probability
    gaps = rng.exponential(PHASE_GAP_SECONDS, size=n)
    retry_delay = rng.uniform(*RETRY_DELAY_SECONDS, size=n)

    index = (cat, cx, deliverables - 1, variant)
    pricer.ensure(index)  # the archetypes these phases are, priced before their prices are read
    predicted = arch.predicted[index]
    selected = arch.selected[index]
    # The Builder's rules (domain/escalation.py): attempt 1 runs under the selected budget; a failed
    # attempt that ran out of room (truncated, or a malformed answer that used 95% of its ceiling)
    # escalates once; any other failure (degenerate, malformed and short) is final.
    def attempt(number: int, ceiling: np.ndarray) -> tuple[np.ndarray, ...]:
        degenerate_now = degenerate[number]
        truncated = ~degenerate_now & (wanted >= ceiling)
        output = np.where(degenerate_now, DEGENERATE_TOKENS, np.minimum(wanted, ceiling))
        stop_max = ~degenerate_now & (wanted > ceiling)
        success = ~degenerate_now & ~truncated & ~malformed[number]
        return ceiling, truncated, output, stop_max, success

    c1, t1, o1, s1, ok1 = attempt(0, rule.ceiling_to_send(selected, selected))
    retry = rule.retry_max_tokens(rule.escalation_base(selected, c1, o1))
    c2, t2, o2, s2, ok2 = attempt(1, rule.ceiling_to_send(retry, selected))
    second = ~ok1 & rule.runs_out_of_room(t1, o1, c1)
    recorded1 = o1 >= MIN_VALID_OUTPUT_TOKENS
    recorded2 = second & (o2 >= MIN_VALID_OUTPUT_TOKENS)
    completed = np.where(second, ok2, ok1)
    return {
        "cat": cat, "cx": cx, "deliverables": deliverables, "variant": variant, "legacy": legacy,
        "predicted": predicted, "selected": selected, "gaps": gaps, "retry_delay": retry_delay,
        "ceiling": np.stack([c1, c2]), "truncated": np.stack([t1, t2]), "output": np.stack([o1, o2]),
        "stop_max": np.stack([s1, s2]), "success": np.stack([ok1, ok2]),
        "recorded": np.stack([recorded1, recorded2]), "attempts": 1 + second.astype(np.int64),
        "completed": completed,
    }


def _block_rng(seed: int, block: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, block])))


def price_first_block(seed: int, *, legacy_fraction: float = DEFAULT_LEGACY_FRACTION,
                      seeds_dir: Path = PACKAGED_SEEDS_DIR) -> None:
    """Price the archetypes the first block of ``seed`` draws (about 660 of 1,400, a tenth of a second
    here), as :func:`generate_chunks` would before its first chunk: a load calls this in a helper thread
    while it asks the database its first questions. The draws are made again by the generator; the
    prices stay in the process's pricer."""
    _draw_phases(_block_rng(seed, 0), DRAW_BLOCK_PHASES, archetype_pricer(seeds_dir), legacy_fraction)


class _DrawBlocks:
    """The per-phase draws of a seed, block after block, handed out in runs of any length."""

    def __init__(self, seed: int, pricer: ArchetypePricer, legacy_fraction: float) -> None:
        self.seed, self.pricer, self.legacy_fraction = seed, pricer, legacy_fraction
        self.blocks = 0
        self.waiting: list[dict[str, np.ndarray]] = []  # drawn, not handed out yet (oldest first)
        self.available = 0

    def take(self, phases: int) -> dict[str, np.ndarray]:
        """The draws of the next ``phases`` phases (per-phase arrays: the last axis is the phase)."""
        while self.available < phases:
            self.waiting.append(_draw_phases(_block_rng(self.seed, self.blocks), DRAW_BLOCK_PHASES, self.pricer,
                                             self.legacy_fraction))
            self.blocks += 1
            self.available += DRAW_BLOCK_PHASES
        drawn = self.waiting[0] if len(self.waiting) == 1 else {
            key: np.concatenate([block[key] for block in self.waiting], axis=-1) for key in self.waiting[0]}
        self.available -= phases
        self.waiting = [{key: values[..., phases:] for key, values in drawn.items()}] if self.available else []
        return {key: values[..., :phases] for key, values in drawn.items()}


@dataclass
class _Cursor:
    """Where generation stands between chunks."""

    events_done: int = 0
    phases_done: int = 0
    clock_us: int = 0  # microseconds since the start time
    run: int = -1
    run_first_phase: int = 0


def generate_chunks(
    total_events: int,
    *,
    runs: int,
    seed: int,
    start: datetime = DEFAULT_START,
    legacy_fraction: float = DEFAULT_LEGACY_FRACTION,
    seeds_dir: Path = PACKAGED_SEEDS_DIR,
    phase_ids: str = "per-run",
    first_chunk_phases: int | None = None,
) -> Iterator[SynthChunk]:
    """Yield chunks of phases and their events until exactly ``total_events`` events exist; the first
    of ``first_chunk_phases`` phases (None: ``FIRST_CHUNK_PHASES``), each after it twice as many as the
    one before, none over ``PHASES_PER_CHUNK`` (the rows are the same however they are cut).

    Phases go to runs in order, as consecutive blocks. With ``phase_ids="per-run"`` the blocks' sizes
    are drawn log-normally (seeded by ``seed``) and every run gets its own phase ids, as Autopack's
    runs do; with ``"reused"`` the blocks are of about equal size (a phase belongs to run
    ``events_before_it * runs // total_events``) and phase ids restart in every run (``phase-00001``...).
    """
    if total_events < 1:
        raise ValueError(f"the number of events must be at least 1, got {total_events}")
    if phase_ids not in PHASE_ID_SCHEMES:
        raise ValueError(f"phase_ids must be one of {', '.join(PHASE_ID_SCHEMES)}, not {phase_ids!r}")
    runs = max(1, min(int(runs), total_events))
    run_ends = _run_ends(total_events, runs, seed) if phase_ids == "per-run" else None
    # A run holds at most as many phases as its block has events (+2 for the phases straddling its ends).
    largest_run = total_events // runs if run_ends is None else int(np.diff(run_ends, prepend=0.0).max())
    widths = {"phase_ids": phase_ids, "run_digits": max(5, len(str(runs - 1))),
              "phase_digits": max(4 if run_ends is not None else 5, len(str(largest_run + 2)))}
    # Archetypes are priced as the draws first use them: the first chunk waits for those it holds only.
    pricer = archetype_pricer(seeds_dir)
    arch = pricer.archetypes
    # A category's code is its number, or that plus the number of categories for its legacy spelling.
    category_texts = np.array(list(arch.categories) + [LEGACY_SPELLINGS.get(c, c) for c in arch.categories],
                              dtype=object)
    stop_texts = np.array(["end_turn", "max_tokens"], dtype=object)
    complexities = np.array(arch.complexities, dtype=object)
    # The texts of the label columns' codes, for the loaders (SynthChunk.labels).
    texts = {"category": pa.array(category_texts, pa.string()), "complexity": pa.array(complexities, pa.string()),
             "stop_reason": pa.array(stop_texts, pa.string())}
    # Naive datetimes are UTC, as the telemetry columns hold them.
    start_us = int((start if start.tzinfo else start.replace(tzinfo=timezone.utc)).timestamp() * 1_000_000)
    state = _Cursor()
    blocks = _DrawBlocks(seed, pricer, legacy_fraction)
    chunk_phases = min(FIRST_CHUNK_PHASES if first_chunk_phases is None else first_chunk_phases, PHASES_PER_CHUNK)
    while state.events_done < total_events:
        chunk_phases = min(chunk_phases * 2, PHASES_PER_CHUNK) if state.phases_done else chunk_phases
        draws = blocks.take(chunk_phases)
        recorded = draws["recorded"]
        per_phase = recorded.sum(axis=0)
        events_before = state.events_done + np.concatenate([[0], np.cumsum(per_phase)[:-1]])
        # Stop at the phase holding the last wanted event; that phase may lose its second attempt.
        keep_phases = int(np.searchsorted(events_before, total_events, side="left"))
        keep_phases = max(1, min(keep_phases, chunk_phases))
        sl = slice(0, keep_phases)
        events_before = events_before[sl]
        if run_ends is None:
            run_of_phase = (events_before * runs) // total_events
        else:
            run_of_phase = np.minimum(np.searchsorted(run_ends, events_before, side="right"), runs - 1)

        # Phase start times (µs after `start`), cumulative over the whole load.
        gaps_us = np.round(draws["gaps"][sl] * 1_000_000).astype(np.int64)
        started_us = state.clock_us + np.cumsum(gaps_us)
        state.clock_us = int(started_us[-1])
        retry_us = started_us + np.round(draws["retry_delay"][sl] * 1_000_000).astype(np.int64)

        # Phase number within its run.
        global_phase = state.phases_done + np.arange(keep_phases)
        new_run = np.empty(keep_phases, dtype=bool)
        new_run[0] = run_of_phase[0] != state.run
        new_run[1:] = run_of_phase[1:] != run_of_phase[:-1]
        first_of_run = np.where(new_run, global_phase, -1)
        first_of_run[0] = global_phase[0] if new_run[0] else state.run_first_phase
        first_of_run = np.maximum.accumulate(first_of_run)
        phase_index = global_phase - first_of_run
        state.run = int(run_of_phase[-1])
        state.run_first_phase = int(first_of_run[-1])

        # Events: attempt 1 then attempt 2 of each phase, in phase order, cut at total_events.
        rec = recorded[:, sl]
        phase_of_event = np.repeat(np.arange(keep_phases), rec.sum(axis=0))
        # A phase's first recorded event is its first attempt: attempt 1 always reaches 50 tokens unless
        # it was degenerate, and a degenerate answer is never retried.
        first_in_phase = np.ones(len(phase_of_event), dtype=bool)
        first_in_phase[1:] = phase_of_event[1:] != phase_of_event[:-1]
        attempt_of_event = np.where(first_in_phase, 0, 1)
        room = total_events - state.events_done
        if len(phase_of_event) > room:
            phase_of_event = phase_of_event[:room]
            attempt_of_event = attempt_of_event[:room]

        p, a = phase_of_event, attempt_of_event
        cat = draws["cat"][sl][p]
        category_code = np.where(draws["legacy"][sl][p], cat + len(arch.categories), cat)
        archetype = _archetype_code(draws, arch, sl, p)
        stop_code = draws["stop_max"][a, p].astype(np.int8)
        predicted = draws["predicted"][sl][p]
        actual = draws["output"][a, p]
        ceiling = draws["ceiling"][a, p]
        truncated = draws["truncated"][a, p]
        success = draws["success"][a, p]
        event_us = np.where(a == 0, started_us[p], retry_us[p])
        smape, waste, under = _writer_metrics(predicted, actual)
        events = {
            "run": run_of_phase[p],
            "phase_index": phase_index[p],
            "timestamp_us": start_us + event_us,
            "category": category_texts[category_code],
            "category_code": category_code,
            "complexity": complexities[draws["cx"][sl][p]],
            "complexity_code": draws["cx"][sl][p],
            "deliverable_count": draws["deliverables"][sl][p],
            "deliverables_json": arch.deliverables_json.ravel()[archetype],
            "deliverables_json_code": archetype,
            "predicted_output_tokens": predicted,
            "actual_output_tokens": actual,
            "selected_budget": draws["selected"][sl][p],
            "actual_max_tokens": ceiling,
            "success": success,
            "truncated": truncated,
            "stop_reason": stop_texts[stop_code],
            "stop_reason_code": stop_code,
            "smape_percent": smape,
            "waste_ratio": waste,
            "underestimated": under,
            "attempt": a + 1,
            "phase_completed": draws["completed"][sl][p],
            "event_number": state.events_done + np.arange(len(p)),
        }
        # Phase rows: state from the attempts that exist (a phase cut at the end is still running).
        attempts = draws["attempts"][sl].copy()
        completed = draws["completed"][sl].copy()
        if len(p) and len(p) < rec.sum():  # the load ends inside this phase: it has not completed
            last = int(p[-1])
            attempts[last] = int((p == last).sum())
            completed[last] = False
            events["phase_completed"] = np.where(p == last, False, events["phase_completed"])
        last_us = np.where(attempts == 2, retry_us, started_us)
        phase_category = np.where(draws["legacy"][sl], draws["cat"][sl] + len(arch.categories), draws["cat"][sl])
        output_sum = draws["output"][0, sl] + np.where(attempts == 2, draws["output"][1, sl], 0)
        phases = {
            "run": run_of_phase,
            "phase_index": phase_index,
            "category": category_texts[phase_category],
            "category_code": phase_category,
            "complexity": complexities[draws["cx"][sl]],
            "complexity_code": draws["cx"][sl],
            "deliverables": draws["deliverables"][sl],
            "started_us": start_us + started_us,
            "last_us": start_us + last_us,
            "attempts": attempts,
            "completed": completed,
            "tokens_used": output_sum,
            "escalated": attempts == 2,
        }
        state.events_done += len(p)
        state.phases_done += keep_phases
        # The archetypes' JSON as priced so far (those of this chunk are).
        labels = {**texts, "deliverables_json": pa.array(arch.deliverables_json.ravel(), pa.string(), from_pandas=True)}
        yield SynthChunk(phases=phases, events=events, labels=labels, **widths)


def _run_ends(total_events: int, runs: int, seed: int) -> np.ndarray:
    """Where each run's block of events ends (a float event count, increasing), sizes log-normal.

    Every run is given at least one event's worth of room, so runs stay non-empty unless a phase's
    two events straddle a run that small.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x52554E53])))  # "RUNS"
    weights = rng.lognormal(0.0, RUN_SIZE_SIGMA, size=runs)
    sizes = 1.0 + (total_events - runs) * weights / weights.sum()
    return np.cumsum(sizes)


def _archetype_code(draws: dict[str, np.ndarray], arch: Archetypes, sl: slice, p: np.ndarray) -> np.ndarray:
    """Each event's archetype, as its position in the archetype arrays raveled."""
    index = (draws["cat"][sl][p], draws["cx"][sl][p], draws["deliverables"][sl][p] - 1, draws["variant"][sl][p])
    return np.ravel_multi_index(index, arch.deliverables_json.shape)


def _writer_metrics(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SMAPE, waste ratio and underestimated exactly as the writer's ``estimation_metrics``."""
    p = predicted.astype(np.float64)
    a = actual.astype(np.float64)
    smape = np.abs(a - p) / np.maximum(1.0, (np.abs(a) + np.abs(p)) / 2) * 100
    with np.errstate(divide="ignore", invalid="ignore"):
        waste = p / a
    return smape, waste, actual > predicted  # both are always positive here
