"""The per-model price table (``seeds/model_prices.yaml``): dollars per million input and output tokens.

Loaded and validated like the coefficient file: an unknown key, a missing price, a negative or
non-numeric one is a ``ValueError`` naming the file and the key. A model name is priced by its own
entry, or by the longest entry it extends with ``-<suffix>`` (dated snapshots), else by ``default``,
an assumed price the figures label as such.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PRICES_FILE_NAME = "model_prices.yaml"
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are per million tokens

Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelPrice(_Strict):
    """Dollars per million tokens."""

    input: Price
    output: Price


class PriceTable(_Strict):
    """One validated version of the price table. Build it with :func:`load_price_table`."""

    version: str = Field(min_length=1)
    as_of: str = Field(min_length=1)
    source: str = Field(min_length=1)
    models: dict[str, ModelPrice]
    default: ModelPrice

    @field_validator("as_of", mode="before")
    @classmethod
    def _date_as_text(cls, value: Any) -> Any:
        return value.isoformat() if isinstance(value, _dt.date) else value

    @field_validator("models")
    @classmethod
    def _names(cls, models: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        bad = [name for name in models if not name or name != name.strip() or name == "default"]
        if bad:
            raise ValueError(f"model names must be non-empty, without surrounding spaces, not 'default': {bad}")
        return models

    @classmethod
    def from_mapping(cls, data: Any, origin: str = "<mapping>") -> PriceTable:
        """Validate a parsed mapping; errors become one ``ValueError`` naming ``origin`` and the key."""
        if not isinstance(data, dict):
            raise ValueError(f"{origin}: price table must be a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = [f"key {'.'.join(str(p) for p in err['loc']) or '<top level>'!r}: {err['msg']}"
                        for err in exc.errors()]
            raise ValueError(f"{origin}: invalid price table: " + "; ".join(problems)) from None

    def entry_for(self, model: str | None) -> str | None:
        """The entry that prices ``model``: its own name, the longest entry it extends, or None (default)."""
        if not model:
            return None
        if model in self.models:
            return model
        prefixes = [name for name in self.models if model.startswith(name + "-")]
        return max(prefixes, key=len) if prefixes else None

    def price_of(self, model: str | None) -> ModelPrice:
        entry = self.entry_for(model)
        return self.default if entry is None else self.models[entry]

    def output_prices(self, labels: tuple[str, ...] | list[str]) -> np.ndarray:
        """Output dollars per million tokens of each label, as an array indexed like ``labels``."""
        return np.array([self.price_of(label).output for label in labels], dtype=float)

    def describe(self) -> str:
        return f"prices {self.version} (as of {self.as_of})"


def load_price_table(path: Path) -> PriceTable:
    """Read and validate a price table; ``FileNotFoundError`` or ``ValueError`` naming the file."""
    from autopack_pipeline.domain.coefficients import read_yaml_file

    return PriceTable.from_mapping(read_yaml_file(Path(path), "price table"), origin=str(path))
