"""Shared by the metrics, calibration and log command-line tests: run the installed command, and fill a database."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.events import EstimationEvent, ensure_run_and_phase, record_estimation_event
from autopack_pipeline.storage.migrate import upgrade_database

EXE = shutil.which("autopack-telemetry", path=str(Path(sys.executable).parent))
REPO_SEEDS = Path(__file__).resolve().parents[2] / "seeds"
ONE_NEW_FILE = ["src/new_module.py (new)"]  # estimate (634 + 2000) * 1.3 = 3424 for implementation/low


def run(*args: str, cwd: Path, env: dict[str, str], timeout: float = 240, stdin=None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUTOPACK_", "ANTHROPIC_"))}
    return subprocess.run([EXE, *args], check=False, cwd=cwd, env={**clean, **env}, capture_output=True, text=True,
                          timeout=timeout, stdin=stdin if stdin is not None else subprocess.DEVNULL)


def environment(tmp_path: Path) -> dict[str, str]:
    """A database, a reports directory and a private copy of seeds/ (the repo's file is never written)."""
    seeds = tmp_path / "seeds"
    if not seeds.exists():
        shutil.copytree(REPO_SEEDS, seeds)
    return {"DATABASE_URL": f"sqlite:///{tmp_path / 'telemetry.db'}", "AUTOPACK_SEEDS_DIR": str(seeds),
            "AUTOPACK_REPORTS_DIR": str(tmp_path / "reports"), "AUTOPACK_SPOOL_DIR": str(tmp_path / "spool")}


def populate(url: str, actuals: list[int], *, predicted: int = 3424, truncated: int = 0, run_id: str = "run-1",
             category: str = "implementation", complexity: str = "low") -> None:
    """One event per phase with the given actual outputs, plus ``truncated`` events cut at 8192."""
    engine = make_engine(url)
    upgrade_database(engine)
    rows = [(actual, False) for actual in actuals] + [(8192, True)] * truncated
    for i, (actual, was_truncated) in enumerate(rows):
        phase_id = f"{category}-{complexity}-{i}"
        ensure_run_and_phase(engine, run_id, phase_id, category=category, complexity=complexity)
        stored = record_estimation_event(engine, EstimationEvent(
            run_id=run_id, phase_id=phase_id, category=category, complexity=complexity, deliverables=ONE_NEW_FILE,
            predicted_output_tokens=predicted, actual_output_tokens=actual, selected_budget=8192,
            actual_max_tokens=8192, success=not was_truncated, truncated=was_truncated,
            stop_reason="max_tokens" if was_truncated else "end_turn", model="claude-sonnet-4-5", attempt=1,
        ), respect_flag=False)
        assert stored
    engine.dispose()
