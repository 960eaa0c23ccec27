"""The fleet's limits and breakers ask Redis only when the answer could differ from what the
process knows: counted here, command by command, on a Redis server of the test's own.

Each process's clock is a FakeClock (Redis keeps its own), so "within the cache time" is
exact: nothing changes locally until the test moves the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from agents.llm.base import LLMRequest, LLMResponse, SkippedOpenBreaker
from agents.llm.breaker import BreakerLLM, Permit
from agents.llm.ratelimit import RateLimitedLLM, Refusal, Reservation
from agents.llm.shared import CACHE_S, RedisBreaker, RedisLimiter, SharedReservation
from agents.llm.shared.limiter import HEADER_WRITE_S
from schema.clock import FakeClock
from tests.llm_fakes import ScriptedModel, statuses
from tests.redis_helpers import PrivateRedis, private_redis

__all__ = ["private_redis"]  # fixture

LIMIT = "t:limit:openai:mini"
BREAKER = "t:breaker:openai:mini"
PLENTY = {"x-ratelimit-limit-requests": "10000", "x-ratelimit-limit-tokens": "10000000",
          "x-ratelimit-remaining-requests": "9000", "x-ratelimit-remaining-tokens": "9000000",
          "x-ratelimit-reset-requests": "6ms", "x-ratelimit-reset-tokens": "1ms"}
NONE_LEFT = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}


class Counted:
    """A client of the private server that records every command it sends (each is one round
    trip: a script goes as one EVALSHA). Loading a script, once per script and server, is
    left out: an EVALSHA refused as unknown (NOSCRIPT) and the SCRIPT LOAD after it."""

    def __init__(self, server: PrivateRedis) -> None:
        self.client = aioredis.Redis.from_url(server.url, socket_timeout=1,
                                              socket_connect_timeout=1)
        self.sent: list[str] = []
        send = self.client.execute_command

        async def counted(*args: Any, **options: Any) -> Any:
            name = str(args[0]).upper()
            try:
                result = await send(*args, **options)
            except NoScriptError:
                raise
            except Exception:
                self.sent.append(name)
                raise
            if name != "SCRIPT LOAD":
                self.sent.append(name)
            return result

        self.client.execute_command = counted  # type: ignore[method-assign]

    def since(self, mark: int) -> list[str]:
        return self.sent[mark:]


def run(scenario: Any, *counted: Counted) -> None:
    async def main() -> None:
        try:
            await scenario()
        finally:
            for c in counted:
                await c.client.aclose()

    asyncio.run(main())


class Answering(ScriptedModel):
    """A provider's model that hands each response's rate-limit headers to the limiter, as
    the adapters do."""

    def __init__(self, clock: FakeClock, limiter: RedisLimiter,
                 headers: Mapping[str, str]) -> None:
        super().__init__(clock, provider="openai", model="mini")
        self.limiter, self.headers = limiter, dict(headers)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        response = await super().complete(request)
        await self.limiter.observe_headers(self.headers)
        return response


def provider(counted: Counted, clock: FakeClock, rpm: int | None = None,
             tpm: int | None = None, headers: Mapping[str, str] = PLENTY
             ) -> tuple[BreakerLLM, RedisLimiter, RedisBreaker, Answering]:
    """One worker's view of one provider: breaker → limiter → model, as the chain builds it."""
    limiter = RedisLimiter(counted.client, LIMIT, rpm, tpm, clock)
    breaker = RedisBreaker(counted.client, BREAKER, 3, 300, clock)
    model = Answering(clock, limiter, headers)
    return (BreakerLLM(RateLimitedLLM(model, limiter, clock), breaker, clock), limiter, breaker,
            model)


def test_calls_to_a_provider_without_a_limit_and_plenty_left_ask_redis_nothing(
        private_redis: PrivateRedis) -> None:
    worker = Counted(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        llm, *_ = provider(worker, clock)
        assert await statuses(llm, 1) == ["ok"]  # a first look at the shared state
        mark = len(worker.sent)
        assert await statuses(llm, 200) == ["ok"] * 200
        assert worker.since(mark) == []
        clock.advance(CACHE_S)  # then one look per CACHE_S, at the limiter's and the breaker's
        assert await statuses(llm, 200) == ["ok"] * 200
        assert sorted(worker.since(mark)) == ["EVALSHA", "EVALSHA"]

    run(scenario, worker)


def test_calls_refused_while_the_fleets_minute_is_full_ask_redis_once(
        private_redis: PrivateRedis) -> None:
    other, worker = Counted(private_redis), Counted(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        filler, *_ = provider(other, clock, rpm=3)
        assert await statuses(filler, 3) == ["ok"] * 3  # another worker fills Groq's minute
        llm, limiter, _, model = provider(worker, clock, rpm=3)
        mark = len(worker.sent)
        assert await statuses(llm, 100) == ["skipped_rate_limit"] * 100
        assert model.calls == 0
        # The breaker's first look, and one script: the refusal says when the minute frees.
        assert sorted(worker.since(mark)) == ["EVALSHA", "EVALSHA"]
        refused = await limiter.acquire(1)
        assert isinstance(refused, Refusal) and 50 < refused.wait_s <= 60.5
        assert "3 requests per minute used by the fleet" in refused.reason
        assert limiter.headroom().requests_left == 0
        mark = len(worker.sent)
        clock.advance(refused.wait_s)  # here; Redis's own minute has not moved on
        assert await statuses(llm, 1) == ["skipped_rate_limit"]
        assert "EVALSHA" in worker.since(mark)  # asked again once it could have freed

    run(scenario, other, worker)


def test_near_the_limit_the_fleet_is_counted_in_redis(private_redis: PrivateRedis) -> None:
    """Headers saying little is left send every grant through the script, which counts the
    grants of every worker against what the provider reported."""
    one, two = Counted(private_redis), Counted(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        first, second = (RedisLimiter(c.client, LIMIT, None, None, clock) for c in (one, two))
        await first.observe_headers({"x-ratelimit-remaining-requests": "3",
                                     "x-ratelimit-reset-requests": "30s"})
        clock.advance(CACHE_S)
        grants = [await w.acquire(1) for w in (second, first, second, first)]
        assert [type(g) for g in grants] == [SharedReservation] * 3 + [Refusal]
        assert "no requests left" in grants[3].reason  # type: ignore[union-attr]
        mark = len(two.sent)
        assert isinstance(await second.acquire(1), Refusal)  # as second last heard
        assert two.since(mark) == []

    run(scenario, one, two)


def test_header_exhaustion_seen_by_one_worker_makes_another_refuse(
        private_redis: PrivateRedis) -> None:
    one, two = Counted(private_redis), Counted(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        first, second = (RedisLimiter(c.client, LIMIT, None, None, clock) for c in (one, two))
        assert isinstance(await second.acquire(1), Reservation)
        mark = len(one.sent)
        await first.observe_headers(NONE_LEFT)
        assert one.since(mark) == ["EVALSHA"]  # written: it changes every worker's decision
        for _ in range(20):  # and the worker that saw it refuses without asking
            refused = await first.acquire(1)
            assert isinstance(refused, Refusal) and "no requests left" in refused.reason
        assert one.since(mark) == ["EVALSHA"]
        clock.advance(CACHE_S)  # the other worker's next look
        refused = await second.acquire(1)
        assert isinstance(refused, Refusal) and "no requests left" in refused.reason
        assert 29 < refused.wait_s <= 30

    run(scenario, one, two)


def test_headers_are_written_only_when_they_change_a_decision(
        private_redis: PrivateRedis) -> None:
    worker = Counted(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        limiter = RedisLimiter(worker.client, LIMIT, None, None, clock)
        for _ in range(50):
            await limiter.observe_headers(PLENTY)
        assert worker.sent == []
        low = {**PLENTY, "x-ratelimit-remaining-requests": "10",
               "x-ratelimit-remaining-tokens": "100", "x-ratelimit-reset-requests": "30s",
               "x-ratelimit-reset-tokens": "30s"}
        for _ in range(20):
            await limiter.observe_headers(low)
        assert worker.sent == ["EVALSHA"]  # both kinds in one script, once per interval
        clock.advance(HEADER_WRITE_S + 0.001)
        await limiter.observe_headers(low)
        assert worker.sent == ["EVALSHA"] * 2
        clock.advance(HEADER_WRITE_S + 0.001)
        await limiter.observe_headers(PLENTY)  # a reset: the fleet must hear it
        assert worker.sent == ["EVALSHA"] * 3
        clock.advance(HEADER_WRITE_S + 0.001)
        await limiter.observe_headers(PLENTY)
        assert worker.sent == ["EVALSHA"] * 3

    run(scenario, worker)


def test_a_429_holds_this_worker_off_without_asking_redis(private_redis: PrivateRedis) -> None:
    worker = Counted(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        limiter = RedisLimiter(worker.client, LIMIT, 30, None, clock)
        await limiter.rate_limited(5.0)
        assert worker.sent == ["EVALSHA"]  # shared with the fleet
        for _ in range(20):
            refused = await limiter.acquire(1)
            assert isinstance(refused, Refusal) and "429" in refused.reason
        assert worker.sent == ["EVALSHA"]
        assert limiter.headroom().blocked_for_s == 5.0

    run(scenario, worker)


def test_reservations_are_settled_only_against_a_token_limit_when_it_matters(
        private_redis: PrivateRedis) -> None:
    worker = Counted(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        requests_only = RedisLimiter(worker.client, LIMIT, 30, None, clock)
        grant = await requests_only.acquire(600)
        assert isinstance(grant, SharedReservation)
        mark = len(worker.sent)
        await requests_only.settle(grant, 100)
        assert worker.since(mark) == []  # no token limit: the tokens count for nothing
        tokens = RedisLimiter(worker.client, f"{LIMIT}:t", None, 12_000, clock)
        grant = await tokens.acquire(600)
        assert isinstance(grant, SharedReservation)
        mark = len(worker.sent)
        await tokens.settle(grant, 550)  # 50 fewer than estimated: under 1 % of the limit
        assert worker.since(mark) == [] and grant.tokens == 600
        await tokens.settle(grant, 700)  # more than estimated: always corrected
        assert worker.since(mark) == ["EVALSHA"] and grant.tokens == 700
        await tokens.settle(grant, 100)  # 600 fewer: worth freeing for the fleet
        assert worker.since(mark) == ["EVALSHA"] * 2 and grant.tokens == 100

    run(scenario, worker)


def test_a_breaker_opened_by_another_worker_is_seen_within_the_cache_time(
        private_redis: PrivateRedis) -> None:
    one, two = Counted(private_redis), Counted(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        first, second = (RedisBreaker(c.client, BREAKER, 3, 300, clock) for c in (one, two))
        assert await second.allow() is Permit.CALL
        mark = len(two.sent)
        for _ in range(100):  # known closed with no failures: nothing to ask or write
            permit = await second.allow()
            assert permit is Permit.CALL
            await second.succeeded(permit)
            await second.released(permit)
        assert two.since(mark) == []
        for _ in range(3):  # another worker's failures open it
            permit = await first.allow()
            assert permit is Permit.CALL
            await first.failed(permit)
        assert (await first.refresh()).state == "open"
        assert await second.allow() is Permit.CALL  # as second last heard, for a moment
        clock.advance(CACHE_S)
        assert await second.allow() is None
        mark = len(two.sent)
        for _ in range(100):  # known open: skipped here until its open-until
            assert await second.allow() is None
            assert (await second.refresh()).state == "open"
        assert two.since(mark) == []
        snap = second.snapshot()
        assert (snap.state, snap.failures) == ("open", 3)
        assert snap.probe_in_s is not None and 299 < snap.probe_in_s <= 300

    run(scenario, one, two)


def test_skipped_calls_on_an_open_breaker_ask_redis_nothing(
        private_redis: PrivateRedis) -> None:
    worker = Counted(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        llm, _, breaker, model = provider(worker, clock)
        model.script = ["500"] * 3
        assert await statuses(llm, 3) == ["server_error"] * 3
        mark = len(worker.sent)
        for _ in range(50):
            try:
                await llm.complete(LLMRequest(messages=[], schema_name="Answer"))
            except SkippedOpenBreaker as exc:
                assert "circuit open after 3 consecutive failures" in str(exc)
            else:
                raise AssertionError("the call was not skipped")
        assert worker.since(mark) == [] and model.calls == 3
        assert (await breaker.refresh()).state == "open"

    run(scenario, worker)


def test_many_calls_at_once_past_the_cache_time_ask_redis_once(
        private_redis: PrivateRedis) -> None:
    """When the breaker's cached state grows stale under a stream of calls, one asks Redis;
    the others go on what was seen (closed) meanwhile, instead of each asking."""
    worker = Counted(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        breaker = RedisBreaker(worker.client, BREAKER, 3, 300, clock)
        assert await breaker.allow() is Permit.CALL
        clock.advance(CACHE_S)
        mark = len(worker.sent)
        permits = await asyncio.gather(*(breaker.allow() for _ in range(50)))
        assert permits == [Permit.CALL] * 50
        assert worker.since(mark) == ["EVALSHA"]

    run(scenario, worker)


def test_many_calls_at_once_on_a_full_minute_ask_redis_once(
        private_redis: PrivateRedis) -> None:
    """A slot's first calls arrive together: one asks the fleet's script and its refusal
    answers the others, instead of each asking."""
    other, worker = Counted(private_redis), Counted(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        filler, *_ = provider(other, clock, rpm=3)
        assert await statuses(filler, 3) == ["ok"] * 3
        limiter = RedisLimiter(worker.client, LIMIT, 3, None, clock)
        mark = len(worker.sent)
        refused = await asyncio.gather(*(limiter.acquire(10) for _ in range(50)))
        assert all(isinstance(r, Refusal) for r in refused)
        assert worker.since(mark) == ["EVALSHA"]

    run(scenario, other, worker)
