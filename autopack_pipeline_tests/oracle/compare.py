"""Product-versus-oracle comparison: the same structure, the same values, floats to a relative 1e-9.

The product sums with numpy (pairwise) where the oracle uses ``math.fsum`` and ``statistics``, so the
last bits of a mean or a standard deviation may differ; everything else must be equal.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
from pydantic import BaseModel

REL = 1e-9


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return value


def assert_close(got: Any, expected: Any, path: str = "") -> None:
    """Assert ``got`` equals ``expected`` (documents, models, dataclasses), floats within :data:`REL`."""
    got, expected = _plain(got), _plain(expected)
    if isinstance(expected, dict):
        assert isinstance(got, dict) and list(got) == list(expected), f"{path}: keys {list(got)} != {list(expected)}"
        for key in expected:
            assert_close(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected), f"{path}: {got!r} != {expected!r}"
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_close(a, b, f"{path}[{i}]")
    elif isinstance(expected, float) and not isinstance(got, bool) and math.isfinite(expected):
        assert isinstance(got, (int, float)) and got == pytest.approx(expected, rel=REL, abs=1e-12), \
            f"{path}: {got!r} != {expected!r}"
    else:
        assert got == expected, f"{path}: {got!r} != {expected!r}"
