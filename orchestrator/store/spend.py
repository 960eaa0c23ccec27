"""What a step's LLM attempts cost: the amounts the journal adds to its tick and its stack."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agents.llm.base import Attempt


@dataclass(frozen=True, slots=True)
class Spend:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0

    @classmethod
    def of(cls, attempts: Iterable[Attempt]) -> Spend:
        tin = tout = calls = 0
        cost = 0.0
        for a in attempts:
            if a.status.startswith("skipped_"):
                continue  # never reached the provider
            calls += 1
            tin += a.input_tokens
            tout += a.output_tokens
            cost += a.cost_usd
        return cls(tin, tout, cost, calls)

    def __bool__(self) -> bool:
        return self.calls > 0
