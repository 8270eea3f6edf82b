"""Where a calibration is written: the coefficient file in use, unless that is the installed package's.

The installed package is never edited. When no ``AUTOPACK_SEEDS_DIR`` and no ``./seeds`` exist, the
packaged defaults are copied to ``./seeds`` first and the copy is edited (from then on the seeds of
that directory). ``AUTOPACK_SEEDS_DIR`` pointing into the package is refused: the copy would not be the
seeds in use.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from autopack_pipeline.output_files import ensure_directory
from autopack_pipeline.settings import SEEDS_DIR_VARIABLE, is_packaged_seeds, seeds_directory_is_configured


class SeedsInPackage(ValueError):
    """``AUTOPACK_SEEDS_DIR`` names the installed package's seeds, which are never edited (a usage error)."""


def coefficient_file_to_write(in_use: Path) -> tuple[Path, Path | None]:
    """Where a calibration of ``in_use`` is written, and the packaged seeds directory to copy first (or ``None``)."""
    seeds = in_use.parent
    if not is_packaged_seeds(seeds):
        return in_use, None
    if seeds_directory_is_configured():
        raise SeedsInPackage(f"{SEEDS_DIR_VARIABLE} points into the installed package ({seeds}), which is never "
                             f"edited: copy that directory elsewhere, point {SEEDS_DIR_VARIABLE} at the copy and run "
                             "again")
    local = Path.cwd() / "seeds"
    return local / in_use.name, seeds


def copy_packaged_seeds(source: Path, target: Path) -> None:
    """Copy the packaged seed files into ``target``, leaving any file already there alone."""
    ensure_directory(target)
    for seed_file in sorted(source.glob("*.yaml")):
        if not (target / seed_file.name).exists():
            shutil.copyfile(seed_file, target / seed_file.name)  # content only: the copy is the user's, writable
