"""Freed memory of a worker thread handed back to the system (storage.process_memory)."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from autopack_pipeline.storage.process_memory import release_freed_memory


def _resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_what_a_worker_thread_freed_goes_back_to_the_system():
    np.ones(10_000_000).sum()  # a large block freed: the main thread's mmap threshold rises, as in an analysis

    def work() -> None:
        # Arrays of a few MB, allocated and freed on this thread: its arena keeps them.
        for size in range(1_000_000, 1_400_000, 10_000):
            doubled = np.random.default_rng(size).random(size) * 2
            del doubled
        blocks = [np.ones(500_000) for _ in range(40)]
        del blocks

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    kept = _resident_mb()
    assert release_freed_memory()
    assert _resident_mb() < kept - 20
