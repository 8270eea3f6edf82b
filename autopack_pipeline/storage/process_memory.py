"""Freed memory back to the system after a worker thread's share of an analysis.

glibc's malloc gives each thread that allocates its own arena, and keeps what a thread frees there for
that thread (its mmap threshold rises with every large block freed, so later arrays of a few MB come
from the arena instead of mmap). The analysis runs numpy work on a second thread in a few places (the
columnar read, the clean samples, the escalated retries): at ten million events that arena kept 70-100
MB per place that no other thread would reuse, which ends up on top of the analysis' peak. ``malloc_trim``
hands the arenas' free pages back; elsewhere than glibc there is nothing to do.
"""

from __future__ import annotations

import ctypes


def release_freed_memory() -> bool:
    """Give every malloc arena's free pages back to the system; False where that cannot be done (no glibc)."""
    try:
        # The symbols the process has loaded already: glibc's malloc_trim on Linux, nothing elsewhere.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim(0)
    return True
