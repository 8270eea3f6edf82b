"""One version of the estimator's coefficient table: validated, looked up, and derived into new versions.

Autopack kept these numbers as class constants, so every calibration was a code edit and nobody
could say which numbers produced a given prediction. Here they are data with a ``version``; the
estimator code holds only formulas. The sections are the models of :mod:`.coefficient_blocks`.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from autopack_pipeline.domain.categories import canonical_complexity, normalise_category
from autopack_pipeline.domain.coefficient_blocks import (
    Budget,
    ContextQualityRule,
    DocSotUpdate,
    DocSynthesis,
    FileComplexity,
    GroupSetting,
    MarginalCost,
    NonNegInt,
    PhaseOverhead,
    PosFloat,
    PosInt,
    StrictBlock,
    check_canonical_rows,
    check_complexity_keys,
)


class CoefficientTable(StrictBlock):
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
        check_complexity_keys(row, allow_other=True)
        if "other" not in row:
            raise ValueError("needs an 'other' entry for unlisted complexities")
        return row

    @field_validator("calibration")
    @classmethod
    def _calibration_keys(cls, section: dict[str, dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
        return None if section is None else check_canonical_rows(section)

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
