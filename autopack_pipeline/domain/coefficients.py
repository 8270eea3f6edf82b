"""The estimator's coefficient file: a versioned YAML file under ``seeds/``, read and validated.

The table itself (:class:`CoefficientTable`) and its blocks live in :mod:`.coefficient_table` and
:mod:`.coefficient_blocks`; this module reads files into tables. Which file is "the" file is the
caller's choice (the seeds directory is a setting, read by ``autopack_pipeline.settings`` only), so
every reader here takes its path.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml

from autopack_pipeline.domain.coefficient_blocks import (
    Bands,
    Budget,
    ByContext,
    Clamp,
    ContextQuality,
    ContextQualityRule,
    DocModelsRule,
    DocSotUpdate,
    DocSynthesis,
    FileComplexity,
    GroupSetting,
    HighRiskRule,
    LowConfidenceRule,
    ManyDeliverablesRule,
    MarginalCost,
    MarginRule,
    NewModify,
    PhaseOverhead,
)
from autopack_pipeline.domain.coefficient_table import CoefficientTable

__all__ = [
    "COEFFICIENTS_FILE_NAME",
    "HISTORY_DIR_NAME",
    "Bands",
    "Budget",
    "ByContext",
    "Clamp",
    "CoefficientTable",
    "ContextQuality",
    "ContextQualityRule",
    "DocModelsRule",
    "DocSotUpdate",
    "DocSynthesis",
    "FileComplexity",
    "GroupSetting",
    "HighRiskRule",
    "LowConfidenceRule",
    "ManyDeliverablesRule",
    "MarginRule",
    "MarginalCost",
    "NewModify",
    "PhaseOverhead",
    "coefficients_path_in",
    "load_coefficient_history",
    "load_coefficients",
    "read_yaml_file",
]

COEFFICIENTS_FILE_NAME = "estimator_coefficients.yaml"
# apply-calibration keeps each replaced version here, next to the file, byte for byte.
HISTORY_DIR_NAME = "estimator_coefficients.history"


def coefficients_path_in(seeds_dir: Path) -> Path:
    """The coefficient file of a seeds directory."""
    return Path(seeds_dir) / COEFFICIENTS_FILE_NAME


def load_coefficients(path: Path) -> CoefficientTable:
    """Read and validate the coefficient file at ``path``.

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` naming the file and the
    offending key when its content is malformed.
    """
    target = Path(path)
    return CoefficientTable.from_mapping(read_yaml_file(target, "coefficient file"), origin=str(target))


_FAST_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml_file(path: Path, what: str) -> Any:
    """The YAML document in ``path``; ``FileNotFoundError`` naming ``what`` and the path, or
    ``ValueError`` naming the file when it is not YAML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    try:
        # libyaml's parser where PyYAML was built with it: the same documents as safe_load (the same
        # constructor and resolver), ten times faster (`calibrate` reads the coefficient file and the
        # prices, 10 ms each in Python). Its error messages lack the line quoted with a caret, so a file
        # it refuses is parsed again in Python for the message a person reads.
        return yaml.load(text, Loader=_FAST_SAFE_LOADER)
    except yaml.YAMLError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None


# apply-calibration names each version it writes "<base>+cal<UTC stamp>", so a version tells when it was applied.
CALIBRATION_SUFFIX = "+cal"
_CALIBRATION_STAMP = "%Y%m%dT%H%M%SZ"


def calibrated_version_name(old_version: str, now: datetime) -> str:
    """``<base>+cal<UTC stamp>``: the base is the old version without an earlier ``+cal`` suffix. The stamp is
    at least a second after the old version's, so a version applied within the same second as the one before
    it (rounds of ``loop``) still gets a name of its own: the history keeps versions by name, and two rounds
    once shared one."""
    moment = now.replace(tzinfo=timezone.utc) if now.tzinfo is None else now.astimezone(timezone.utc)
    previous = calibrated_at(old_version)
    if previous is not None and moment < previous + timedelta(seconds=1):
        moment = previous + timedelta(seconds=1)
    return old_version.split(CALIBRATION_SUFFIX)[0] + CALIBRATION_SUFFIX + moment.strftime(_CALIBRATION_STAMP)


def calibrated_at(version: str) -> datetime | None:
    """When apply-calibration wrote ``version`` (UTC), read from its name; None for a version it did not name."""
    _base, suffix, stamp = version.rpartition(CALIBRATION_SUFFIX)
    if not suffix:
        return None
    try:
        return datetime.strptime(stamp, _CALIBRATION_STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def load_coefficient_history(path: Path) -> dict[str, CoefficientTable]:
    """Every readable version kept in ``estimator_coefficients.history/`` beside ``path``, by version.

    A file that does not load is skipped: the history only makes re-prediction cheaper, events of a
    version it lacks are re-run through the estimator instead.
    """
    directory = Path(path).parent / HISTORY_DIR_NAME
    tables: dict[str, CoefficientTable] = {}
    for kept in sorted(directory.glob("*.yaml")) if directory.is_dir() else ():
        try:
            table = load_coefficients(kept)
        except (OSError, ValueError):
            continue
        tables.setdefault(table.version, table)
    return tables
