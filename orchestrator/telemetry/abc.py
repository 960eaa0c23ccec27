"""The tracing interfaces, in one place.

`Tracing` is what a process traces its ticks with: one `TickTrace` per attempt of a tick, fed
by the worker and the runner as the attempt goes (its stack, each step with its LLM attempts,
how it ended). There are two implementations, one module each: `otel.OtelTracing` (an
OpenTelemetry trace per tick, exported over OTLP/HTTP) and `noop.NoopTracing` (nothing at all,
when no endpoint is configured).

Times are float seconds since the epoch from the caller's Clock, never read here.
"""

from __future__ import annotations

from typing import Protocol

from agents.team import StepResult
from orchestrator.store.abc import Claimed


class TickTrace(Protocol):
    """The trace of one attempt of one tick."""

    @property
    def tick(self) -> Claimed:
        """The tick as this attempt runs it: carrying this attempt's trace (trace id, root
        span id) when it is traced, so its step commits record it on the tick's row."""

    @property
    def trace_id(self) -> str | None:
        """This attempt's trace id (hex), None when not traced."""

    def stack(self, name: str) -> None:
        """The tick's stack is named `name`."""

    def replayed(self, index: int, agent: str, now: float) -> None:
        """Step `index` was finished by an earlier attempt: replayed, no model called."""

    def step(self, index: int, result: StepResult, started_at: float, finished_at: float
             ) -> None:
        """Step `index` ran, from `started_at` to `finished_at`, with its LLM attempts."""

    def outcome(self, status: str, reason: str | None = None) -> None:
        """How the attempt ended: the tick's final status, or `timed_out`, `lease_lost`,
        `released` (handed back to the queue), `error`. The last one said counts."""

    def end(self, now: float) -> None:
        """The attempt is over (idempotent)."""


class Tracing(Protocol):
    @property
    def enabled(self) -> bool: ...

    def start(self, role: str, process_id: str) -> None:
        """The process starts as `role` (up, beat, worker, dashboard): its traces say so."""

    def tick(self, tick: Claimed, now: float) -> TickTrace:
        """Begin the trace of an attempt of `tick`, linked to the attempt before it when its
        row recorded one (`tick.trace`)."""

    def flush(self) -> None:
        """Export what is finished now (blocking; tests, shutdown)."""

    def close(self) -> None:
        """Export what is left and stop (blocking; idempotent)."""
