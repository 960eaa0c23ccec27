"""The rate limiter, on the fake clock: the configured per-minute budget, the provider's
x-ratelimit-* headers and its 429s each stop calls before they collect a 429, with an attempt
of status skipped_rate_limit, and free them again when the budget resets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from agents.llm.base import RateLimited, SkippedRateLimit
from agents.llm.ratelimit import (
    RateLimitedLLM,
    RateLimiter,
    Refusal,
    Reservation,
    estimate_tokens,
    parse_duration,
    retry_after_s,
)
from tests.llm_fakes import ScriptedModel, SteppingClock, request, statuses


def limited(script: list[str] | None = None, rpm: int | None = None, tpm: int | None = None,
            input_tokens: int = 40, output_tokens: int = 10
            ) -> tuple[RateLimitedLLM, ScriptedModel, SteppingClock]:
    clock = SteppingClock()
    inner = ScriptedModel(clock, script, input_tokens=input_tokens, output_tokens=output_tokens)
    return RateLimitedLLM(inner, RateLimiter(rpm, tpm, clock), clock), inner, clock




@pytest.mark.parametrize(("text", "seconds"), [
    ("2m59.56s", 179.56), ("7.66s", 7.66), ("120ms", 0.12), ("1h2m3s", 3723.0),
    ("12", 12.0), ("0.5", 0.5), ("0s", 0.0), (" 3S ", 3.0),
])
def test_reset_durations_are_read_as_the_providers_write_them(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "-3", "2x", None])
def test_unreadable_durations_are_unknown(text: str | None) -> None:
    assert parse_duration(text) is None


def test_retry_after_prefers_milliseconds_and_reads_dates() -> None:
    now = 1_800_000_000.0
    assert retry_after_s({"retry-after-ms": "1500", "retry-after": "2"}, now) == 1.5
    assert retry_after_s({"retry-after": "7"}, now) == 7.0
    date = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert retry_after_s({"retry-after": date}, now) == pytest.approx(30)
    assert retry_after_s({}, now) is None
    assert retry_after_s({"retry-after": "whenever"}, now) is None


def test_the_configured_rpm_stops_the_31st_request_in_a_minute_and_frees_after() -> None:
    llm, inner, clock = limited(rpm=30)
    assert asyncio.run(statuses(llm, 30)) == ["ok"] * 30
    clock.advance(20)
    with pytest.raises(SkippedRateLimit) as caught:
        asyncio.run(llm.complete(request()))
    assert inner.calls == 30  # the provider was not asked
    (attempt,) = caught.value.attempts
    assert (attempt.provider, attempt.status, attempt.latency_ms) == (
        "groq", "skipped_rate_limit", 0.0)
    assert attempt.retry_after_s == pytest.approx(40)  # the minute's oldest request leaves then
    assert "30 requests per minute" in (attempt.error or "")
    assert llm.limiter.headroom().requests_left == 0

    clock.advance(39.9)
    assert asyncio.run(statuses(llm, 1)) == ["skipped_rate_limit"]
    clock.advance(0.1)
    assert asyncio.run(statuses(llm, 31)) == ["ok"] * 30 + ["skipped_rate_limit"]


def test_the_token_budget_counts_what_calls_really_used() -> None:
    llm, _, clock = limited(tpm=1000, input_tokens=400, output_tokens=100)
    # Each call reserves its estimate (about 100 tokens), then settles at the 500 it used.
    assert asyncio.run(statuses(llm, 3)) == ["ok", "ok", "skipped_rate_limit"]
    assert llm.limiter.headroom().tokens_left == 0
    clock.advance(60)
    assert asyncio.run(statuses(llm, 1)) == ["ok"]


def test_a_request_is_estimated_as_its_prompt_plus_a_typical_answer() -> None:
    req = request("x" * 400, max_tokens=100)
    assert estimate_tokens(req, 256) == 100 + 100  # at most max_tokens for the answer
    assert estimate_tokens(req, 30) == 100 + 30


def test_headers_say_when_the_provider_has_no_requests_left() -> None:
    async def scenario() -> None:
        clock = SteppingClock()
        limiter = RateLimiter(None, None, clock)
        await limiter.observe_headers({"x-ratelimit-remaining-requests": "2",
                                       "x-ratelimit-reset-requests": "2m59.56s",
                                       "x-ratelimit-limit-requests": "1000"})
        assert isinstance(await limiter.acquire(10), Reservation)
        assert isinstance(await limiter.acquire(10), Reservation)
        refusal = await limiter.acquire(10)
        assert isinstance(refusal, Refusal)
        assert refusal.wait_s == pytest.approx(179.56)
        room = limiter.headroom()
        assert (room.requests_left, room.requests_reset_s) == (0, pytest.approx(179.56))
        clock.advance(179.6)
        assert isinstance(await limiter.acquire(10), Reservation)

    asyncio.run(scenario())


def test_headers_say_when_too_few_tokens_are_left() -> None:
    async def scenario() -> None:
        clock = SteppingClock()
        limiter = RateLimiter(None, None, clock)
        await limiter.observe_headers({"x-ratelimit-remaining-tokens": "150",
                                       "x-ratelimit-reset-tokens": "7.66s"})
        assert isinstance(await limiter.acquire(100), Reservation)
        refusal = await limiter.acquire(100)  # 50 left
        assert isinstance(refusal, Refusal)
        assert "50 tokens left" in refusal.reason
        assert refusal.wait_s == pytest.approx(7.66)
        clock.advance(7.7)
        assert isinstance(await limiter.acquire(100), Reservation)

    asyncio.run(scenario())


def test_a_429_holds_calls_off_until_its_retry_after() -> None:
    llm, inner, clock = limited(["429:5"])
    with pytest.raises(RateLimited):
        asyncio.run(llm.complete(request()))
    assert asyncio.run(statuses(llm, 2)) == ["skipped_rate_limit"] * 2
    assert inner.calls == 1
    assert llm.limiter.headroom().blocked_for_s == pytest.approx(5)
    clock.advance(4.9)
    assert asyncio.run(statuses(llm, 1)) == ["skipped_rate_limit"]
    clock.advance(0.1)
    assert asyncio.run(statuses(llm, 1)) == ["ok"]
    assert llm.limiter.headroom().blocked_for_s is None


def test_a_429s_retry_after_outranks_its_headers_saying_nothing_is_left() -> None:
    async def scenario() -> None:
        clock = SteppingClock()
        limiter = RateLimiter(None, None, clock)
        # A 429 over the requests per minute: nothing left until the window empties (60 s),
        # but one request may go again in 2 s, and the retry that waits for it must pass.
        await limiter.observe_headers({"x-ratelimit-remaining-requests": "0",
                                       "x-ratelimit-reset-requests": "1m",
                                       "retry-after": "2"})
        await limiter.rate_limited(2.0)
        assert isinstance(await limiter.acquire(10), Refusal)
        clock.advance(1.995)  # a real clock's sleep may end a hair early
        assert isinstance(await limiter.acquire(10), Reservation)

    asyncio.run(scenario())


def test_a_429_without_retry_after_holds_off_briefly() -> None:
    llm, _, clock = limited(["429"])
    asyncio.run(statuses(llm, 1))
    assert asyncio.run(statuses(llm, 1)) == ["skipped_rate_limit"]
    clock.advance(1)
    assert asyncio.run(statuses(llm, 1)) == ["ok"]


def test_failed_calls_spend_a_request_but_no_tokens() -> None:
    llm, _, _ = limited(["500", "500"], rpm=10, tpm=1000)
    assert asyncio.run(statuses(llm, 2)) == ["server_error"] * 2
    room = llm.limiter.headroom()
    assert (room.requests_left, room.tokens_left) == (8, 1000)


def test_without_limits_or_news_nothing_is_refused() -> None:
    llm, _, _ = limited()
    assert asyncio.run(statuses(llm, 200)) == ["ok"] * 200
    room = llm.limiter.headroom()
    assert (room.requests_left, room.tokens_left, room.blocked_for_s) == (None, None, None)


def test_the_limiter_refuses_nonsense() -> None:
    clock = SteppingClock()
    with pytest.raises(ValueError):
        RateLimiter(0, None, clock)
    with pytest.raises(ValueError):
        RateLimiter(None, 0, clock)
