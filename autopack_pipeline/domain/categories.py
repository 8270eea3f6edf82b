"""The one canonical vocabulary for phase categories and complexities.

Autopack used three spellings for the same thing (``tests``/``testing``, ``docs``/``documentation``,
``IMPLEMENT_FEATURE``/``implementation``) and normalised them in some places but not others, so a
calibrated coefficient could sit under a key the data never hit (its pitfall P7). Every estimate,
every recorded event and every grouping goes through the functions below.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

_CATEGORY_ALIASES = {
    "testing": "tests",
    "test": "tests",
    "documentation": "docs",
    "doc": "docs",
    "doc_write": "docs",
    "implement_feature": "implementation",
}

COMPLEXITIES = ("low", "medium", "high", "critical", "maintenance")
_CANONICAL_COMPLEXITIES = frozenset(COMPLEXITIES)
_COMPLEXITY_SUFFIXES = ("_complexity", "-complexity", "_level", "-level", "_mode", "-mode", "_task", "_tier")
_COMPLEXITY_ALIASES = {
    "med": "medium",
    "maint": "maintenance",
    "maintain": "maintenance",
    "maintenance_mode": "maintenance",
}


def normalise_category(category: str | None) -> str:
    """Map any spelling of a category to its canonical name (``"unknown"`` when missing)."""
    if category is None:
        return "unknown"
    key = str(category).strip().lower().replace("-", "_").replace(" ", "_")
    if not key:
        return "unknown"
    return _CATEGORY_ALIASES.get(key, key)


def canonical_complexity(complexity: str | None) -> str | None:
    """Return the canonical complexity, or ``None`` when the value is not a known complexity."""
    if complexity is None:
        return None
    key = str(complexity).strip().lower()
    if key in _COMPLEXITY_ALIASES:
        return _COMPLEXITY_ALIASES[key]
    if key in _CANONICAL_COMPLEXITIES:  # already canonical (none ends with a suffix): the usual case, asked
        return key                     # four times per estimate, 1,377 re-runs at a million events
    for suffix in _COMPLEXITY_SUFFIXES:
        if key.endswith(suffix):
            key = key[: -len(suffix)]
            break
    key = _COMPLEXITY_ALIASES.get(key, key)
    return key if key in COMPLEXITIES else None


def normalise_complexity(complexity: str | None) -> str:
    """Canonical complexity; unknown values become ``"medium"`` (as Autopack records them) with a warning."""
    canonical = canonical_complexity(complexity)
    if canonical is None:
        if complexity is not None:
            logger.warning("[DATA_INTEGRITY] unknown complexity %r recorded as 'medium'", complexity)
        return "medium"
    return canonical


def deliverable_bucket(count: int | None) -> str:
    """Stratum of a deliverable count: ``"1"`` (0 or 1), ``"2-5"`` or ``"6+"``."""
    n = int(count or 0)
    if n <= 1:
        return "1"
    if n <= 5:
        return "2-5"
    return "6+"
