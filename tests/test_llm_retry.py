"""Retries for one provider, on the fake clock: full-jitter backoff within its cap, retry-after
honoured up to max_wait_s (beyond it the provider is given up at once), a bounded number of
attempts, no retry of refused requests, a timeout per attempt, every attempt recorded."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from agents.llm.base import AuthError, BadRequest, ProviderError, RateLimited, ServerError
from agents.llm.retry import RetryingLLM, RetryPolicy
from tests.llm_fakes import ScriptedModel, SteppingClock, request, run_on

FAST = RetryPolicy(max_attempts=3, attempt_timeout_s=30, backoff_base_s=0.5, backoff_cap_s=8,
                   max_wait_s=10)


def retrying(clock: SteppingClock, script: list[str], policy: RetryPolicy = FAST,
             seed: int = 1) -> tuple[RetryingLLM, ScriptedModel]:
    inner = ScriptedModel(clock, script)
    return RetryingLLM(inner, policy, clock, random.Random(seed)), inner


def gaps(attempts: list) -> list[float]:
    """The fake time between one attempt's start and the next (the fakes answer at once)."""
    starts = [a.started_at for a in attempts]
    return [b - a for a, b in itertools.pairwise(starts)]


def test_backoff_is_full_jitter_under_a_growing_ceiling_and_the_cap() -> None:
    policy = RetryPolicy(backoff_base_s=0.5, backoff_cap_s=8)
    rng = random.Random(7)
    for n in range(10):
        ceiling = min(8.0, 0.5 * 2 ** n)
        draws = [policy.backoff_s(n, rng) for _ in range(2000)]
        assert all(0.0 <= d <= ceiling for d in draws)
        assert max(draws) > 0.9 * ceiling  # the whole range is used: full jitter
        assert min(draws) < 0.1 * ceiling
        assert 0.4 * ceiling < sum(draws) / len(draws) < 0.6 * ceiling


def test_waits_between_attempts_stay_under_the_backoff_ceiling() -> None:
    clock = SteppingClock()
    policy = RetryPolicy(max_attempts=7, backoff_base_s=0.5, backoff_cap_s=4, max_wait_s=10)
    for seed in range(20):
        llm, _ = retrying(clock, ["500"] * 6, policy, seed)
        response = asyncio.run(run_on(clock, llm.complete(request())))
        assert [a.status for a in response.attempts] == ["server_error"] * 6 + ["ok"]
        for n, gap in enumerate(gaps(response.attempts)):
            assert 0.0 <= gap <= min(4.0, 0.5 * 2 ** n) + 1e-9


def test_retry_after_is_a_floor_on_the_wait() -> None:
    clock = SteppingClock()
    llm, inner = retrying(clock, ["429:4.5"])
    response = asyncio.run(run_on(clock, llm.complete(request())))
    assert [a.status for a in response.attempts] == ["rate_limited", "ok"]
    assert response.attempts[0].retry_after_s == 4.5
    assert gaps(response.attempts)[0] >= 4.5
    assert inner.calls == 2


def test_a_retry_after_beyond_max_wait_gives_up_on_the_provider_without_waiting() -> None:
    clock = SteppingClock()
    llm, inner = retrying(clock, ["429:60"])
    start = clock.now()
    with pytest.raises(RateLimited) as caught:
        asyncio.run(run_on(clock, llm.complete(request())))
    assert inner.calls == 1
    assert clock.now() == start  # not a moment spent waiting: the fallback serves now
    assert [a.status for a in caught.value.attempts] == ["rate_limited"]
    assert caught.value.attempts[0].retry_after_s == 60


def test_attempts_are_bounded_and_every_failed_one_is_recorded() -> None:
    clock = SteppingClock()
    llm, inner = retrying(clock, ["500", "conn", "timeout", "500"])
    with pytest.raises(ProviderError) as caught:
        asyncio.run(run_on(clock, llm.complete(request())))
    assert inner.calls == 3
    assert [a.status for a in caught.value.attempts] == [
        "server_error", "connection_error", "timeout"]
    assert all(a.provider == "groq" and a.model == "m" for a in caught.value.attempts)


@pytest.mark.parametrize(("step", "error"), [("400", BadRequest), ("404", BadRequest),
                                             ("401", AuthError)])
def test_a_refused_request_is_not_retried(step: str, error: type[ProviderError]) -> None:
    clock = SteppingClock()
    llm, inner = retrying(clock, [step])
    start = clock.now()
    with pytest.raises(error) as caught:
        asyncio.run(run_on(clock, llm.complete(request())))
    assert inner.calls == 1
    assert clock.now() == start
    assert [a.status for a in caught.value.attempts] == ["bad_request"]


def test_each_attempt_times_out_on_the_injected_clock() -> None:
    clock = SteppingClock()
    policy = RetryPolicy(max_attempts=3, attempt_timeout_s=5, backoff_base_s=0)
    llm, inner = retrying(clock, ["hang", "ok"], policy)
    start = clock.now()
    response = asyncio.run(run_on(clock, llm.complete(request())))
    timed_out, ok = response.attempts
    assert (timed_out.status, ok.status) == ("timeout", "ok")
    assert timed_out.latency_ms == pytest.approx(5000)
    assert "within 5 s" in (timed_out.error or "")
    assert inner.cancelled == 1  # the hung call was abandoned, not left running
    assert clock.now() - start == pytest.approx(5)


def test_a_response_carries_the_failed_attempts_before_it() -> None:
    clock = SteppingClock()
    llm, _ = retrying(clock, ["500", "429:1"])
    response = asyncio.run(run_on(clock, llm.complete(request())))
    assert [a.status for a in response.attempts] == ["server_error", "rate_limited", "ok"]
    assert response.attempts[-1].input_tokens == 40


def test_an_error_without_an_attempt_still_leaves_one_in_the_trace() -> None:
    class Bare(ScriptedModel):
        async def complete(self, request):
            self.calls += 1
            raise ServerError("HTTP 502: bad gateway")

    clock = SteppingClock()
    llm = RetryingLLM(Bare(clock), RetryPolicy(max_attempts=2, backoff_base_s=0), clock)
    with pytest.raises(ServerError) as caught:
        asyncio.run(run_on(clock, llm.complete(request())))
    assert [(a.provider, a.status, a.error) for a in caught.value.attempts] == [
        ("groq", "server_error", "HTTP 502: bad gateway")] * 2


def test_the_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(attempt_timeout_s=0)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_base_s=-1)
