"""What a model's tokens cost: US dollars per million input and output tokens, per model.

Each attempt's cost is priced when it is made, so a trace shows what every call cost even when
prices change later. The defaults are the providers' list prices; a deployment can override or
add models with a mapping. A model with no price costs 0, and the table says so once in the
log rather than inventing a figure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger("tickwork.llm")


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float

    def __post_init__(self) -> None:
        if self.input_per_mtok < 0 or self.output_per_mtok < 0:
            raise ValueError("a price cannot be negative")


PriceLike = Price | Sequence[float]  # a Price, or (input, output) per million tokens

DEFAULT_PRICES: Mapping[str, Price] = {
    "llama-3.3-70b-versatile": Price(0.59, 0.79),
    "llama-3.1-8b-instant": Price(0.05, 0.08),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "simulated": Price(0.0, 0.0),
}


def _as_price(value: PriceLike) -> Price:
    if isinstance(value, Price):
        return value
    if isinstance(value, str) or len(value) != 2:
        raise ValueError(f"a price is (input, output) US dollars per million tokens, not {value!r}")
    return Price(float(value[0]), float(value[1]))


class PriceTable:
    """The defaults with `overrides` on top (a model's override replaces its default)."""

    def __init__(self, overrides: Mapping[str, PriceLike] | None = None) -> None:
        self._prices: dict[str, Price] = dict(DEFAULT_PRICES)
        for model, price in (overrides or {}).items():
            self._prices[model] = _as_price(price)
        self._warned: set[str] = set()

    def knows(self, model: str) -> bool:
        return model in self._prices

    def price(self, model: str) -> Price | None:
        return self._prices.get(model)

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """The cost in US dollars; 0 for a model without a price (logged once per model)."""
        price = self._prices.get(model)
        if price is None:
            if model not in self._warned:
                self._warned.add(model)
                log.warning("no price for model %r: its calls are recorded as costing 0", model)
            return 0.0
        return (input_tokens * price.input_per_mtok
                + output_tokens * price.output_per_mtok) / 1_000_000
