"""The calibration loop on two worlds: 3 rounds of 3 collection runs, then a 4th round measured.

Worlds: the simulated backend, and ``LengthWorld`` (lengths from the deliverables' content, log-t
tails, x1.3 drift from round 3) through the real ``anthropic`` SDK and the local Messages server.
Prints each round's Tier 1, Tier 2 against the oracle (and, from round 2, the previous round's oracle
applied to it: the oracle's own noise floor), cost and per-group lines, then one table.
Figures are measured in this one run; nothing here asserts a timing.

    .venv/bin/python benchmarks/loop.py [--rounds 4] [--runs-per-round 3] [--seed S] [--world W] [--json-out F]

``--seed`` seeds both worlds (default: the simulated backend's 42, the length world's 7), so the rules
can be checked on more than one draw of the same worlds; ``--world`` runs one of them only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autopack_pipeline.llm.anthropic_backend import AnthropicBackend  # noqa: E402
from autopack_pipeline.llm.factory import make_backend  # noqa: E402
from autopack_pipeline.services.calibration_loop import LoopOptions, private_seeds, round_lines, run_loop, table_lines  # noqa: E402
from autopack_pipeline.settings import load_settings  # noqa: E402
from autopack_pipeline.storage.database import make_engine  # noqa: E402
from autopack_pipeline.storage.migrate import prepare_database  # noqa: E402
from autopack_pipeline_tests.support.length_world import LengthWorld  # noqa: E402
from autopack_pipeline_tests.support.messages_server import MessagesServer  # noqa: E402


def _fresh(world: str, base: Path):
    work = base / world
    work.mkdir(parents=True)
    settings = load_settings()
    settings = settings.model_copy(update={"seeds_dir": private_seeds(settings.seeds_dir, work)})
    engine = make_engine(f"sqlite:///{work / 'loop.db'}")
    prepare_database(engine)
    return settings, engine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--runs-per-round", type=int, default=3)
    parser.add_argument("--seed", type=int, help="seed of both worlds (default: simulated 42, length world 7)")
    parser.add_argument("--world", choices=("both", "simulated", "length-world"), default="both")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="autopack-loop-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    print(f"Machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
          f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; work directory {base}; seed "
          f"{'default' if args.seed is None else args.seed}")
    options = dict(rounds=args.rounds, runs_per_round=args.runs_per_round)
    results = {}

    if args.world in ("both", "simulated"):
        settings, engine = _fresh("simulated", base)
        results["simulated"] = run_loop(engine, settings, lambda n: make_backend(settings, "simulated", args.seed),
                                        LoopOptions(world="simulated", **options),
                                        on_round=lambda d: print("\n".join(round_lines(d)), flush=True))
    if args.world in ("both", "length-world"):
        results["length-world"] = _length_world(base, options, args.seed)
    for name, rounds in results.items():
        print(f"\n{name}:")
        print("\n".join(table_lines(rounds)))
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2, default=str))
    return 0


def _length_world(base: Path, options: dict, seed: int | None) -> list:
    world = LengthWorld() if seed is None else LengthWorld(seed)
    server = MessagesServer().start()
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    try:
        server.answer_all_with(world.responder)
        settings, engine = _fresh("length-world", base)
        backend = AnthropicBackend("sk-local-benchmark-not-a-key", base_url=server.url, stream=False)
        return run_loop(engine, settings, lambda n: backend, LoopOptions(world="length-world", **options),
                        before_round=world.set_round,
                        on_round=lambda d: print("\n".join(round_lines(d)), flush=True))
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
