"""The canonical complexity of every spelling: canonical names as they are, aliases, suffixes, case and
padding, and unknown values as None."""

import pytest

from autopack_pipeline.domain.categories import COMPLEXITIES, canonical_complexity, normalise_complexity


@pytest.mark.parametrize(("spelling", "canonical"), [
    *((name, name) for name in COMPLEXITIES),
    *((f" {name.upper()} ", name) for name in COMPLEXITIES),
    *((f"{name}_complexity", name) for name in COMPLEXITIES),
    ("Medium-Level", "medium"), ("high_tier", "high"), ("med", "medium"), ("MED_task", "medium"),
    ("maint", "maintenance"), ("maintain", "maintenance"), ("maintenance_mode", "maintenance"),
    ("maintenance-mode", "maintenance"), ("maint_mode", "maintenance"),
    ("extreme", None), ("", None), ("medium complexity", None), ("low_low_tier", None), (None, None),
])
def test_each_spelling_has_its_canonical_complexity(spelling, canonical):
    assert canonical_complexity(spelling) == canonical
    assert normalise_complexity(spelling) == (canonical or "medium")
