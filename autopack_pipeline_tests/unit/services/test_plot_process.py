"""The calibration plot drawn by a second process is the one drawn in-process, and a process that
cannot draw leaves the drawing to the command."""

from __future__ import annotations

import io

import numpy as np
import pytest

from autopack_pipeline.domain.analysis import CALIBRATION_METHODS, CoverageGroup
from autopack_pipeline.services import plot_process, plots
from autopack_pipeline.services.plot_data import plot_data

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _data():
    rng = np.random.default_rng(3)

    def group(key):
        ratios, bounds = rng.lognormal(0, 0.4, 300), rng.uniform(1, 3, 30)
        return CoverageGroup(key=key, clean_rows=np.arange(300), censored_rows=np.arange(300, 330),
                             predicted=np.ones(300), actual=ratios, budget=np.ones(300),
                             censored_predicted=np.ones(30), censored_actual=bounds, ratios=ratios, bounds=bounds)

    return plot_data({key: group(key) for key in (("docs", "low"), ("tests", "high"))}, [], tolerance=1.1)


def _drawn_here(data) -> bytes:
    out = io.BytesIO()
    plots.draw_plot(out, data)
    return out.getvalue()


def test_the_plot_names_the_colour_of_every_calibration_method():
    assert set(plots._COLOURS) == set(CALIBRATION_METHODS)


def test_few_events_or_one_core_are_drawn_in_the_command_itself(monkeypatch):
    with plot_process.plot_process_for(plot_process.PLOT_PROCESS_MIN_EVENTS - 1) as process:
        assert process is None
    monkeypatch.setattr(plot_process, "_cores", lambda: 1)
    with plot_process.plot_process_for(plot_process.PLOT_PROCESS_MIN_EVENTS) as process:
        assert process is None


@pytest.mark.integration  # starts a process
def test_the_process_draws_the_plot_the_command_would():
    data = _data()
    with plot_process.plot_process_for(plot_process.PLOT_PROCESS_MIN_EVENTS) as process:
        assert isinstance(process, plot_process.PlotProcess)
        process.submit(data)
        out = io.BytesIO()
        process.write(out)
    assert out.getvalue().startswith(PNG_MAGIC) and out.getvalue() == _drawn_here(data)


@pytest.mark.integration  # starts a process
def test_a_process_that_cannot_draw_leaves_the_drawing_here():
    data = _data()
    with plot_process.PlotProcess() as process:
        process._process.kill()  # died before it got the numbers
        process.submit(data)
        out = io.BytesIO()
        process.write(out)
    assert out.getvalue() == _drawn_here(data)
    # A process that never gets its numbers (the gate closed) is ended on the way out.
    with plot_process.PlotProcess() as process:
        child = process._process
    assert child.poll() is not None


def test_without_a_process_the_plot_is_drawn_here(monkeypatch):
    def no_process(*args, **kwargs):
        raise OSError("no processes left")

    monkeypatch.setattr(plot_process.subprocess, "Popen", no_process)
    data = _data()
    with plot_process.PlotProcess() as process:
        process.submit(data)
        out = io.BytesIO()
        process.write(out)
    assert out.getvalue() == _drawn_here(data)
