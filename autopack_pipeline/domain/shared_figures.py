"""A figure of one calibration group computed once for every caller that asks for it, on whichever
thread asks first.

Both calibration methods' patch sections run at the same time, on two threads
(``services.calibrating``), over the same group objects, and an unidentifiable group's settings come
out the same in both whenever neither method's factor passes the group's own lower bound (every such
group at ten million events): each is a Kaplan-Meier estimate over up to a million and a half calls.
:func:`shared` keeps the figure on the group, keyed by everything it is computed from; a caller that
finds it still being computed on the other thread may take it later (``wait=False``) and compute the
next group meanwhile, so the two sections share the groups between them instead of one waiting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

# Returned by shared(..., wait=False) when another thread is computing the figure.
BUSY: Any = object()

_CLAIMS = threading.Lock()


def shared(holder: Any, key: Hashable, compute: Callable[[], T], *, wait: bool = True) -> T:
    """``compute()``, once per ``key`` for ``holder`` (an object with a ``__dict__``; a frozen dataclass
    too): the first caller computes it, the others get the same result (or its exception). With
    ``wait=False`` a caller that finds it still being computed gets :data:`BUSY` instead of waiting."""
    with _CLAIMS:
        figures = holder.__dict__.setdefault("_shared_figures", {})
        entry = figures.get(key)
        mine = entry is None
        if mine:
            entry = figures[key] = Future()
    if mine:
        try:
            entry.set_result(compute())
        except BaseException as error:
            entry.set_exception(error)
            raise
    elif not wait and not entry.done():
        return BUSY
    return entry.result()
