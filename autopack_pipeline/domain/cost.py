"""Cost in money and in output-rate-limit capacity, on plain arrays.

- **Money.** Every stored event is a billed attempt: its ``actual_output_tokens`` were billed whether
  the phase succeeded, truncated or was retried. Spend = sum of billed output tokens x the model's
  output price per million tokens. Events do not store input tokens, so the figures price output
  only: a lower bound on the bill, and the part a budget change moves.
- **Capacity.** Providers count ``max_tokens`` against output-tokens-per-minute limits when a request
  is admitted, so a budget *reserves* its whole size whatever the call produces. Reserved = sum of
  the budgets sent; produced = sum of actual output tokens.
- **A proposal** (prediction multiplier ``m``, budget margin ``b``) gives each call the budget
  ``min(cap, max(floor, floor(b * m * predicted)))``, the clamps of ``select_budget``. Its money: an
  untruncated call whose output exceeds its new budget truncates, is billed the budget, and is
  retried at full length (billed its output again); the other untruncated calls are billed as they
  were; a truncated call is billed as it was (its full length is unknown, so no saving is claimed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autopack_pipeline.domain.prices import TOKENS_PER_PRICE_UNIT, PriceTable

PER_CALLS = 1000  # money and capacity are shown per 1,000 calls
_US_PER_DAY = 86_400 * 1_000_000


def dollars(tokens: np.ndarray, price_per_million: np.ndarray | float) -> float:
    """Sum of ``tokens`` x ``price_per_million`` / 1e6 (prices per million tokens)."""
    return float(np.sum(np.asarray(tokens, dtype=float) * price_per_million) / TOKENS_PER_PRICE_UNIT)


def clamped_budgets(predicted: np.ndarray, multiplier: float, margin: float | np.ndarray, floor: float | np.ndarray,
                    cap: float) -> np.ndarray:
    """``min(cap, max(floor, floor(margin * multiplier * predicted)))`` per call."""
    raw = np.asarray(predicted, dtype=float) * multiplier * margin
    raw = np.floor(raw, out=raw) if isinstance(raw, np.ndarray) else np.floor(raw)
    if not isinstance(raw, np.ndarray) or raw.shape != np.broadcast_shapes(raw.shape, np.shape(floor)):
        return np.minimum(cap, np.maximum(floor, raw))  # scalars, or a floor per call over one prediction
    # In place: the same values, without two more arrays of the calls (a group holds millions at 10M events).
    np.maximum(floor, raw, out=raw)
    return np.minimum(cap, raw, out=raw)


@dataclass(frozen=True)
class CostFigures:
    """Money and capacity of one set of calls under one set of budgets."""

    calls: int
    billed_output_tokens: float
    dollars: float
    reserved_output_tokens: float
    produced_output_tokens: float
    truncated_calls: int

    def per_calls(self, value: float) -> float:
        return PER_CALLS * value / self.calls if self.calls else 0.0

    @property
    def utilisation(self) -> float | None:
        """Produced / reserved output tokens: the share of the reserved capacity actually used."""
        return self.produced_output_tokens / self.reserved_output_tokens if self.reserved_output_tokens else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "billed_output_tokens": self.billed_output_tokens,
            "dollars": self.dollars,
            "dollars_per_1000_calls": self.per_calls(self.dollars),
            "reserved_output_tokens": self.reserved_output_tokens,
            "reserved_output_tokens_per_1000_calls": self.per_calls(self.reserved_output_tokens),
            "produced_output_tokens": self.produced_output_tokens,
            "capacity_utilisation": self.utilisation,
            "truncated_calls": self.truncated_calls,
        }


def cost_now(actual: np.ndarray, budget_sent: np.ndarray, truncated: np.ndarray,
             output_price: np.ndarray | float) -> CostFigures:
    """Today's figures of the stored calls: every attempt billed, every budget sent reserved."""
    actual = np.asarray(actual, dtype=float)
    total = float(actual.sum())
    return CostFigures(
        calls=len(actual),
        billed_output_tokens=total,
        dollars=dollars(actual, output_price),
        reserved_output_tokens=float(np.sum(budget_sent)),
        produced_output_tokens=total,
        truncated_calls=int(np.sum(truncated)),
    )


def cost_with_budgets(actual: np.ndarray, new_budgets: np.ndarray, truncated: np.ndarray,
                      output_price: np.ndarray | float) -> CostFigures:
    """The same calls with ``new_budgets``: newly truncated calls billed their budget plus a full retry."""
    actual = np.asarray(actual, dtype=float)
    truncated = np.asarray(truncated, dtype=bool)
    new_budgets = np.asarray(new_budgets, dtype=float)
    cut = ~truncated & (actual > new_budgets)
    billed = actual.copy()  # the newly cut calls' budget added where they are: one array, not two
    billed[cut] += new_budgets[cut]
    total = float(billed.sum())
    return CostFigures(
        calls=len(actual),
        billed_output_tokens=total,
        dollars=dollars(billed, output_price),
        reserved_output_tokens=float(new_budgets.sum()),
        produced_output_tokens=total,
        truncated_calls=int(truncated.sum() + cut.sum()),
    )


def compare(now: CostFigures, proposed: CostFigures) -> dict[str, Any]:
    """Both figures and the change per 1,000 calls, as the reports show them."""
    return {
        "now": now.to_dict(),
        "proposed": proposed.to_dict(),
        "dollars_per_1000_calls_change": proposed.per_calls(proposed.dollars) - now.per_calls(now.dollars),
        "reserved_per_1000_calls_change": (proposed.per_calls(proposed.reserved_output_tokens)
                                           - now.per_calls(now.reserved_output_tokens)),
    }


def comparison_line(comparison: dict[str, Any]) -> str:
    """``$x -> $y per 1,000 calls; reserved a -> b output tokens per 1,000 calls (utilisation u -> v)``."""
    now, new = comparison["now"], comparison["proposed"]

    def use(block: dict[str, Any]) -> str:
        value = block["capacity_utilisation"]
        return "n/a" if value is None else f"{100 * value:.0f}%"

    return (f"${now['dollars_per_1000_calls']:.2f} -> ${new['dollars_per_1000_calls']:.2f} per 1,000 calls; "
            f"reserved {now['reserved_output_tokens_per_1000_calls'] / 1e6:.2f}M -> "
            f"{new['reserved_output_tokens_per_1000_calls'] / 1e6:.2f}M output tokens per 1,000 calls "
            f"(used {use(now)} -> {use(new)})")


@dataclass(frozen=True)
class Spend:
    """Billed output spend per model and per UTC day."""

    total_dollars: float
    billed_output_tokens: int
    per_model: list[dict[str, Any]]  # {model, priced_as, billed_output_tokens, dollars}, most expensive first
    per_day: dict[str, float]  # ISO date -> dollars, in date order
    prices: str

    def line(self) -> str:
        models = ", ".join(f"{m['model']} ${m['dollars']:.2f}" + (" (default price, assumed)" if m["priced_as"] is None
                                                                 else "") for m in self.per_model)
        days = len(self.per_day)
        return (f"Spend (output tokens only; input is not stored): ${self.total_dollars:.2f} for "
                f"{self.billed_output_tokens:,} billed output tokens over {days} day{'s' if days != 1 else ''}"
                f" ({models or 'no events'}; {self.prices})")

    def to_dict(self) -> dict[str, Any]:
        return {"total_dollars": self.total_dollars, "billed_output_tokens": self.billed_output_tokens,
                "per_model": self.per_model, "per_day": self.per_day, "prices": self.prices,
                "covers": "output tokens of every stored attempt; input tokens are not stored per event"}


def spend_by_model_and_day(model_codes: np.ndarray, model_labels: tuple[str, ...] | list[str],
                           timestamp_us: np.ndarray, output_tokens: np.ndarray, prices: PriceTable,
                           *, known: np.ndarray | None = None) -> Spend:
    """Spend of every event: ``output_tokens`` x its model's output price, summed per model and per UTC day.

    ``model_codes`` index ``model_labels`` (-1: no model, priced by ``default``); ``timestamp_us`` is
    microseconds since the epoch; ``known`` masks the events whose token count and time are known
    (default: all).
    """
    codes = np.asarray(model_codes, dtype=np.int64)
    tokens = np.asarray(output_tokens, dtype=float)
    if known is not None:
        tokens = np.where(known, tokens, 0.0)
    labels = list(model_labels)
    prices_by_code = np.r_[prices.output_prices(labels), prices.default.output]  # code -1 -> the last entry
    spend = tokens * prices_by_code[codes] / TOKENS_PER_PRICE_UNIT
    size = len(labels) + 1
    slot = np.where(codes >= 0, codes, len(labels))
    model_dollars = np.bincount(slot, weights=spend, minlength=size)
    model_tokens = np.bincount(slot, weights=tokens, minlength=size)
    present = np.bincount(slot, minlength=size) > 0
    names: list[str | None] = [*labels, None]
    per_model = [{"model": names[i], "priced_as": prices.entry_for(names[i]),
                  "billed_output_tokens": int(model_tokens[i]), "dollars": float(model_dollars[i])}
                 for i in np.flatnonzero(present)]
    per_model.sort(key=lambda m: (-m["dollars"], str(m["model"])))
    days = np.asarray(timestamp_us, dtype=np.int64) // _US_PER_DAY
    per_day: dict[str, float] = {}
    if len(days):
        first = int(days.min())
        day_dollars = np.bincount(days - first, weights=spend)
        for offset in np.flatnonzero(day_dollars > 0):
            day = np.datetime64(first + int(offset), "D")
            per_day[str(day)] = float(day_dollars[offset])
    return Spend(total_dollars=float(spend.sum()), billed_output_tokens=int(tokens.sum()), per_model=per_model,
                 per_day=per_day, prices=prices.describe())
