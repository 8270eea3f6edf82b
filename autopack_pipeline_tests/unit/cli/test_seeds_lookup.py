"""Seeds come from the working directory (or AUTOPACK_SEEDS_DIR), and `apply-calibration` never edits
the installed package: from a second directory it edits that directory's ./seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from autopack_pipeline.cli import main
from autopack_pipeline.settings import PACKAGED_SEEDS_DIR, load_settings, seeds_directory
from autopack_pipeline_tests.integration.cli.test_calibration_patch_cli import PATCH
from autopack_pipeline_tests.support.calibration_cli_support import populate

COEFFICIENTS = "estimator_coefficients.yaml"


def _packaged_and_repo_files() -> dict[Path, bytes]:
    """Every coefficient file a wrong lookup could edit: the packaged defaults and the repository's."""
    files = [PACKAGED_SEEDS_DIR / COEFFICIENTS, Path(__file__).resolve().parents[3] / "seeds" / COEFFICIENTS]
    return {path: path.read_bytes() for path in files}


@pytest.fixture
def second_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A working directory other than the checkout, with a database and a patch; the package's and the
    repository's coefficient files are restored afterwards whatever the code under test did."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("AUTOPACK_SEEDS_DIR", raising=False)
    url = f"sqlite:///{work / 'telemetry.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    populate(url, [4100] * 20)
    (work / "patch.json").write_text(json.dumps(PATCH))
    originals = _packaged_and_repo_files()
    try:
        yield work, originals
    finally:
        for path, content in originals.items():
            if path.read_bytes() != content:
                path.write_bytes(content)


def _overhead(path: Path) -> int:
    return yaml.safe_load(path.read_text())["phase_overhead"]["table"]["implementation"]["low"]


def test_apply_calibration_edits_the_working_directorys_seeds(second_directory, capsys) -> None:
    work, originals = second_directory
    local = work / "seeds"
    local.mkdir()
    for seed in PACKAGED_SEEDS_DIR.glob("*.yaml"):
        (local / seed.name).write_bytes(seed.read_bytes())
    assert load_settings().seeds_dir == local

    assert main(["apply-calibration", "patch.json", "--yes", "--scale", "overhead"]) == 0, capsys.readouterr().err
    assert _overhead(local / COEFFICIENTS) == 1268
    assert (local / "estimator_coefficients.history").is_dir()
    assert _packaged_and_repo_files() == originals


def test_without_local_seeds_the_packaged_defaults_are_copied_then_edited(second_directory, capsys) -> None:
    work, originals = second_directory
    assert seeds_directory() == PACKAGED_SEEDS_DIR  # read-only defaults are what a fresh directory uses

    assert main(["apply-calibration", "patch.json", "--yes", "--scale", "overhead"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "never edited" in out
    local = work / "seeds"
    assert sorted(p.name for p in local.glob("*.yaml")) == sorted(p.name for p in PACKAGED_SEEDS_DIR.glob("*.yaml"))
    assert _overhead(local / COEFFICIENTS) == 1268
    assert _packaged_and_repo_files() == originals
    assert seeds_directory() == local  # from now on this directory's seeds are the ones in use


def test_seeds_dir_variable_pointing_into_the_package_is_refused(second_directory, monkeypatch, capsys) -> None:
    _work, originals = second_directory
    monkeypatch.setenv("AUTOPACK_SEEDS_DIR", str(PACKAGED_SEEDS_DIR))
    assert main(["apply-calibration", "patch.json", "--yes", "--scale", "overhead"]) == 2
    assert "installed package" in capsys.readouterr().err
    assert _packaged_and_repo_files() == originals


def test_a_relative_seeds_dir_variable_is_resolved_against_the_working_directory(second_directory, monkeypatch):
    work, _ = second_directory
    (work / "my-seeds").mkdir()
    monkeypatch.setenv("AUTOPACK_SEEDS_DIR", "my-seeds")
    assert load_settings().seeds_dir == work / "my-seeds"
