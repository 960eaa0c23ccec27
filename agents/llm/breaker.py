"""A circuit breaker per provider: stop calling a provider that keeps failing.

Closed, calls pass. After `threshold` consecutive failed calls the breaker opens: every call is
skipped at once (an attempt of status `skipped_open_breaker`, latency 0), so a step goes
straight to the fallback instead of spending its time on a provider that is down. After
`cooldown_s` it is half-open: one call (the probe) is let through while every other caller keeps
skipping; the probe's success closes the breaker, its failure opens it for another cool-down.

A failure is a provider failure worth counting: one that asking again could fix (rate limits,
5xx, timeouts, lost connections) and a refused key (every call fails until someone acts). A bad
request, an invalid answer or a skipped call is the request's business, not the provider's
health, and neither counts nor resets the count.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Literal, Protocol

from agents.llm.base import (
    AuthError,
    LLMRequest,
    LLMResponse,
    ProviderError,
    ProviderLLM,
    Skipped,
    SkippedOpenBreaker,
    WrapperLLM,
)
from schema.clock import Clock

BreakerStateName = Literal["closed", "open", "half_open"]


class Permit(enum.Enum):
    """How a call was let through: as an ordinary call, or as the half-open probe."""

    CALL = "call"
    PROBE = "probe"


@dataclass(frozen=True, slots=True)
class BreakerState:
    """A snapshot for health views."""

    state: BreakerStateName
    failures: int  # consecutive failed calls
    opened_at: float | None  # seconds since the epoch when it last opened
    probe_in_s: float | None  # while open: how long until a probe is let through
    probing: bool  # half-open with the probe in flight


class Breaker(Protocol):
    """A provider's breaker: this process's (`CircuitBreaker`) or the fleet's
    (`shared.RedisBreaker`)."""

    threshold: int
    cooldown_s: float

    async def allow(self) -> Permit | None: ...

    async def succeeded(self, permit: Permit) -> None: ...

    async def failed(self, permit: Permit) -> None: ...

    async def released(self, permit: Permit) -> None: ...

    async def refresh(self) -> BreakerState:
        """The current state, read from wherever it is kept."""

    def snapshot(self) -> BreakerState:
        """The state as last known, without asking anyone."""


def counts_as_failure(error: ProviderError) -> bool:
    if isinstance(error, Skipped):
        return False
    return error.retryable or isinstance(error, AuthError)


class CircuitBreaker:
    def __init__(self, threshold: int, cooldown_s: float, clock: Clock) -> None:
        if threshold < 1:
            raise ValueError("the breaker threshold must be at least 1")
        if cooldown_s < 0:
            raise ValueError("the breaker cool-down cannot be negative")
        self.threshold, self.cooldown_s, self._clock = threshold, cooldown_s, clock
        self._open = False
        self._opened_mono = 0.0
        self._opened_at: float | None = None
        self._failures = 0
        self._probing = False

    @property
    def state(self) -> BreakerStateName:
        if not self._open:
            return "closed"
        if self._clock.monotonic() - self._opened_mono >= self.cooldown_s:
            return "half_open"
        return "open"

    def snapshot(self) -> BreakerState:
        state = self.state
        probe_in = (self._opened_mono + self.cooldown_s - self._clock.monotonic()
                    if state == "open" else None)
        return BreakerState(state, self._failures, self._opened_at, probe_in,
                            state == "half_open" and self._probing)

    async def refresh(self) -> BreakerState:
        return self.snapshot()

    async def allow(self) -> Permit | None:
        """Let a call through (closed; or half-open and nobody probing), or None to skip."""
        state = self.state
        if state == "closed":
            return Permit.CALL
        if state == "open" or self._probing:
            return None
        self._probing = True
        return Permit.PROBE

    async def succeeded(self, permit: Permit) -> None:
        if permit is Permit.PROBE:
            self._open, self._probing, self._failures = False, False, 0
        elif not self._open:
            self._failures = 0
        # A call let through before the breaker opened proves little about now: only the
        # probe closes an open breaker.

    async def failed(self, permit: Permit) -> None:
        if permit is Permit.PROBE:
            self._probing = False
            self._failures += 1
            self._trip()
        elif not self._open:
            self._failures += 1
            if self._failures >= self.threshold:
                self._trip()

    async def released(self, permit: Permit) -> None:
        """The call ended without a verdict (bad request, skipped, cancelled)."""
        if permit is Permit.PROBE:
            self._probing = False

    def _trip(self) -> None:
        self._open = True
        self._opened_mono = self._clock.monotonic()
        self._opened_at = self._clock.now()


class BreakerLLM(WrapperLLM):
    """Skips the provider while its breaker is open; reports each call's outcome to it."""

    def __init__(self, inner: ProviderLLM, breaker: Breaker, clock: Clock) -> None:
        super().__init__(inner)
        self.breaker = breaker
        self._clock = clock

    async def complete(self, request: LLMRequest) -> LLMResponse:
        permit = await self.breaker.allow()
        if permit is None:
            snap = await self.breaker.refresh()
            when = (f"next probe in {snap.probe_in_s:.1f} s" if snap.probe_in_s is not None
                    else "a probe is in flight")
            message = (f"{self.provider} circuit open after {snap.failures} consecutive "
                       f"failures; {when}")
            raise SkippedOpenBreaker(message, attempt=self.attempt(
                "skipped_open_breaker", self._clock.now(), error=message))
        try:
            response = await self.inner.complete(request)
        except ProviderError as exc:
            if counts_as_failure(exc):
                await self.breaker.failed(permit)
            else:
                await self.breaker.released(permit)
            raise
        except BaseException:
            await asyncio.shield(self.breaker.released(permit))
            raise
        await self.breaker.succeeded(permit)
        return response
