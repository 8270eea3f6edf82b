"""`calibrate` and `metrics` read the columnar copy without loading pandas, Alembic, scipy or the ORM models,
and on an up-to-date copy of a SQLite file without SQLAlchemy at all.

Both cost a command time and memory it does not need (pandas 0.3 s and 50 MB, Alembic a tenth of a
second): nothing in the path may import them, and pyarrow imports pandas by itself the first time it
converts between Arrow and Python or numpy through ``pa.array``, ``pa.scalar`` or ``to_numpy``
(``storage.columnar.encoding.arrow_of``). SQLAlchemy's import is a seventh of a warm `calibrate` at a
million events: when the schema is current and the copy up to date, the standard library's ``sqlite3``
answers the few questions asked of the database (``storage.handle``). Nor pyarrow then (80-100 ms): the
arrays are mapped from the copy's image (``storage.columnar.image``), and so are `calibrate`'s prediction
inputs (``storage.columnar.inputs_image``), and the modules on that path import pyarrow only when they first
use it (``storage.arrow_modules``). A fresh interpreter runs the command and
reports what it loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autopack_pipeline_tests.support.calibration_cli_support import environment, populate

# pydantic-settings and its sources (dotenv, the cloud secret stores) cost 10 ms: load_settings reads the
# environment itself. scipy: scipy.special alone loaded numpy.testing, numpy.f2py and numpy.ma through its
# array-API layer, 0.3 s (domain.binomial sums the pooled margins' binomial instead).
HEAVY = ("pandas", "alembic", "pydantic_settings", "dotenv", "scipy")
# Nor SQLAlchemy's ORM with our models (0.07 s): opening a database at head checks its columns by name
# (storage.model_columns); nor PostgreSQL's dialect for a SQLite database; nor the drift and the tasks'
# rules (7 ms), which only the task stage reads.
HEAVY_MODULES = ("sqlalchemy.orm", "autopack_pipeline.storage.models", "sqlalchemy.dialects.postgresql",
                 "autopack_pipeline.domain.drift", "autopack_pipeline.domain.tasks")
_PROBE = """
import contextlib, io, json, sys
from autopack_pipeline.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(sys.argv[1:])
print(json.dumps({"exit": code, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in %r or m in %r)}))
"""


def _loaded(args: list[str], env: dict[str, str], cwd: Path, heavy: tuple[str, ...] = HEAVY) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "AUTOPACK_"))}
    probe = _PROBE % (heavy, HEAVY_MODULES)
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=cwd, env={**clean, **env},
                          capture_output=True, text=True, timeout=240, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def store_of_two_parts(tmp_path: Path) -> dict[str, str]:
    """A database whose columnar copy has two parts (the second from a refresh), so that reading it joins
    phase codes across parts; the second run's events lack a coefficient version (nulls to fill)."""
    env = environment(tmp_path) | {"AUTOPACK_METRICS_WINDOW_DAYS": "0"}
    populate(env["DATABASE_URL"], [int(3424 * (0.8 + 0.025 * i)) for i in range(30)], truncated=2)
    assert _loaded(["metrics", "--json"], env, tmp_path)["exit"] == 0  # the first part
    populate(env["DATABASE_URL"], [4000] * 6, run_id="run-2")
    from sqlalchemy import text

    from autopack_pipeline.storage.database import make_engine

    engine = make_engine(env["DATABASE_URL"])
    with engine.begin() as connection:
        connection.execute(text("UPDATE token_estimation_v2_events SET coefficients_version = NULL "
                                "WHERE run_id = 'run-2'"))
    engine.dispose()
    return env


@pytest.mark.parametrize("args", [["metrics", "--json"], ["calibrate", "--force", "--json"]],
                         ids=["metrics", "calibrate"])
def test_reading_the_columnar_copy_loads_neither_pandas_nor_alembic_nor_the_orm(tmp_path, store_of_two_parts, args):
    found = _loaded(args, store_of_two_parts, tmp_path)
    assert found == {"exit": 0, "loaded": []}
    manifest = json.loads((tmp_path / ".autopack" / "columnar" / "telemetry.db" / "manifest.json").read_text())
    assert len(manifest["parts"]) == 2 and manifest["rows"] == 38


@pytest.mark.parametrize("args", [["metrics", "--json"], ["calibrate", "--force", "--json"]],
                         ids=["metrics", "calibrate"])
def test_on_an_up_to_date_copy_a_sqlite_database_is_read_without_sqlalchemy_or_pyarrow(tmp_path, store_of_two_parts,
                                                                                      args):
    # The first run reads run-2's rows (and `calibrate` the prediction inputs) from the database: the engine does,
    # and pyarrow writes the new part and decodes the parts into the image.
    heavy = ("sqlalchemy", "pyarrow")
    extracting = _loaded(args, store_of_two_parts, tmp_path, heavy=heavy)
    assert extracting["exit"] == 0 and set(heavy) <= set(extracting["loaded"])
    warm = _loaded(args, store_of_two_parts, tmp_path, heavy=heavy)
    assert warm == {"exit": 0, "loaded": []}


def test_the_window_drift_test_of_a_later_round_loads_no_scipy():
    """After the loop's first apply, `calibrate` compares the newest coefficient version's errors with the older
    ones' (``calibration_window.error_moved``); scipy.stats took 1.1 s of it to import."""
    probe = """
import json, sys
import numpy as np
from autopack_pipeline.domain.calibration_window import error_moved
rng = np.random.default_rng(3)
n = 400
groups = np.repeat(np.arange(4), n // 4)
newest = np.arange(n) % 2 == 0
test = error_moved(groups, rng.normal(size=n) + newest * 0.5, np.zeros(n, bool), newest, ~newest,
                   group_names=["a", "b", "c", "d"])
print(json.dumps({"moved": test.moved, "scipy": sorted(m for m in sys.modules if m.split(".")[0] == "scipy")}))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"moved": True, "scipy": []}


_THREADS_AFTER_NUMPY = """
import os, sys
if sys.argv[1] == "package":
    import autopack_pipeline  # noqa: F401
import numpy  # noqa: F401
print(len(os.listdir("/proc/self/task")), os.environ.get("OPENBLAS_NUM_THREADS"))
"""


def _threads_after_numpy(first: str, **env: str) -> tuple[int, str]:
    # Each of these sets OpenBLAS's thread count; none may come from the environment the tests run in.
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")}
    done = subprocess.run([sys.executable, "-c", _THREADS_AFTER_NUMPY, first], env={**clean, **env},
                          capture_output=True, text=True, timeout=120, check=True)
    threads, setting = done.stdout.split()
    return int(threads), setting


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not Path("/proc/self/task").is_dir(),
                    reason="OpenBLAS starts helper threads only with a second core; counted through /proc")
def test_numpy_starts_no_blas_threads_under_the_package():
    """OpenBLAS's helper threads spin for about 0.1 s of CPU when numpy loads (the package's __init__ says
    why none are wanted); a process that loads the package first starts none, and a user's setting stands."""
    alone, _ = _threads_after_numpy("numpy-alone")
    assert alone > 1  # what the package prevents: without it, numpy starts OpenBLAS's threads here
    assert _threads_after_numpy("package") == (1, "1")
    assert _threads_after_numpy("package", OPENBLAS_NUM_THREADS="2") == (2, "2")
