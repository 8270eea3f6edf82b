"""Filling a telemetry database with synthetic events, in bulk (the ``synth`` package's generator)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.engine import Engine

from autopack_pipeline.storage.bulk import LoadInProgress
from autopack_pipeline.synth import RunsAlreadyPresent, SynthSummary, bulk_load, default_run_count

__all__ = ["LoadInProgress", "RunsAlreadyPresent", "SynthSummary", "synthesise"]


def synthesise(engine: Engine, events: int, *, runs: int | None = None, seed: int, phase_ids: str,
               progress: Callable[..., None] | None = None) -> SynthSummary:
    """Load ``events`` synthetic events into ``engine``'s database, spread over ``runs`` runs (default: as
    many as a database Autopack wrote would hold them in). A seed's runs load once per database:
    ``RunsAlreadyPresent`` otherwise."""
    runs = runs or default_run_count(events, phase_ids)
    return bulk_load(engine, events, runs=runs, seed=seed, progress=progress, phase_ids=phase_ids)
