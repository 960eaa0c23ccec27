"""Retries for one provider: a timeout per attempt, exponential backoff with full jitter, and
respect for the provider's retry-after, within a bounded number of attempts.

Full jitter (sleep a uniform draw in [0, min(cap, base * 2**n)]) spreads the retries of many
concurrent ticks instead of sending them back in waves. A retry-after is a floor on the wait,
but a provider that asks for longer than `max_wait_s` is given up on at once: the fallback can
serve now, which beats stalling a tick. All waiting happens on the injected Clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from agents.llm.base import (
    Attempt,
    LLMRequest,
    LLMResponse,
    ProviderError,
    ProviderLLM,
    Timeout,
    WrapperLLM,
)
from schema.clock import Clock, within


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    attempt_timeout_s: float = 30.0
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 8.0
    max_wait_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.attempt_timeout_s <= 0:
            raise ValueError("attempt_timeout_s must be positive")
        if min(self.backoff_base_s, self.backoff_cap_s, self.max_wait_s) < 0:
            raise ValueError("backoff and wait times cannot be negative")

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """The wait before retry number `retry` (0 for the first retry): full jitter."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2.0 ** retry)
        return rng.uniform(0.0, ceiling)


class RetryingLLM(WrapperLLM):
    """Calls its provider up to `policy.max_attempts` times. Every attempt, failed ones too,
    is in the response's attempts or, when it gives up, in the raised error's attempts."""

    def __init__(self, inner: ProviderLLM, policy: RetryPolicy, clock: Clock,
                 rng: random.Random | None = None) -> None:
        super().__init__(inner)
        self.policy = policy
        self._clock = clock
        self._rng = rng or random.Random()

    async def _attempt(self, request: LLMRequest) -> LLMResponse:
        started = self._clock.monotonic()
        started_at = self._clock.now()
        timeout = self.policy.attempt_timeout_s
        try:
            return await within(self._clock, timeout, self.inner.complete(request))
        except TimeoutError:
            message = f"{self.provider} gave no answer within {timeout:g} s"
            latency_ms = (self._clock.monotonic() - started) * 1000
            raise Timeout(message, attempt=self.attempt(
                "timeout", started_at, latency_ms=latency_ms, error=message)) from None
        except ProviderError as exc:
            if not exc.attempts:  # the inner model recorded nothing: record it here
                latency_ms = (self._clock.monotonic() - started) * 1000
                exc.attempts = [self.attempt(exc.status, started_at, latency_ms=latency_ms,
                                             error=str(exc), retry_after_s=exc.retry_after_s)]
            raise

    async def complete(self, request: LLMRequest) -> LLMResponse:
        attempts: list[Attempt] = []
        policy = self.policy
        for n in range(policy.max_attempts):
            try:
                response = await self._attempt(request)
            except ProviderError as exc:
                attempts += exc.attempts
                exc.attempts = attempts
                if not exc.retryable or n + 1 >= policy.max_attempts:
                    raise
                wait = min(policy.backoff_s(n, self._rng), policy.max_wait_s)
                if exc.retry_after_s is not None:
                    if exc.retry_after_s > policy.max_wait_s:
                        raise  # waiting that long would stall the tick: let the fallback serve
                    wait = max(wait, exc.retry_after_s)
                await self._clock.sleep(wait)
                continue
            response.attempts = attempts + response.attempts
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")
