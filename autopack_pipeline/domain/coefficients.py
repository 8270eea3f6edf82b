"""The estimator's coefficient table: a versioned YAML file under ``seeds/``, loaded and validated.

Autopack kept these numbers as class constants, so every calibration was a code edit and nobody
could say which numbers produced a given prediction. Here they are data with a ``version``; the
estimator code holds only formulas. Validation is strict (unknown keys are errors) because a typo
in a key would otherwise silently fall back to a default and look like a calibration result.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from autopack_pipeline.domain.categories import (
    COMPLEXITIES,
    canonical_complexity,
    normalise_category,
)

COEFFICIENTS_FILE_NAME = "estimator_coefficients.yaml"
# apply-calibration keeps each replaced version here, next to the file, byte for byte.
HISTORY_DIR_NAME = "estimator_coefficients.history"
ContextQuality = Literal["none", "some", "strong"]

NonNegInt = Annotated[int, Field(strict=True, ge=0)]
PosInt = Annotated[int, Field(strict=True, gt=0)]
PosFloat = Annotated[float, Field(strict=True, gt=0)]
UnitFloat = Annotated[float, Field(strict=True, ge=0, le=1)]


class _Strict(BaseModel):
    """Base for every block: frozen, and unknown keys are errors rather than silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_complexity_keys(row: dict[str, Any], allow_other: bool = False) -> dict[str, Any]:
    allowed = set(COMPLEXITIES) | ({"other"} if allow_other else set())
    for key in row:
        if key not in allowed:
            raise ValueError(f"unknown complexity {key!r} (expected one of {sorted(allowed)})")
    return row


class NewModify(_Strict):
    """Marginal cost of one deliverable when it is a new file and when it is a modification."""

    new: NonNegInt
    modify: NonNegInt


class MarginalCost(_Strict):
    """Marginal cost per deliverable kind; the first matching kind wins (see the estimator)."""

    test: NewModify
    doc: NewModify
    config: NewModify
    frontend: NewModify
    python: NewModify
    sql: NewModify
    default: NewModify


class PhaseOverhead(_Strict):
    """Fixed phase cost by raw Autopack category name and complexity."""

    fallback: NonNegInt
    table: dict[str, dict[str, NonNegInt]]

    @field_validator("table")
    @classmethod
    def _rows_are_sane(cls, table: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for name, row in table.items():
            if not name.strip():
                raise ValueError("empty category name")
            try:
                _check_complexity_keys(row)
            except ValueError as exc:
                raise ValueError(f"row {name!r}: {exc}") from None
        return table


class Bands(_Strict):
    """Step function: ``factors[i]`` when the measure is below ``thresholds[i]``, else the last factor."""

    thresholds: list[NonNegInt]
    factors: list[PosFloat]

    @model_validator(mode="after")
    def _shape(self) -> Bands:
        if len(self.factors) != len(self.thresholds) + 1:
            raise ValueError("factors must have exactly one more entry than thresholds")
        if any(b <= a for a, b in zip(self.thresholds, self.thresholds[1:])):
            raise ValueError("thresholds must be strictly increasing")
        return self

    def factor(self, measure: int) -> float:
        for threshold, factor in zip(self.thresholds, self.factors):
            if measure < threshold:
                return factor
        return self.factors[-1]


class Clamp(_Strict):
    min: PosFloat
    max: PosFloat


class FileComplexity(_Strict):
    """Existing-file multiplier: product of three step factors, clamped."""

    code_lines: Bands
    import_lines: Bands
    max_indent: Bands
    clamp: Clamp


class ContextQualityRule(_Strict):
    strong_above_paths: NonNegInt


class ByContext(_Strict):
    none: NonNegInt
    some: NonNegInt
    strong: NonNegInt

    def for_quality(self, quality: ContextQuality) -> int:
        return int(getattr(self, quality))


class DocSynthesis(_Strict):
    confidence: UnitFloat
    investigate: ByContext
    api_extract: NonNegInt
    examples: NonNegInt
    writing_per_deliverable: NonNegInt
    coordination_fraction: UnitFloat
    coordination_min_deliverables: NonNegInt


class DocSotUpdate(_Strict):
    confidence: UnitFloat
    sot_file_names: list[str]
    context: ByContext
    write_per_entry: NonNegInt
    consistency_fraction: UnitFloat

    @field_validator("sot_file_names")
    @classmethod
    def _lower_case(cls, names: list[str]) -> list[str]:
        # Matching is on lower-cased basenames, so an upper-case entry could never match.
        bad = [n for n in names if n != n.strip().lower() or not n]
        if bad:
            raise ValueError(f"SOT file names must be lower-case basenames: {bad}")
        return names


class MarginRule(_Strict):
    margin: PosFloat


class LowConfidenceRule(MarginRule):
    below: UnitFloat


class ManyDeliverablesRule(MarginRule):
    at_least: PosInt


class HighRiskRule(MarginRule):
    categories: list[str]  # matched against the estimate's category exactly, as Autopack does
    complexity: str


class DocModelsRule(MarginRule):
    categories: list[str]


class Budget(_Strict):
    """Numbers of ``select_budget``: floors, buffer margins and the provider cap."""

    base_floor: dict[str, dict[str, PosInt]]
    universal_floor: dict[str, PosInt]
    buffer_margin: PosFloat
    low_confidence: LowConfidenceRule
    many_deliverables: ManyDeliverablesRule
    high_risk: HighRiskRule
    doc_models: DocModelsRule
    cap: PosInt

    @field_validator("base_floor")
    @classmethod
    def _canonical_rows(cls, floors: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        # select_budget looks floors up by canonical category; a row under an alias would be dead.
        for name, row in floors.items():
            if normalise_category(name) != name:
                raise ValueError(f"row {name!r} must use the canonical name {normalise_category(name)!r}")
            try:
                _check_complexity_keys(row)
            except ValueError as exc:
                raise ValueError(f"row {name!r}: {exc}") from None
        return floors

    @field_validator("universal_floor")
    @classmethod
    def _universal_keys(cls, row: dict[str, int]) -> dict[str, int]:
        _check_complexity_keys(row, allow_other=True)
        if "other" not in row:
            raise ValueError("needs an 'other' entry for unlisted complexities")
        return row


class GroupSetting(_Strict):
    """A calibrated group's settings (the optional ``calibration`` section of the file).

    ``prediction_multiplier`` scales the estimator's final estimate, whichever model produced it;
    ``budget_margin`` and ``budget_floor`` replace ``select_budget``'s margin rules and floor for the
    group. A missing entry keeps the file's general rule.
    """

    prediction_multiplier: PosFloat = 1.0
    budget_margin: PosFloat | None = None
    budget_floor: PosInt | None = None


class CoefficientTable(_Strict):
    """One validated version of the coefficient file. Build it with ``load_coefficients``."""

    version: str = Field(min_length=1)
    calibration_date: str
    calibration_samples: NonNegInt
    source: str = ""
    safety_margin: PosFloat
    no_deliverables_tokens: dict[str, PosInt]
    phase_overhead: PhaseOverhead
    marginal_cost: MarginalCost
    file_complexity: FileComplexity
    context_quality: ContextQualityRule
    doc_synthesis: DocSynthesis
    doc_sot_update: DocSotUpdate
    budget: Budget
    # Per (category as events record it, complexity): see GroupSetting. Absent: no group is calibrated.
    calibration: dict[str, dict[str, GroupSetting]] | None = None

    # (canonical category, complexity) -> overhead, built once after validation.
    _canonical_overhead: dict[tuple[str, str], int] = PrivateAttr(default_factory=dict)

    @field_validator("calibration_date", mode="before")
    @classmethod
    def _date_as_text(cls, value: Any) -> Any:
        # Unquoted YAML dates arrive as datetime.date; keep the ISO text so the dict dumps back as-is.
        return value.isoformat() if isinstance(value, _dt.date) else value

    @field_validator("no_deliverables_tokens")
    @classmethod
    def _default_keys(cls, row: dict[str, int]) -> dict[str, int]:
        _check_complexity_keys(row, allow_other=True)
        if "other" not in row:
            raise ValueError("needs an 'other' entry for unlisted complexities")
        return row

    @field_validator("calibration")
    @classmethod
    def _calibration_keys(cls, section: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        # Looked up by the estimate's canonical category: a row under an alias would never be read.
        for name, row in (section or {}).items():
            if normalise_category(name) != name:
                raise ValueError(f"row {name!r} must use the canonical name {normalise_category(name)!r}")
            try:
                _check_complexity_keys(row)
            except ValueError as exc:
                raise ValueError(f"row {name!r}: {exc}") from None
        return section

    @model_validator(mode="after")
    def _aliases_agree(self) -> CoefficientTable:
        merged: dict[tuple[str, str], tuple[str, int]] = {}
        for raw, row in self.phase_overhead.table.items():
            canonical = normalise_category(raw)
            for complexity, value in row.items():
                seen = merged.get((canonical, complexity))
                if seen is not None and seen[1] != value:
                    raise ValueError(
                        f"phase_overhead.table: rows {seen[0]!r} and {raw!r} both mean {canonical!r} "
                        f"but differ at {complexity!r} ({seen[1]} vs {value})"
                    )
                merged[(canonical, complexity)] = (raw, value)
        self._canonical_overhead = {key: value for key, (_, value) in merged.items()}
        return self

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Any, origin: str = "<mapping>") -> CoefficientTable:
        """Validate a parsed mapping; errors become one ``ValueError`` naming ``origin`` and the key."""
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise ValueError(f"{origin}: coefficient file must be a mapping at the top level, got {kind}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                key = ".".join(str(part) for part in err["loc"]) or "<top level>"
                problems.append(f"key {key!r}: {err['msg']}")
            raise ValueError(f"{origin}: invalid coefficients: " + "; ".join(problems)) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict in the file's layout (``from_mapping(to_dict())`` round-trips).

        Unset optional entries (no ``calibration`` section, a group without a floor) are left out,
        so a file without the section dumps as it did before the section existed.
        """
        return self.model_dump(mode="python", exclude_none=True)

    def to_yaml(self) -> str:
        """The table as YAML text, keys in file order (comments are not preserved)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=100)

    # -- lookups ------------------------------------------------------------------------------

    def overhead(self, category: str, complexity: str, lookup: str = "canonical") -> int:
        """PHASE_OVERHEAD for one phase, or the fallback.

        ``lookup="canonical"`` expects an already-canonical category (rows are normalised at load);
        ``lookup="autopack"`` matches the raw row name exactly, as Autopack's dict lookup did.
        """
        if lookup == "canonical":
            value = self._canonical_overhead.get((category, complexity))
        elif lookup == "autopack":
            value = self.phase_overhead.table.get(category, {}).get(complexity)
        else:
            raise ValueError(f"unknown category lookup {lookup!r} (expected 'canonical' or 'autopack')")
        return self.phase_overhead.fallback if value is None else value

    def no_deliverables_default(self, complexity: str) -> int:
        table = self.no_deliverables_tokens
        return table.get(complexity, table["other"])

    def budget_floor(self, canonical_category: str, complexity: str) -> int:
        row = self.budget.base_floor.get(canonical_category)
        if row is not None and complexity in row:
            return row[complexity]
        universal = self.budget.universal_floor
        return universal.get(complexity, universal["other"])

    def group_setting(self, category: str, complexity: str) -> GroupSetting | None:
        """The calibration entry of (canonical category, canonical complexity), or None."""
        row = (self.calibration or {}).get(category)
        return None if row is None else row.get(complexity)

    def prediction_multiplier(self, category: str, complexity: str) -> float:
        setting = self.group_setting(category, complexity)
        return 1.0 if setting is None else setting.prediction_multiplier

    def differs_only_in_calibration(self, other: CoefficientTable) -> bool:
        """Whether ``other`` has the same estimator and budget numbers, the calibration section and
        the version's own metadata aside: then a prediction of one converts exactly into the other's
        by the ratio of the groups' prediction multipliers."""
        ignored = {"version", "calibration_date", "calibration_samples", "source", "calibration"}
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: v for k, v in mine.items() if k not in ignored} == {
            k: v for k, v in theirs.items() if k not in ignored}

    # -- new versions -------------------------------------------------------------------------

    @staticmethod
    def _new_version(data: dict[str, Any], new_version: str, calibration_date: str | None,
                     calibration_samples: int | None, source: str | None) -> CoefficientTable:
        """``data`` as version ``new_version``, with the version metadata that was given replaced."""
        data["version"] = new_version
        for key, value in (("calibration_date", calibration_date), ("calibration_samples", calibration_samples),
                           ("source", source)):
            if value is not None:
                data[key] = value
        return CoefficientTable.from_mapping(data, origin=f"<version {new_version}>")

    def with_calibration(
        self,
        settings: dict[tuple[str, str], GroupSetting],
        new_version: str,
        *,
        calibration_date: str | None = None,
        calibration_samples: int | None = None,
        source: str | None = None,
    ) -> CoefficientTable:
        """A new version whose ``calibration`` section has ``settings`` (by canonical category and
        complexity) in place of those groups' entries; other groups keep theirs."""
        if not new_version or new_version == self.version:
            raise ValueError(f"new_version must be non-empty and differ from {self.version!r}")
        section = {category: dict(row) for category, row in (self.calibration or {}).items()}
        for (category, complexity), setting in settings.items():
            level = canonical_complexity(complexity)
            if level is None:
                raise ValueError(f"unknown complexity {complexity!r} in {(category, complexity)}")
            section.setdefault(normalise_category(category), {})[level] = setting
        data = self.to_dict()
        data["calibration"] = {category: {level: setting.model_dump(exclude_none=True)
                                          for level, setting in sorted(row.items())}
                               for category, row in sorted(section.items())}
        return self._new_version(data, new_version, calibration_date, calibration_samples, source)

    def with_overhead_multipliers(
        self,
        changes: dict[tuple[str, str], float],
        new_version: str,
        *,
        calibration_date: str | None = None,
        calibration_samples: int | None = None,
        source: str | None = None,
    ) -> CoefficientTable:
        """A new version with PHASE_OVERHEAD entries multiplied, addressed by canonical category.

        ``("tests", "low"): 1.2`` multiplies every raw row that normalises to ``tests`` (the
        ``testing`` row), so aliases stay equal. A group with no row yet (it was predicted with the
        fallback) gets a new row under its canonical name, starting from the fallback value.
        Results are rounded to the nearest integer, halves up: ``floor(value * m + 0.5)``, so
        915 * 1.2 gives 1098. Plain ``int()`` would lose a token whenever float error lands just
        under an integer, and ``round()`` rounds halves to even, which is harder to check by hand.
        """
        if not new_version or new_version == self.version:
            raise ValueError(f"new_version must be non-empty and differ from {self.version!r}")
        table = {raw: dict(row) for raw, row in self.phase_overhead.table.items()}
        for (category, complexity), multiplier in changes.items():
            if not isinstance(multiplier, (int, float)) or not math.isfinite(multiplier) or multiplier <= 0:
                raise ValueError(f"multiplier for {(category, complexity)} must be positive, got {multiplier!r}")
            canonical = normalise_category(category)
            level = canonical_complexity(complexity)
            if level is None:
                raise ValueError(f"unknown complexity {complexity!r} in {(category, complexity)}")
            aliases = [raw for raw in table if normalise_category(raw) == canonical]
            # Multiply the rows that have this complexity; if none has it, create it in every
            # alias row (or in a new canonical row) so the aliases keep agreeing.
            targets = [raw for raw in aliases if level in table[raw]] or aliases or [canonical]
            for raw in targets:
                base = table.setdefault(raw, {}).get(level, self.phase_overhead.fallback)
                table[raw][level] = int(math.floor(base * multiplier + 0.5))
        data = self.to_dict()
        data["phase_overhead"]["table"] = table
        return self._new_version(data, new_version, calibration_date, calibration_samples, source)


def default_coefficients_path() -> Path:
    """``estimator_coefficients.yaml`` in the seeds in use (``settings.seeds_directory``:
    ``$AUTOPACK_SEEDS_DIR``, else ``./seeds``, else the packaged defaults)."""
    # The environment is read in settings only; imported here so the domain stays importable alone.
    from autopack_pipeline.settings import seeds_directory

    return seeds_directory() / COEFFICIENTS_FILE_NAME


def load_coefficients(path: Path | None = None) -> CoefficientTable:
    """Read and validate a coefficient file (default: ``default_coefficients_path()``).

    Raises ``FileNotFoundError`` when the file is missing and ``ValueError`` naming the file and the
    offending key when its content is malformed.
    """
    target = Path(path) if path is not None else default_coefficients_path()
    return CoefficientTable.from_mapping(read_yaml_file(target, "coefficient file"), origin=str(target))


def read_yaml_file(path: Path, what: str) -> Any:
    """The YAML document in ``path``; ``FileNotFoundError`` naming ``what`` and the path, or
    ``ValueError`` naming the file when it is not YAML."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None


def load_coefficient_history(path: Path | None = None) -> dict[str, CoefficientTable]:
    """Every readable version kept in ``estimator_coefficients.history/`` beside ``path``, by version.

    A file that does not load is skipped: the history only makes re-prediction cheaper, events of a
    version it lacks are re-run through the estimator instead.
    """
    target = Path(path) if path is not None else default_coefficients_path()
    directory = target.parent / HISTORY_DIR_NAME
    tables: dict[str, CoefficientTable] = {}
    for kept in sorted(directory.glob("*.yaml")) if directory.is_dir() else ():
        try:
            table = load_coefficients(kept)
        except (OSError, ValueError):
            continue
        tables.setdefault(table.version, table)
    return tables


_default_cache: dict[tuple[str, int], CoefficientTable] = {}


def default_coefficients() -> CoefficientTable:
    """The default file, re-read only when its path or modification time changes.

    ``select_budget`` runs once per Builder call; parsing YAML each time would be wasted work, but a
    stale table after someone applies a calibration would be worse, hence the mtime in the key.
    """
    path = default_coefficients_path()
    try:
        key = (str(path.resolve()), path.stat().st_mtime_ns)
    except OSError:
        return load_coefficients(path)  # let the loader raise its clear error
    table = _default_cache.get(key)
    if table is None:
        table = load_coefficients(path)
        _default_cache.clear()
        _default_cache[key] = table
    return table
