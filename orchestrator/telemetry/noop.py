"""Tracing off: every call does nothing, and a tick pays one small object for it."""

from __future__ import annotations

from agents.team import StepResult
from orchestrator.store.abc import Claimed


class NoopTickTrace:
    __slots__ = ("tick",)

    def __init__(self, tick: Claimed) -> None:
        self.tick = tick

    @property
    def trace_id(self) -> str | None:
        return None

    def stack(self, name: str) -> None:
        return None

    def replayed(self, index: int, agent: str, now: float) -> None:
        return None

    def step(self, index: int, result: StepResult, started_at: float, finished_at: float
             ) -> None:
        return None

    def outcome(self, status: str, reason: str | None = None) -> None:
        return None

    def end(self, now: float) -> None:
        return None


class NoopTracing:
    enabled = False

    def start(self, role: str, process_id: str) -> None:
        return None

    def tick(self, tick: Claimed, now: float) -> NoopTickTrace:
        return NoopTickTrace(tick)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None
