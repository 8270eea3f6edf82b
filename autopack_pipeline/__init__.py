"""Calibrate Autopack's token budgets from its own telemetry (see the README)."""

import os

# numpy's OpenBLAS starts a worker thread per extra core when numpy loads, and each spins for about 0.1 s
# of CPU before it sleeps (importing numpy took 0.18-0.21 s of CPU here, 0.08-0.11 s with one thread).
# Nothing in this project multiplies matrices large enough to gain from them, and on a 2-core machine
# that spin takes the second core from our helper threads and the database's backends. Set here, before
# any module of the package imports numpy, it covers the CLI, Dagster's code locations and run workers
# (which load the package before numpy) and every process they start; a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
