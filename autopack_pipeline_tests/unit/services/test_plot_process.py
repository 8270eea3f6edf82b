"""The calibration plot drawn in a child process is the one drawn in this process, byte for byte; a
failure to draw is raised here as the child's exception; a child that gives no answer leaves the
drawing to this process."""

from __future__ import annotations

import io

import numpy as np
import pytest

from autopack_pipeline.domain.analysis import CoverageGroup
from autopack_pipeline.services import plot_process as module
from autopack_pipeline.services.plot_process import plot_process
from autopack_pipeline.services.plots import plot_rows, render_calibration_plot


def _group(key: tuple[str, str], ratios, bounds=()) -> CoverageGroup:
    ratios, bounds = np.asarray(ratios, dtype=float), np.asarray(bounds, dtype=float)
    clean, cut = np.arange(len(ratios)), np.arange(len(ratios), len(ratios) + len(bounds))
    return CoverageGroup(key=key, clean_rows=clean, censored_rows=cut, predicted=np.ones(len(ratios)),
                         actual=ratios, budget=np.ones(len(ratios)), censored_predicted=np.ones(len(bounds)),
                         censored_actual=bounds, ratios=ratios, bounds=bounds)


@pytest.fixture
def observations():
    rng = np.random.default_rng(3)
    return {(c, "low"): _group((c, "low"), rng.lognormal(0, 0.4, 500), rng.uniform(1, 3, 40))
            for c in ("docs", "tests")}


def test_the_child_draws_the_same_png_as_this_process(observations):
    here = io.BytesIO()
    render_calibration_plot(here, observations, [], tolerance=1.2)
    with plot_process() as plotter:
        assert plotter is not None
        plotter.submit(plot_rows(observations, []), 1.2)
        assert plotter.result() == here.getvalue()


def test_a_failure_to_draw_is_raised_here_as_the_childs_exception(observations):
    rows = plot_rows(observations, [])
    with plot_process() as plotter:
        plotter.submit(rows, "not a number")  # the tolerance is formatted with :g
        with pytest.raises(ValueError) as raised:
            plotter.result()
    notes = getattr(raised.value, "__notes__", None)  # Python 3.11 and later
    assert notes is None or any("drawn in a child process" in note for note in notes)


def test_a_child_that_gives_no_answer_leaves_the_drawing_to_the_caller(observations, monkeypatch):
    monkeypatch.setattr(module.sys, "executable", "/bin/true")  # exits at once, answering nothing
    with plot_process() as plotter:
        plotter.submit(plot_rows(observations, []), 1.2)
        assert plotter.result() is None


def test_an_unused_child_is_stopped():
    with plot_process() as plotter:
        child = plotter._child
    assert child.poll() is not None
