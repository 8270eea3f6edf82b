"""The calibration plot drawn by a second process, started when ``calibrate`` starts.

Drawing costs ``calibrate`` matplotlib's import (0.3 s of CPU) and the drawing itself (0.4 s) at a
million events, none of it numpy that a thread could run beside the numbers: it holds the GIL. A
process of its own imports matplotlib while the command loads and calibrates, gets the plot's numbers
(``plot_data.PlotData``, a few hundred kB) as soon as both methods have run, and draws while the command
works out the margins and writes the reports: on a second core both leave the command's path.

The PNG is the one ``plots.draw_plot`` writes in the command's own process, which is also what
happens when the process is not there to draw it (it failed to start, died, or answered nothing).

Run as ``python -m autopack_pipeline.services.plot_process``: a pickled ``PlotData`` on stdin, the PNG
on stdout.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import subprocess
import sys
import threading
from contextlib import AbstractContextManager, nullcontext
from typing import IO

from autopack_pipeline.services.plot_data import PlotData

logger = logging.getLogger(__name__)

# Below this many events the command draws the plot itself: its analysis is too short to hide the
# process's start behind (and the unit tests' small databases start no process).
PLOT_PROCESS_MIN_EVENTS = 100_000
# How long the command waits for the PNG once it needs it: far above a drawing (under a second at
# a million events), so it only ends a process that hangs, and the command draws the plot itself.
_WAIT_SECONDS = 120.0


class PlotProcess:
    """A process importing matplotlib now and drawing one plot later: :meth:`submit` the numbers,
    :meth:`write` the PNG. :meth:`close` ends it (drawn or not). A context manager."""

    def __init__(self) -> None:
        self._exchange: threading.Thread | None = None
        self._png: bytes | None = None
        self._data: PlotData | None = None
        try:
            # The same interpreter and environment; stderr kept for the log if the drawing fails.
            self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
        except OSError as exc:
            logger.info("the plot will be drawn in this process: %s", exc)
            self._process = None

    def __enter__(self) -> PlotProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, data: PlotData) -> None:
        """Hand over the plot's numbers. The exchange runs on a thread that waits on the pipes (no GIL
        held), so the command goes on at once."""
        self._data = data
        if self._process is None or self._exchange is not None:
            return
        payload = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
        self._exchange = threading.Thread(target=self._communicate, args=(self._process, payload), daemon=True)
        self._exchange.start()

    def _communicate(self, process: subprocess.Popen[bytes], payload: bytes) -> None:
        try:
            png, errors = process.communicate(payload)
        except (OSError, ValueError) as exc:
            logger.info("the plot process could not be reached: %s", exc)
            return
        if process.returncode == 0 and png:
            self._png = png
        else:
            logger.info("the plot process failed (exit %s): %s", process.returncode,
                        errors.decode(errors="replace").strip().splitlines()[-1:] or "no message")

    def write(self, handle: IO[bytes]) -> None:
        """Write the submitted plot's PNG to ``handle``: the process's, or drawn here when it has none."""
        if self._data is None:
            raise RuntimeError("no plot was submitted")
        if self._exchange is not None:
            self._exchange.join(_WAIT_SECONDS)
        if self._png is not None:
            handle.write(self._png)
            return
        self.close()
        from autopack_pipeline.services.plots import draw_plot

        draw_plot(handle, self._data)

    def close(self) -> None:
        """End the process if it is still there (a closed gate draws no plot)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait()


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plot_process_for(events: int) -> AbstractContextManager[PlotProcess | None]:
    """A :class:`PlotProcess` for an analysis of ``events`` events, or None (draw in this process)
    below :data:`PLOT_PROCESS_MIN_EVENTS` or on a single core, where the process would only add its
    start to the command's CPU time."""
    return PlotProcess() if events >= PLOT_PROCESS_MIN_EVENTS and _cores() > 1 else nullcontext()


def main(stdin: IO[bytes], stdout: IO[bytes]) -> int:
    """Import matplotlib, wait for the numbers on ``stdin``, write the PNG to ``stdout``."""
    from autopack_pipeline.services.plots import draw_plot

    data = pickle.load(stdin)
    if not isinstance(data, PlotData):
        raise TypeError(f"expected the plot's PlotData, got {type(data).__name__}")
    png = io.BytesIO()
    draw_plot(png, data)
    stdout.write(png.getvalue())
    stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.stdin.buffer, sys.stdout.buffer))
