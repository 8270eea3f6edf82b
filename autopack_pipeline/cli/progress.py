"""Progress bars for the long commands (collect, import, synth, the columnar extraction), drawn by rich.

A bar is drawn only for a person at a terminal: both stdout and stderr are terminals and ``--json``
was not given (DESIGN §10); otherwise the callback is ``None`` and the output is what it always was,
with no control characters in a log or a pipe. Bars go to stderr, so stdout keeps only the results.
The bar starts on the first report of progress, so work that turns out to be empty (an extraction
with no new rows) draws nothing.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# done, total (None when unknown, e.g. lines of a file being read), and an optional note on the latest item.
Advance = Callable[..., None]


def wanted(args: argparse.Namespace) -> bool:
    """Whether a progress bar is wanted: a person at a terminal, not a script reading ``--json``."""
    return not getattr(args, "json", False) and sys.stdout.isatty() and sys.stderr.isatty()


@contextmanager
def progress_bar(args: argparse.Namespace, description: str, unit: str, *, transient: bool = False
                 ) -> Iterator[Advance | None]:
    """A callback ``advance(done, total=None, note="")`` that moves a bar on stderr, or ``None`` when no
    bar is wanted (:func:`wanted`). ``transient`` bars are removed when the work ends."""
    if not wanted(args):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                   TimeElapsedColumn(), TextColumn("{task.fields[note]}"),
                   console=Console(file=sys.stderr), transient=transient)
    task = None

    def advance(done: int, total: int | None = None, note: str = "") -> None:
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task(description, total=total, note=note)
        bar.update(task, completed=done, total=total, note=note)

    try:
        yield advance
    finally:
        if task is not None:
            bar.stop()
