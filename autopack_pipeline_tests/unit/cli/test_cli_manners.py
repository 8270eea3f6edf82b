"""CLI manners: progress bars on a terminal only, help on every flag, ``--version``. In process, through
``autopack_pipeline.cli.main``; a terminal is simulated by making the captured streams say they are one."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from autopack_pipeline.cli import build_parser, main


def _cli(capsys, db: Path, *args: str) -> tuple[int, str, str]:
    code = main(["--database-url", f"sqlite:///{db}", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _as_terminal(monkeypatch) -> None:
    """Make the captured stdout and stderr claim to be a terminal (as rich and the CLI ask them). Called
    in the test itself: during fixture set-up the streams are not yet the test's captured ones."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


# A fixed run id and seed: default run ids are unique, so the simulated answers (and the exit code,
# 1 when every phase fails) would vary from run to run.
COLLECT = ("collect", "--backend", "simulated", "--category", "docs", "--complexity", "low", "--phases", "2",
           "--run-id", "manners", "--seed", "7")
# What each long command's bar says: its description and its unit.
LONG_COMMANDS = {
    "collect": (COLLECT, "Collecting", "phases"),
    "synth": (("synth", "--events", "300", "--seed", "5"), "Synthesising", "events"),
}


@pytest.mark.parametrize("name", sorted(LONG_COMMANDS))
def test_long_commands_draw_a_bar_on_a_terminal(name, capsys, monkeypatch, tmp_path):
    _as_terminal(monkeypatch)
    terminal = capsys
    args, description, unit = LONG_COMMANDS[name]
    code, out, err = _cli(terminal, tmp_path / "t.db", *args)
    assert code == 0, err
    assert description in err and unit in err and "\x1b[" in err  # rich's bar, on stderr
    assert description not in out


@pytest.mark.parametrize("name", sorted(LONG_COMMANDS))
def test_no_bar_when_the_output_is_not_a_terminal_or_json_is_asked(name, capsys, monkeypatch, tmp_path):
    args, description, _unit = LONG_COMMANDS[name]
    code, _out, err = _cli(capsys, tmp_path / "a.db", *args)  # captured streams: not terminals
    assert code == 0 and description not in err and "\x1b[" not in err
    _as_terminal(monkeypatch)
    code, out, err = _cli(capsys, tmp_path / "b.db", *args, "--json")
    assert code == 0 and description not in err and "\x1b[" not in err
    json.loads(out)


def test_import_and_the_columnar_extraction_draw_bars_on_a_terminal(capsys, monkeypatch, tmp_path):
    _as_terminal(monkeypatch)
    terminal = capsys
    source = tmp_path / "source.db"
    assert _cli(terminal, source, "synth", "--events", "300", "--json")[0] == 0
    export = tmp_path / "events.ndjson"
    assert _cli(terminal, source, "export", "-o", str(export))[0] == 0

    code, _out, err = _cli(terminal, tmp_path / "target.db", "import", str(export), "--batch-size", "100")
    assert code == 0, err
    assert "Importing events.ndjson" in err and "lines" in err and "\x1b[" in err

    code, _out, err = _cli(terminal, source, "metrics")
    assert code == 0, err
    assert "Extracting new events" in err and "rows" in err
    code, _out, err = _cli(terminal, source, "metrics")  # nothing new to extract: no bar at all
    assert code == 0 and "Extracting" not in err


def _flags_without_help(parser: argparse.ArgumentParser, path: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags_without_help(sub, f"{path} {name}")
        elif not (action.help or "").strip():
            yield f"{path} {'/'.join(action.option_strings) or action.dest}"


def test_every_flag_and_argument_of_every_subcommand_has_help():
    missing = list(_flags_without_help(build_parser(), "autopack-telemetry"))
    assert missing == [], "options without help text:\n" + "\n".join(missing)


def test_apply_calibration_help_names_the_history_directory_the_service_keeps():
    from autopack_pipeline.domain.coefficients import HISTORY_DIR_NAME

    subcommands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert f"{HISTORY_DIR_NAME}/." in subcommands.choices["apply-calibration"].description


def test_version_prints_the_installed_package_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"autopack-telemetry {version('autopack_pipeline')}"


def test_ctrl_c_exits_130_also_when_a_driver_turns_it_into_its_own_error(capsys, monkeypatch, tmp_path):
    """ADBC answers Ctrl-C during a COPY by cancelling it and raising the driver's error *from*
    KeyboardInterrupt: the user gets the interrupt's exit code, not a traceback; any other error is raised."""
    import autopack_pipeline.services.synthetic_data as synthetic_data

    class Cancelled(Exception):
        pass

    def cancelled(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise Cancelled("CANCELLED: canceling statement due to user request") from interrupt

    monkeypatch.setattr(synthetic_data, "synthesise", cancelled)
    code, out, err = _cli(capsys, tmp_path / "t.db", "synth", "--events", "10", "--seed", "1")
    assert (code, out, err) == (130, "", "")

    # What ADBC raised when Ctrl-C reached a PostgreSQL append's COPY (the cancel worked): the server's error.
    from adbc_driver_manager import OperationalError

    def server_cancelled(*args, **kwargs):
        raise OperationalError("CANCELLED: [libpq] Failed to execute COPY statement: PGRES_FATAL_ERROR ERROR:  "
                               "canceling statement due to user request", status_code=0, sqlstate="57014")

    monkeypatch.setattr(synthetic_data, "synthesise", server_cancelled)
    code, out, err = _cli(capsys, tmp_path / "t.db", "synth", "--events", "10", "--seed", "1")
    assert (code, out, err) == (130, "", "")

    def broken(*args, **kwargs):
        raise Cancelled("a fault, not an interrupt")

    monkeypatch.setattr(synthetic_data, "synthesise", broken)
    with pytest.raises(Cancelled):
        _cli(capsys, tmp_path / "t.db", "synth", "--events", "10", "--seed", "1")


def test_a_statement_timeout_is_not_taken_for_ctrl_c(capsys, monkeypatch, tmp_path):
    from adbc_driver_manager import OperationalError

    import autopack_pipeline.services.synthetic_data as synthetic_data

    def timed_out(*args, **kwargs):
        raise OperationalError("ERROR:  canceling statement due to statement timeout", status_code=0, sqlstate="57014")

    monkeypatch.setattr(synthetic_data, "synthesise", timed_out)
    # A database error like any other: one line with the server's message, exit 1 (not Ctrl-C's 130).
    code, out, err = _cli(capsys, tmp_path / "t.db", "synth", "--events", "10", "--seed", "1")
    assert (code, out) == (1, "")
    assert err == "autopack-telemetry: database error: canceling statement due to statement timeout\n"


def test_a_command_freezing_what_is_loaded_lets_an_earlier_commands_frozen_garbage_go():
    import gc
    import weakref

    from autopack_pipeline.cli.common import freeze_loaded_objects

    class Node:
        pass

    node = Node()
    node.me = node  # a cycle: only the collector frees it
    gone = weakref.ref(node)
    try:
        freeze_loaded_objects()  # a first command freezes it, alive
        del node
        freeze_loaded_objects()  # the next command in this process
        assert gone() is None
    finally:
        gc.unfreeze()


@pytest.mark.parametrize(("command", "module", "function"), [
    (["calibrate", "--json", "--force", "--output-dir", "{tmp}/reports"], "pipeline", "analyse"),
    (["metrics", "--json"], "metrics_report", "measure"),
])
def test_analysis_commands_run_with_the_collector_paused_and_set_what_they_leave_aside_as_they_end(
        tmp_path, monkeypatch, capsys, command, module, function):
    """No collection while the analysis runs (it makes little cyclic garbage, and the collections cost
    ``calibrate`` 0.15 s of CPU at a million events); at the end everything alive, Pillow loaded for the
    plot included, is frozen, so the interpreter's exit walks none of it (a fifth of ``metrics``' time at a
    million events); and the collector is on again."""
    import gc
    import importlib

    from autopack_pipeline_tests.support.calibration_cli_support import environment, populate

    env = environment(tmp_path) | {"AUTOPACK_COLUMNAR_DIR": str(tmp_path / "columnar")}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    populate(env["DATABASE_URL"], [int(3424 * (0.8 + 0.025 * i)) for i in range(30)], truncated=1)
    collecting: list[bool] = []
    made: list = []
    owner = importlib.import_module(f"autopack_pipeline.services.{module}")
    real = getattr(owner, function)

    def watched(*args, **kwargs):
        collecting.append(gc.isenabled())
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(owner, function, watched)
    try:
        code = main([part.replace("{tmp}", str(tmp_path)) for part in command])
        assert gc.isenabled() and collecting == [False]
        # Made after the command's first freeze and alive as it ended: frozen, in no generation the collector walks.
        assert not any(o is made[0] for o in gc.get_objects())
    finally:
        gc.unfreeze()  # for the tests after this one
    assert code == 0 and json.loads(capsys.readouterr().out)
