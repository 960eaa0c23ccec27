"""The circuit breaker, on the fake clock: closed → open after consecutive failures, skipping
at once while open (so the fallback serves), half-open after the cool-down with one probe at a
time, closed again by a good probe or re-opened by a bad one."""

from __future__ import annotations

import asyncio

import pytest

from agents.llm.base import SkippedOpenBreaker
from agents.llm.breaker import BreakerLLM, CircuitBreaker
from tests.conftest import wait_for
from tests.llm_fakes import ScriptedModel, SteppingClock, request, statuses


def guarded(script: list[str], threshold: int = 3, cooldown_s: float = 30.0
            ) -> tuple[BreakerLLM, ScriptedModel, SteppingClock]:
    clock = SteppingClock()
    inner = ScriptedModel(clock, script)
    return BreakerLLM(inner, CircuitBreaker(threshold, cooldown_s, clock), clock), inner, clock




def test_consecutive_failures_open_it_and_then_calls_skip_at_once() -> None:
    llm, inner, clock = guarded(["500", "timeout", "conn"], threshold=3)
    assert asyncio.run(statuses(llm, 3)) == ["server_error", "timeout", "connection_error"]
    assert llm.breaker.state == "open"
    snap = llm.breaker.snapshot()
    assert (snap.failures, snap.opened_at, snap.probe_in_s) == (3, clock.now(), 30.0)

    with pytest.raises(SkippedOpenBreaker) as caught:
        asyncio.run(llm.complete(request()))
    assert inner.calls == 3  # the provider was not asked
    (attempt,) = caught.value.attempts
    assert (attempt.provider, attempt.model, attempt.status, attempt.latency_ms) == (
        "groq", "m", "skipped_open_breaker", 0.0)
    assert "3 consecutive failures" in (attempt.error or "")
    assert not caught.value.retryable


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    llm, _, _ = guarded(["500", "500", "ok", "500", "500"], threshold=3)
    asyncio.run(statuses(llm, 5))
    assert llm.breaker.state == "closed"
    assert llm.breaker.snapshot().failures == 2


def test_refused_requests_do_not_count_but_a_refused_key_does() -> None:
    llm, _, _ = guarded(["400", "404", "400", "400"], threshold=2)
    asyncio.run(statuses(llm, 4))
    assert llm.breaker.state == "closed"
    assert llm.breaker.snapshot().failures == 0

    llm, _, _ = guarded(["401", "401"], threshold=2)
    asyncio.run(statuses(llm, 2))
    assert llm.breaker.state == "open"


def test_after_the_cool_down_one_good_probe_closes_it() -> None:
    llm, inner, clock = guarded(["500", "500"], threshold=2, cooldown_s=30)
    asyncio.run(statuses(llm, 2))
    clock.advance(29.9)
    assert llm.breaker.state == "open"
    assert asyncio.run(statuses(llm, 1)) == ["skipped_open_breaker"]
    clock.advance(0.1)
    assert llm.breaker.state == "half_open"
    assert asyncio.run(statuses(llm, 2)) == ["ok", "ok"]  # the probe, then business as usual
    assert llm.breaker.state == "closed"
    assert llm.breaker.snapshot().failures == 0
    assert inner.calls == 4


def test_a_failed_probe_opens_it_for_another_cool_down() -> None:
    llm, inner, clock = guarded(["500", "500", "500"], threshold=2, cooldown_s=30)
    asyncio.run(statuses(llm, 2))
    first_open = llm.breaker.snapshot().opened_at
    assert first_open is not None
    clock.advance(30)
    assert asyncio.run(statuses(llm, 2)) == ["server_error", "skipped_open_breaker"]
    snap = llm.breaker.snapshot()
    assert snap.state == "open"
    assert snap.opened_at == first_open + 30
    clock.advance(29)
    assert asyncio.run(statuses(llm, 1)) == ["skipped_open_breaker"]
    clock.advance(1)
    assert asyncio.run(statuses(llm, 1)) == ["ok"]
    assert llm.breaker.state == "closed"
    assert inner.calls == 4


def test_only_one_probe_at_a_time() -> None:
    async def scenario() -> None:
        llm, inner, clock = guarded(["500", "gate"], threshold=1, cooldown_s=10)
        await statuses(llm, 1)
        clock.advance(10)
        probe = asyncio.ensure_future(llm.complete(request()))
        await wait_for(lambda: inner.calls == 2, what="the probe to reach the provider")
        assert llm.breaker.snapshot().probing
        # Everyone else keeps skipping while the probe is out.
        assert await statuses(llm, 3) == ["skipped_open_breaker"] * 3
        assert inner.calls == 2
        inner.gate.set()
        assert (await probe).attempts[-1].status == "ok"
        assert llm.breaker.state == "closed"
        assert await statuses(llm, 1) == ["ok"]

    asyncio.run(scenario())


def test_a_probe_that_ends_without_a_verdict_lets_the_next_caller_probe() -> None:
    async def scenario() -> None:
        llm, inner, clock = guarded(["500", "400", "gate"], threshold=1, cooldown_s=10)
        await statuses(llm, 1)
        clock.advance(10)
        assert await statuses(llm, 1) == ["bad_request"]  # a probe, but no verdict
        assert llm.breaker.state == "half_open"
        probe = asyncio.ensure_future(llm.complete(request()))
        await wait_for(lambda: inner.calls == 3, what="the next probe")
        probe.cancel()  # a cancelled probe frees the slot too
        with pytest.raises(asyncio.CancelledError):
            await probe
        assert not llm.breaker.snapshot().probing
        assert await statuses(llm, 1) == ["ok"]
        assert llm.breaker.state == "closed"

    asyncio.run(scenario())


def test_the_breaker_refuses_nonsense() -> None:
    clock = SteppingClock()
    with pytest.raises(ValueError):
        CircuitBreaker(0, 30, clock)
    with pytest.raises(ValueError):
        CircuitBreaker(3, -1, clock)
