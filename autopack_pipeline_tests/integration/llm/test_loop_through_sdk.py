"""The calibration loop through the real SDK and the local server, answered by the length world."""

from __future__ import annotations

from autopack_pipeline.services.calibration_loop import LoopOptions, private_seeds, run_loop
from autopack_pipeline.settings import load_settings
from autopack_pipeline.storage.database import make_engine
from autopack_pipeline.storage.migrate import prepare_database
from autopack_pipeline_tests.support.length_world import LengthWorld


def test_two_small_rounds_through_the_sdk(tmp_path, make_anthropic, messages_server):
    world = LengthWorld(drift_round=2)
    messages_server.answer_all_with(world.responder)
    settings = load_settings()
    settings = settings.model_copy(update={"seeds_dir": private_seeds(settings.seeds_dir, tmp_path)})
    engine = make_engine(f"sqlite:///{tmp_path / 'loop.db'}")
    prepare_database(engine)
    backend = make_anthropic()
    rounds = run_loop(engine, settings, lambda n: backend,
                      LoopOptions(rounds=2, runs_per_round=1, world="sdk", template_phases_per_group=1),
                      before_round=world.set_round)
    first, second = rounds
    assert first["events"] > 0 and second["events"] > 0
    truncated = [r for r in messages_server.message_requests() if r.answered_with == "Truncated"]
    assert first["tier1"]["truncation"]["count"] + second["tier1"]["truncation"]["count"] == len(truncated)
    if first["calibration"]["status"] == "applied":
        assert second["event_coefficients_versions"] == [first["calibration"]["applied_version"]]
