"""The phases a synthetic load draws from: categories, complexities and deliverable counts with their
frequencies, and a pool of archetypes per (category, complexity, deliverable count), each priced once by
the real :class:`~autopack_pipeline.domain.estimator.TokenEstimator` and ``select_budget`` with the
coefficient file in ``seeds/``, next to the simulated backend's median output per group."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from autopack_pipeline.domain.coefficients import load_coefficients
from autopack_pipeline.domain.estimator import TokenEstimator, select_budget
from autopack_pipeline.llm.simulated import SimulationProfile
from autopack_pipeline.settings import PACKAGED_SEEDS_DIR
from autopack_pipeline.storage.events import MAX_STORED_DELIVERABLES

# Canonical categories and how often each occurs. Categories without their own row in the simulated
# profile answer with its "default" lengths, as the simulated backend does.
CATEGORY_WEIGHTS: dict[str, float] = {
    "implementation": 0.42,
    "tests": 0.24,
    "docs": 0.12,
    "refactoring": 0.07,
    "configuration": 0.06,
    "integration": 0.05,
    "frontend": 0.04,
}
COMPLEXITY_WEIGHTS: dict[str, float] = {"low": 0.34, "medium": 0.44, "high": 0.18, "critical": 0.03, "maintenance": 0.01}
# Deliverables per phase: mostly one file, sometimes many (1..10).
DELIVERABLE_WEIGHTS = np.array([0.52, 0.2, 0.1, 0.06, 0.04, 0.03, 0.02, 0.015, 0.01, 0.005])
# Autopack stored raw spellings before it normalised them (pitfall P7).
LEGACY_SPELLINGS = {"tests": "testing", "docs": "documentation", "implementation": "IMPLEMENT_FEATURE"}
DEFAULT_LEGACY_FRACTION = 0.02
ARCHETYPE_VARIANTS = 4


@dataclass(frozen=True)
class Archetypes:
    """Estimated phases, indexed ``[category, complexity, deliverables - 1, variant]``."""

    categories: tuple[str, ...]
    complexities: tuple[str, ...]
    predicted: np.ndarray  # int64
    selected: np.ndarray  # int64
    deliverables_json: np.ndarray  # object (str)
    medians: np.ndarray  # float64 [category, complexity]: simulated median output tokens
    profile: SimulationProfile
    coefficient_version: str


def _deliverable_paths(category: str, count: int, variant: int) -> list[str]:
    """``count`` file paths a phase of ``category`` would deliver; ``variant`` changes the mix."""
    stem = f"synth_app/{category}_{variant}"
    paths = []
    for i in range(count):
        slot = (i + variant) % 4
        if category == "tests":
            path = f"{stem}/tests/test_unit_{i}.py" if slot != 3 else f"{stem}/tests/conftest.py"
        elif category == "docs":
            path = f"docs/{category}_{variant}/guide_{i}.md"
        elif category == "configuration":
            path = f"{stem}/config/settings_{i}.yaml" if slot else f"{stem}/migrations/{i:04d}_schema.py"
        elif category == "frontend":
            path = f"{stem}/web/Widget{i}.tsx" if slot != 2 else f"{stem}/web/widget_{i}.test.ts"
        else:
            kinds = (f"{stem}/module_{i}.py", f"{stem}/module_{i}.py", f"{stem}/tests/test_module_{i}.py",
                     f"docs/{category}_{variant}/module_{i}.md")
            path = kinds[slot] if count > 1 else f"{stem}/module_{i}.py"
        paths.append(path)
    return paths


class ArchetypePricer:
    """The archetypes of one seeds directory, priced when first asked for.

    The generator asks for the archetypes each block of phases draws before it reads their prices,
    so a load's first chunk waits only for the few hundred it uses (about 660 of 1,400 for 5,000 phases)
    and the rest are priced while the load runs. A price does not depend on what was priced before
    (nothing is created in the workspace), so the arrays end up as :func:`load_archetypes` gives them.
    """

    def __init__(self, seeds_dir: Path) -> None:
        self.coefficients = load_coefficients(seeds_dir / "estimator_coefficients.yaml")
        profile = SimulationProfile.load(seeds_dir)
        # A workspace that does not exist: every deliverable is a new file, whatever the current
        # directory. Nothing is created in it while pricing, so each deliverable's cost is measured once
        # and remembered across the complexities that share its path (a fifth of the lookups).
        self.estimator = TokenEstimator(self.coefficients, workspace=seeds_dir / "__no_workspace__",
                                        remember_deliverables=True)
        categories, complexities = tuple(CATEGORY_WEIGHTS), tuple(COMPLEXITY_WEIGHTS)
        shape = (len(categories), len(complexities), len(DELIVERABLE_WEIGHTS), ARCHETYPE_VARIANTS)
        medians = np.array([[profile.median_for(category, complexity) for complexity in complexities]
                            for category in categories], dtype=np.float64)
        # The arrays are filled in place as archetypes are priced; read them after ensure().
        self.archetypes = Archetypes(categories, complexities, np.zeros(shape, dtype=np.int64),
                                     np.zeros(shape, dtype=np.int64), np.empty(shape, dtype=object), medians,
                                     profile, self.coefficients.version)
        self.priced = np.zeros(shape, dtype=bool)
        self._lock = threading.Lock()  # two loads in one process may share this pricer

    def ensure(self, index: tuple[np.ndarray, ...]) -> None:
        """Price the archetypes ``index`` names (arrays of category, complexity, deliverables - 1 and
        variant numbers) that are not priced yet."""
        flat = np.ravel_multi_index(index, self.priced.shape)
        with self._lock:
            missing = np.unique(flat[~self.priced.ravel()[flat]])
            for a, b, c, v in zip(*np.unravel_index(missing, self.priced.shape)):
                self._price(int(a), int(b), int(c), int(v))

    def ensure_all(self) -> Archetypes:
        self.ensure(tuple(axis.ravel() for axis in np.indices(self.priced.shape)))
        return self.archetypes

    def _price(self, a: int, b: int, c: int, v: int) -> None:
        arch = self.archetypes
        category, complexity = arch.categories[a], arch.complexities[b]
        deliverables = _deliverable_paths(category, c + 1, v)
        estimate = self.estimator.estimate(deliverables, category, complexity)
        arch.predicted[a, b, c, v] = estimate.estimated_tokens
        arch.selected[a, b, c, v] = select_budget(estimate, complexity, self.coefficients)
        # Short paths: the writer's 200-character clipping never applies.
        arch.deliverables_json[a, b, c, v] = json.dumps(deliverables[:MAX_STORED_DELIVERABLES])
        self.priced[a, b, c, v] = True


_PRICERS_LOCK = threading.Lock()


def archetype_pricer(seeds_dir: Path = PACKAGED_SEEDS_DIR) -> ArchetypePricer:
    """The pricer of ``seeds_dir``'s archetypes, one per process (what it priced stays priced). A thread
    asking while another builds it waits for that one instead of building a second."""
    with _PRICERS_LOCK:
        return _pricer(seeds_dir)


@lru_cache(maxsize=4)
def _pricer(seeds_dir: Path) -> ArchetypePricer:
    return ArchetypePricer(seeds_dir)


@lru_cache(maxsize=4)
def load_archetypes(seeds_dir: Path = PACKAGED_SEEDS_DIR) -> Archetypes:
    """Every archetype priced with the real estimator (``seeds/estimator_coefficients.yaml``)."""
    return archetype_pricer(seeds_dir).ensure_all()
