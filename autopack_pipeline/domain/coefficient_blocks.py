"""The blocks of the estimator's coefficient file: one strict pydantic model per section.

Validation is strict (unknown keys are errors) because a typo in a key would otherwise silently fall
back to a default and look like a calibration result. :mod:`.coefficient_table` assembles these
blocks into the versioned table; :mod:`.coefficients` reads and writes the file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autopack_pipeline.domain.categories import COMPLEXITIES, normalise_category

ContextQuality = Literal["none", "some", "strong"]

NonNegInt = Annotated[int, Field(strict=True, ge=0)]
PosInt = Annotated[int, Field(strict=True, gt=0)]
PosFloat = Annotated[float, Field(strict=True, gt=0)]
UnitFloat = Annotated[float, Field(strict=True, ge=0, le=1)]


class StrictBlock(BaseModel):
    """Base for every block: frozen, and unknown keys are errors rather than silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def check_complexity_keys(row: dict[str, Any], allow_other: bool = False) -> dict[str, Any]:
    allowed = set(COMPLEXITIES) | ({"other"} if allow_other else set())
    for key in row:
        if key not in allowed:
            raise ValueError(f"unknown complexity {key!r} (expected one of {sorted(allowed)})")
    return row


def check_canonical_rows(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Rows keyed by canonical category, each keyed by complexity. The estimator looks a row up by the
    estimate's canonical category, so a row under an alias would never be read: it is refused."""
    for name, row in rows.items():
        if normalise_category(name) != name:
            raise ValueError(f"row {name!r} must use the canonical name {normalise_category(name)!r}")
        try:
            check_complexity_keys(row)
        except ValueError as exc:
            raise ValueError(f"row {name!r}: {exc}") from None
    return rows


class NewModify(StrictBlock):
    """Marginal cost of one deliverable when it is a new file and when it is a modification."""

    new: NonNegInt
    modify: NonNegInt


class MarginalCost(StrictBlock):
    """Marginal cost per deliverable kind; the first matching kind wins (see the estimator)."""

    test: NewModify
    doc: NewModify
    config: NewModify
    frontend: NewModify
    python: NewModify
    sql: NewModify
    default: NewModify


class PhaseOverhead(StrictBlock):
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
                check_complexity_keys(row)
            except ValueError as exc:
                raise ValueError(f"row {name!r}: {exc}") from None
        return table


class Bands(StrictBlock):
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


class Clamp(StrictBlock):
    min: PosFloat
    max: PosFloat


class FileComplexity(StrictBlock):
    """Existing-file multiplier: product of three step factors, clamped."""

    code_lines: Bands
    import_lines: Bands
    max_indent: Bands
    clamp: Clamp


class ContextQualityRule(StrictBlock):
    strong_above_paths: NonNegInt


class ByContext(StrictBlock):
    none: NonNegInt
    some: NonNegInt
    strong: NonNegInt

    def for_quality(self, quality: ContextQuality) -> int:
        return int(getattr(self, quality))


class DocSynthesis(StrictBlock):
    confidence: UnitFloat
    investigate: ByContext
    api_extract: NonNegInt
    examples: NonNegInt
    writing_per_deliverable: NonNegInt
    coordination_fraction: UnitFloat
    coordination_min_deliverables: NonNegInt


class DocSotUpdate(StrictBlock):
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


class MarginRule(StrictBlock):
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


class Budget(StrictBlock):
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
        return check_canonical_rows(floors)  # select_budget looks floors up by canonical category

    @field_validator("universal_floor")
    @classmethod
    def _universal_keys(cls, row: dict[str, int]) -> dict[str, int]:
        check_complexity_keys(row, allow_other=True)
        if "other" not in row:
            raise ValueError("needs an 'other' entry for unlisted complexities")
        return row


class GroupSetting(StrictBlock):
    """A calibrated group's settings (the optional ``calibration`` section of the file).

    ``prediction_multiplier`` scales the estimator's final estimate, whichever model produced it;
    ``budget_margin`` and ``budget_floor`` replace ``select_budget``'s margin rules and floor for the
    group. A missing entry keeps the file's general rule.
    """

    prediction_multiplier: PosFloat = 1.0
    budget_margin: PosFloat | None = None
    budget_floor: PosInt | None = None
