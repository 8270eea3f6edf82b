"""Freed memory back to the system after a worker thread's share of an analysis, and numpy's large
arrays on small pages while an analysis or a load runs (:func:`small_pages`).

glibc's malloc gives each thread that allocates its own arena, and keeps what a thread frees there for
that thread (its mmap threshold rises with every large block freed, so later arrays of a few MB come
from the arena instead of mmap). The analysis runs numpy work on a second thread in a few places (the
columnar read, the clean samples, the escalated retries): at ten million events that arena kept 70-100
MB per place that no other thread would reuse, which ends up on top of the analysis' peak. ``malloc_trim``
hands the arenas' free pages back; elsewhere than glibc there is nothing to do.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager


def release_freed_memory() -> bool:
    """Give every malloc arena's free pages back to the system; False where that cannot be done (no glibc)."""
    try:
        # The symbols the process has loaded already: glibc's malloc_trim on Linux, nothing elsewhere.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim(0)
    return True


@contextmanager
def small_pages() -> Iterator[None]:
    """numpy's large arrays on ordinary 4 KB pages for the duration (its default asks the kernel for
    2 MB transparent huge pages, ``madvise(MADV_HUGEPAGE)``, for every array of 4 MB or more).

    The analysis allocates and frees some 4 GB of short-lived arrays at ten million events, each a fresh
    mapping whose pages the kernel zeroes on first touch. On huge pages that zeroing (with the
    compaction that finds the pages) took a third of the analysis' CPU time on the two-core benchmark
    machine, twice what the same bytes cost on small pages; the gathers' extra TLB misses cost less.
    Loading the arrays gains the same way: at ten million events 0.9 s of CPU against 1.2-2.1 s (the
    kernel's share 0.3 against 0.6-1.5 s), three alternating pairs at a load average under 1. The setting is the process' own: it is put back afterwards."""
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # another numpy layout: keep its default
        yield
        return
    previous = _set_madvise_hugepage(False)
    try:
        yield
    finally:
        _set_madvise_hugepage(previous)
