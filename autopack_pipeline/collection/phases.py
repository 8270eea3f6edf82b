"""Phase specifications for a collection run, read from the data files in ``seeds/``."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from autopack_pipeline.domain.categories import COMPLEXITIES, canonical_complexity, normalise_category

PHASES_FILE = "telemetry_collection_phases.yaml"
TEMPLATES_FILE = "phase_templates.yaml"
# A targeted run's phases are built in memory up front; an absurd count once ate gigabytes in seconds.
MAX_TEMPLATE_PHASES = 10_000


class PhaseSpec(BaseModel):
    """One phase as the Builder sees it."""

    phase_id: str
    name: str
    goal: str
    category: str
    complexity: str
    deliverables: list[str]
    read_only_context: list[str] = Field(default_factory=list)
    scope_paths: list[str] = Field(default_factory=list)
    phase_index: int = 0
    max_builder_attempts: int = 3

    @field_validator("complexity")
    @classmethod
    def _known_complexity(cls, value: str) -> str:
        # An unknown value would be estimated and recorded as "medium" without a word: refuse it.
        if canonical_complexity(value) is None:
            raise ValueError(f"unknown complexity {value!r} (known: {', '.join(COMPLEXITIES)})")
        return value


class RunSpec(BaseModel):
    run_id: str
    tier_id: str = "T1"
    tier_name: str = "Telemetry Collection Tier"
    token_cap: int = 500_000
    max_phases: int = 15
    max_duration_minutes: int = 120


class PhaseSetError(ValueError):
    """A phases or templates file cannot be used; the message names the file and the problem."""


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PhaseSetError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise PhaseSetError(f"{path}: is a directory, not a YAML file") from None
    except OSError as exc:
        raise PhaseSetError(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise PhaseSetError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise PhaseSetError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise PhaseSetError(f"{path}: expected a mapping at the top level")
    return data


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}" for error in exc.errors())
    return str(exc)


def load_phase_file(path: Path) -> tuple[RunSpec, list[PhaseSpec]]:
    """Read a run and its phases; ``phase_defaults`` fill fields a phase leaves out."""
    data = _read_yaml(path)
    defaults = data.get("phase_defaults") or {}
    try:
        run = RunSpec(**(data.get("run") or {"run_id": path.stem}))
    except (ValidationError, TypeError) as exc:
        raise PhaseSetError(f"{path}: run: {_one_line(exc)}") from None
    phases = []
    for index, entry in enumerate(data.get("phases") or []):
        try:
            phases.append(PhaseSpec(**{**defaults, **entry, "phase_index": index}))
        except (ValidationError, TypeError) as exc:
            raise PhaseSetError(f"{path}: phase {index + 1}: {_one_line(exc)}") from None
    if not phases:
        raise PhaseSetError(f"{path}: no phases listed")
    duplicates = {p.phase_id for p in phases if sum(q.phase_id == p.phase_id for q in phases) > 1}
    if duplicates:
        raise PhaseSetError(f"{path}: duplicate phase ids {sorted(duplicates)}")
    return run, phases


def load_templates(seeds_dir: Path) -> dict[tuple[str, str], list[dict]]:
    """Templates per canonical (category, complexity) group."""
    path = seeds_dir / TEMPLATES_FILE
    groups = _read_yaml(path).get("groups") or {}
    out: dict[tuple[str, str], list[dict]] = {}
    for key, entries in groups.items():
        category, _, complexity = str(key).partition("/")
        canonical = canonical_complexity(complexity)
        if canonical is None or not entries:
            raise PhaseSetError(f"{path}: group {key!r} needs a known complexity and at least one template")
        out[(normalise_category(category), canonical)] = list(entries)
    return out


def check_template_phase_count(count: int) -> None:
    """Refuse a targeted phase count outside 1..MAX_TEMPLATE_PHASES."""
    if not 1 <= count <= MAX_TEMPLATE_PHASES:
        raise PhaseSetError(f"a targeted run takes 1 to {MAX_TEMPLATE_PHASES} phases, got {count}")


def phases_from_templates(
    seeds_dir: Path, category: str, complexity: str, count: int, *, start_index: int = 0
) -> list[PhaseSpec]:
    """``count`` phases for one group, cycling through its templates."""
    check_template_phase_count(count)
    group = (normalise_category(category), canonical_complexity(complexity) or "")
    templates = load_templates(seeds_dir)
    if group not in templates:
        known = ", ".join(f"{c}/{x}" for c, x in sorted(templates))
        raise PhaseSetError(f"no phase templates for {group[0]}/{group[1]}; templates exist for: {known}")
    phases = []
    for n in range(1, count + 1):
        template = templates[group][(n - 1) % len(templates[group])]
        deliverables = [d.format(n=n) for d in template["deliverables"]]
        phases.append(
            PhaseSpec(
                phase_id=f"tpl-{group[0]}-{group[1]}-{n:03d}",
                name=f"{group[0]}/{group[1]} #{n}",
                goal=template["goal"],
                category=group[0],
                complexity=group[1],
                deliverables=deliverables,
                scope_paths=sorted({str(Path(d).parent) + "/" for d in deliverables}),
                phase_index=start_index + n - 1,
            )
        )
    return phases


def default_phase_set(seeds_dir: Path, template_phases_per_group: int) -> tuple[RunSpec, list[PhaseSpec]]:
    """Autopack's ten seed phases, plus ``template_phases_per_group`` phases for every template group."""
    run, phases = load_phase_file(seeds_dir / PHASES_FILE)
    if template_phases_per_group > 0:
        for category, complexity in sorted(load_templates(seeds_dir)):
            phases += phases_from_templates(
                seeds_dir, category, complexity, template_phases_per_group, start_index=len(phases)
            )
    return run, phases
