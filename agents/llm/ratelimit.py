"""A provider's rate limit, known before the provider says no.

A `Limiter` learns a provider's budget from three sources: the configured requests and tokens
per minute, the `x-ratelimit-remaining-*`/`x-ratelimit-reset-*` headers of each response, and
the retry-after of each 429. When it knows the provider is exhausted, `RateLimitedLLM` skips the
call at once (an attempt of status `skipped_rate_limit`) so the fallback serves, instead of
collecting a 429 and waiting.

`Limiter` is the small interface; `RateLimiter` keeps the state in this process. Its operations
are async so a store shared between processes (Redis) can implement the same interface.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Protocol

from agents.llm.base import (
    LLMRequest,
    LLMResponse,
    ProviderError,
    ProviderLLM,
    RateLimited,
    SkippedRateLimit,
    WrapperLLM,
)
from agents.llm.sim import count_tokens
from schema.clock import Clock

WINDOW_S = 60.0  # the configured budgets are per minute
BLOCK_WITHOUT_RETRY_AFTER_S = 1.0  # a 429 that does not say how long: hold off this long
HEADER_VALID_S = 60.0  # a remaining count without a reset time is trusted this long
TYPICAL_COMPLETION_TOKENS = 256  # until answers have been seen
# A retry that waited exactly its retry-after (or a reset) may wake a hair early on a real
# clock; it should still find the provider free.
SLACK_S = 0.01

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str | None) -> float | None:
    """Seconds from a reset header: "2m59.56s", "7.66s", "120ms", "1h2m3s" or plain seconds
    ("12", "0.5"); None when it cannot be read."""
    if text is None:
        return None
    value = text.strip().lower()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 else None
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT_S[u] for n, u in parts)


def retry_after_s(headers: Mapping[str, str], now: float) -> float | None:
    """How long a response asks to wait: `retry-after-ms`, else `retry-after` in seconds or as
    an HTTP date (compared with `now`, seconds since the epoch); None when it does not say."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


@dataclass(slots=True)
class Reservation:
    """A granted request: when, and how many tokens it holds in the minute's budget."""

    at: float
    tokens: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """The provider is known to be exhausted: why, and how long until it frees."""

    reason: str
    wait_s: float


@dataclass(frozen=True, slots=True)
class Headroom:
    """What is left, for health views. None means unknown (or not limited)."""

    requests_left: int | None
    tokens_left: int | None
    requests_reset_s: float | None
    tokens_reset_s: float | None
    blocked_for_s: float | None  # a 429 asked to hold off this much longer
    rpm: int | None
    tpm: int | None


class Limiter(Protocol):
    async def acquire(self, tokens: int) -> Reservation | Refusal:
        """Reserve one request and `tokens` tokens, or say why not."""

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Replace a reservation's estimate with the tokens the call really used."""

    async def observe_headers(self, headers: Mapping[str, str]) -> None:
        """Learn the provider's own count from a response's x-ratelimit-* headers."""

    async def rate_limited(self, retry_after_s: float | None) -> None:
        """The provider said 429: hold every call off until retry-after."""

    def headroom(self) -> Headroom:
        """The last known state, for health views."""


@dataclass(slots=True)
class _Known:
    """A count the provider reported, valid until its reset."""

    remaining: int
    until: float


class RateLimiter:
    """In-process limiter: a sliding minute for the configured budget, plus what the provider
    last reported (headers, 429s).

    The provider's reported count is trusted until its reset and decremented by each request
    granted since; calls still in flight when a response arrives are not subtracted again, so
    under heavy concurrency a few requests may still meet a 429 (handled as one).
    """

    def __init__(self, rpm: int | None, tpm: int | None, clock: Clock) -> None:
        if rpm is not None and rpm < 1:
            raise ValueError("rpm must be at least 1 (or None for no configured limit)")
        if tpm is not None and tpm < 1:
            raise ValueError("tpm must be at least 1 (or None for no configured limit)")
        self.rpm, self.tpm, self._clock = rpm, tpm, clock
        self._window: deque[Reservation] = deque()
        self._requests: _Known | None = None
        self._tokens: _Known | None = None
        self._blocked_until: float | None = None
        self.limit_requests: int | None = None  # as the provider's headers state them
        self.limit_tokens: int | None = None

    def _prune(self, now: float) -> None:
        while self._window and self._window[0].at <= now - WINDOW_S:
            self._window.popleft()
        if self._requests is not None and now >= self._requests.until - SLACK_S:
            self._requests = None
        if self._tokens is not None and now >= self._tokens.until - SLACK_S:
            self._tokens = None
        if self._blocked_until is not None and now >= self._blocked_until - SLACK_S:
            self._blocked_until = None

    def _window_tokens(self) -> int:
        return sum(r.tokens for r in self._window)

    def _tokens_free_in(self, needed: int, now: float) -> float:
        """How long until the sliding minute has room for `needed` more tokens."""
        assert self.tpm is not None
        used = self._window_tokens()
        for r in self._window:
            used -= r.tokens
            if used + needed <= self.tpm:
                return max(0.0, r.at + WINDOW_S - now)
        return max(0.0, self._window[-1].at + WINDOW_S - now) if self._window else 0.0

    def _refusal(self, tokens: int, now: float) -> Refusal | None:
        if self._blocked_until is not None:
            return Refusal("the provider answered 429; holding off until its retry-after",
                           self._blocked_until - now)
        if self.rpm is not None and len(self._window) >= self.rpm:
            return Refusal(f"{self.rpm} requests per minute used",
                           self._window[0].at + WINDOW_S - now)
        if (self.tpm is not None and self._window
                and self._window_tokens() + tokens > self.tpm):
            return Refusal(f"{self.tpm} tokens per minute used (this call needs about {tokens})",
                           self._tokens_free_in(tokens, now))
        if self._requests is not None and self._requests.remaining <= 0:
            return Refusal("the provider reports no requests left",
                           self._requests.until - now)
        if self._tokens is not None and self._tokens.remaining < tokens:
            return Refusal(f"the provider reports {max(0, self._tokens.remaining)} tokens left "
                           f"(this call needs about {tokens})", self._tokens.until - now)
        return None

    async def acquire(self, tokens: int) -> Reservation | Refusal:
        now = self._clock.monotonic()
        self._prune(now)
        refusal = self._refusal(tokens, now)
        if refusal is not None:
            return refusal
        reservation = Reservation(now, tokens)
        self._window.append(reservation)
        if self._requests is not None:
            self._requests.remaining -= 1
        if self._tokens is not None:
            self._tokens.remaining -= tokens
        return reservation

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        reservation.tokens = max(0, used_tokens)

    async def observe_headers(self, headers: Mapping[str, str]) -> None:
        now = self._clock.monotonic()
        self.limit_requests = _int(headers.get("x-ratelimit-limit-requests")) or \
            self.limit_requests
        self.limit_tokens = _int(headers.get("x-ratelimit-limit-tokens")) or self.limit_tokens
        for kind in ("requests", "tokens"):
            remaining = _int(headers.get(f"x-ratelimit-remaining-{kind}"))
            if remaining is None:
                continue
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            known = _Known(remaining, now + (HEADER_VALID_S if reset is None else reset))
            if kind == "requests":
                self._requests = known
            else:
                self._tokens = known

    async def rate_limited(self, retry_after_s: float | None) -> None:
        """Hold calls off until the 429's retry-after. A retry-after is the provider's word on
        when the next request may go, so it also bounds how long the same response's headers
        (remaining 0 until the whole window resets) may keep calls off."""
        now = self._clock.monotonic()
        hold = BLOCK_WITHOUT_RETRY_AFTER_S if retry_after_s is None else max(0.0, retry_after_s)
        if retry_after_s is not None:
            for known in (self._requests, self._tokens):
                if known is not None:
                    known.until = min(known.until, now + hold)
        if hold > 0:
            self._blocked_until = max(self._blocked_until or 0.0, now + hold)

    def headroom(self) -> Headroom:
        now = self._clock.monotonic()
        self._prune(now)
        requests_left: list[int] = []
        tokens_left: list[int] = []
        requests_reset: list[float] = []
        tokens_reset: list[float] = []
        if self.rpm is not None:
            requests_left.append(self.rpm - len(self._window))
            if self._window:
                requests_reset.append(self._window[0].at + WINDOW_S - now)
        if self.tpm is not None:
            tokens_left.append(self.tpm - self._window_tokens())
            if self._window:
                tokens_reset.append(self._window[0].at + WINDOW_S - now)
        if self._requests is not None:
            requests_left.append(self._requests.remaining)
            requests_reset.append(self._requests.until - now)
        if self._tokens is not None:
            tokens_left.append(self._tokens.remaining)
            tokens_reset.append(self._tokens.until - now)
        return Headroom(
            requests_left=max(0, min(requests_left)) if requests_left else None,
            tokens_left=max(0, min(tokens_left)) if tokens_left else None,
            requests_reset_s=max(requests_reset) if requests_reset else None,
            tokens_reset_s=max(tokens_reset) if tokens_reset else None,
            blocked_for_s=(self._blocked_until - now) if self._blocked_until else None,
            rpm=self.rpm, tpm=self.tpm)


def estimate_tokens(request: LLMRequest, completion_tokens: int) -> int:
    """A call's tokens before it is made: the prompt plus a typical answer (at most
    max_tokens), so one long prompt cannot slip past the minute's token budget."""
    prompt = sum(count_tokens(m.get("content", "")) for m in request.messages)
    return prompt + min(request.max_tokens, completion_tokens)


class RateLimitedLLM(WrapperLLM):
    """Asks the limiter before each request; skips at once when the provider is exhausted,
    tells the limiter about 429s, and settles each reservation with the tokens really used."""

    def __init__(self, inner: ProviderLLM, limiter: Limiter, clock: Clock) -> None:
        super().__init__(inner)
        self.limiter = limiter
        self._clock = clock
        self._completion_tokens = float(TYPICAL_COMPLETION_TOKENS)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        estimate = estimate_tokens(request, round(self._completion_tokens))
        grant = await self.limiter.acquire(estimate)
        if isinstance(grant, Refusal):
            wait = max(0.0, grant.wait_s)
            message = f"{self.provider} rate limit: {grant.reason}; frees in {wait:.1f} s"
            raise SkippedRateLimit(message, attempt=self.attempt(
                "skipped_rate_limit", self._clock.now(), error=message, retry_after_s=wait))
        try:
            response = await self.inner.complete(request)
        except RateLimited as exc:
            await self.limiter.rate_limited(exc.retry_after_s)
            raise
        except ProviderError:
            await self.limiter.settle(grant, 0)  # refused or failed: no tokens spent
            raise
        if response.attempts:
            last = response.attempts[-1]
            await self.limiter.settle(grant, last.input_tokens + last.output_tokens)
            self._completion_tokens += 0.2 * (last.output_tokens - self._completion_tokens)
        return response
