"""pyarrow's modules, imported when first used.

A load that maps the columnar copy's image reads no Parquet: ``metrics`` and ``calibrate`` on an up-to-date
copy then need no pyarrow at all, whose import (``pyarrow.compute`` builds a wrapper for each of its hundreds
of functions) was 80-100 ms of their start. The modules on that path name pyarrow through these instead.
"""

from __future__ import annotations

import importlib
from typing import Any


class DeferredModule:
    """A module imported on the first attribute read; each attribute is then kept on this object, so the
    next read of it costs what a module attribute does."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(importlib.import_module(self._name), attribute)
        setattr(self, attribute, value)
        return value

    def __repr__(self) -> str:
        return f"<deferred module {self._name}>"


pa = DeferredModule("pyarrow")
pc = DeferredModule("pyarrow.compute")
pq = DeferredModule("pyarrow.parquet")
