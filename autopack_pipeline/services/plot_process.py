"""The calibration plot drawn in a child process, beside the calibration.

Importing matplotlib costs ``calibrate`` half a second of CPU and drawing the plot another half, all
on the one thread that also computes (the GIL): the other core sat idle meanwhile. So ``calibrate``
starts a child when it starts (:func:`plot_process`); the child imports numpy and matplotlib while the
parent loads the events, then waits for the rows (``plots.plot_rows``), draws them with the same code
(``plot_drawing``) and hands back the PNG's bytes, which the parent writes where it always did. The
picture is the same, pixel for pixel: one function draws it in either process.

A failure to draw is raised in the parent as if it had drawn (the child's own exception, with the
child's traceback as a note). A child that cannot be started, or dies without an answer, leaves the
drawing to the parent, as before there was a child.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import autopack_pipeline

# The child's program: the package from where the parent has it, then serve().
_CHILD = f"import sys; sys.path.insert(0, sys.argv[1]); from {__name__} import serve; serve()"


class PlotProcess:
    """A child process ready to draw one calibration plot."""

    def __init__(self) -> None:
        # The parent's own copy of the package first on the path, so the child draws with the same code
        # (a checkout run through PYTHONPATH, or a sys.path entry the parent added at run time).
        source = str(Path(autopack_pipeline.__file__).resolve().parent.parent)
        # Its own session: a Ctrl-C at the terminal interrupts the command, which stops the child; the
        # child itself prints no traceback of its own. Left alone, it ends when its stdin closes.
        self._child = subprocess.Popen([sys.executable, "-c", _CHILD, source], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, start_new_session=True)
        self._feeding: threading.Thread | None = None

    def submit(self, rows: list, tolerance: float) -> None:
        """Hand the child its rows to draw; returns at once (the child may still be importing)."""
        data = pickle.dumps((rows, tolerance), protocol=pickle.HIGHEST_PROTOCOL)

        def feed() -> None:
            try:
                self._child.stdin.write(data)
                self._child.stdin.close()
            except OSError:  # the child died: result() finds no answer and the parent draws
                pass

        self._feeding = threading.Thread(target=feed, name="plot-rows", daemon=True)
        self._feeding.start()

    def result(self) -> bytes | None:
        """The PNG's bytes; None when the child gave no answer (the caller draws the plot itself).
        A failure to draw is raised here, as the child's exception."""
        if self._feeding is None:
            raise RuntimeError("result() before submit()")
        self._feeding.join()
        answer = self._child.stdout.read()
        self._child.stdout.close()
        self._child.wait()
        try:
            kind, *rest = pickle.loads(answer)
        except Exception:  # noqa: BLE001 (killed or crashed mid-answer: nothing usable came back)
            return None
        if kind == "png":
            return rest[0]
        error, child_traceback = rest
        if hasattr(error, "add_note"):  # Python 3.11 and later
            error.add_note(f"(drawn in a child process)\n{child_traceback}")
        raise error

    def close(self) -> None:
        """Stop the child if it is still waiting (the gate closed, the command failed)."""
        if self._child.poll() is None:
            self._child.kill()
            self._child.wait()
        for stream in (self._child.stdin, self._child.stdout):
            try:
                stream.close()
            except OSError:
                pass


@contextmanager
def plot_process() -> Iterator[PlotProcess | None]:
    """A :class:`PlotProcess` for the command's duration, or None when no child can be started."""
    try:
        process = PlotProcess()
    except OSError:
        yield None
        return
    try:
        yield process
    finally:
        process.close()


def _serve(source: IO[bytes], answer: IO[bytes]) -> None:
    """The child: import the drawing (numpy, matplotlib) now, then draw the rows when they come."""
    from autopack_pipeline.services.plot_drawing import draw_calibration_plot, matplotlib_parts

    matplotlib_parts()
    try:
        rows, tolerance = pickle.loads(source.read())
    except Exception:  # noqa: BLE001 (the parent gave up before sending: nothing to draw)
        return
    try:
        png = io.BytesIO()
        draw_calibration_plot(png, rows, tolerance)
        reply: tuple[Any, ...] = ("png", png.getvalue())
    except Exception as exc:  # noqa: BLE001 (handed to the parent, which raises it)
        text = traceback.format_exc()
        try:
            pickle.dumps(exc)
            reply = ("error", exc, text)
        except Exception:  # noqa: BLE001 (an exception that does not pickle travels as its text)
            reply = ("error", RuntimeError(f"drawing the calibration plot failed: {exc!r}"), text)
    answer.write(pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL))
    answer.flush()


def serve() -> None:
    """The child's main: the answer goes out on the original stdout; anything a library prints goes to
    stderr instead."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    _serve(sys.stdin.buffer, out)
    out.close()
    sys.stderr.flush()
    # Done: without the interpreter's teardown (a fifth of a second with matplotlib loaded), which the
    # parent would wait for. Nothing is left to flush or clean up.
    os._exit(0)
