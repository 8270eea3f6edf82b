"""Freed memory of a worker thread handed back to the system (storage.process_memory)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Run in a fresh interpreter: in the test process, arenas left by earlier tests decide what a thread keeps.
SCRIPT = """
import sys, threading
import numpy as np
from autopack_pipeline.storage.process_memory import release_freed_memory

def resident_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

np.ones(10_000_000).sum()  # a large block freed: the mmap threshold rises, as in an analysis

def work():
    # Arrays of a few MB, allocated and freed on this thread: its malloc arena keeps them.
    for size in range(1_000_000, 1_400_000, 10_000):
        doubled = np.random.default_rng(size).random(size) * 2
        del doubled
    blocks = [np.ones(500_000) for _ in range(40)]
    del blocks

worker = threading.Thread(target=work)
worker.start()
worker.join()
kept = resident_mb()
released = release_freed_memory() if sys.argv[1] == "release" else True
print(released, kept - resident_mb())
"""


def _freed(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_what_a_worker_thread_freed_goes_back_to_the_system():
    released, freed = _freed("release")
    assert released and freed > 20
    assert _freed("keep")[1] < 5  # without it the thread's arena keeps them: the check can fail
