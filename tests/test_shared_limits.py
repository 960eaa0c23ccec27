"""Provider limits and breakers shared through Redis (a server of the test's own): what one
worker spends, every worker counts; failures seen by one open the breaker for all, and one
probe goes out fleet-wide. With Redis away, each falls back to a conservative local share, which
keeps its minute however often Redis comes and goes.

Each process trusts what it knows of the shared state for `CACHE_S`; the tests that need time
to pass for that run the processes' clocks on a FakeClock (Redis keeps its own)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from agents.llm.breaker import Permit
from agents.llm.ratelimit import Refusal, Reservation
from agents.llm.shared import CACHE_S, RedisBreaker, RedisLimiter, SharedReservation
from schema.clock import FakeClock, SystemClock
from tests.redis_helpers import PrivateRedis, private_redis

__all__ = ["private_redis"]  # fixture

KEY = "t:limit:groq:llama"


def _client(server: PrivateRedis) -> aioredis.Redis:
    return aioredis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)


def run(scenario: Any, *clients: aioredis.Redis) -> None:
    """Run `scenario()` and close the clients whatever it does."""
    async def main() -> None:
        try:
            await scenario()
        finally:
            for c in clients:
                await c.aclose()

    asyncio.run(main())


def test_the_fleet_stays_under_the_provider_limit(private_redis: PrivateRedis) -> None:
    a, b = _client(private_redis), _client(private_redis)

    async def scenario() -> None:
        clock = SystemClock()
        one, two = (RedisLimiter(c, KEY, 3, None, clock) for c in (a, b))
        grants = [await one.acquire(10), await two.acquire(10), await one.acquire(10)]
        assert all(isinstance(g, Reservation) for g in grants)
        refused = await two.acquire(10)
        assert isinstance(refused, Refusal) and "3 requests per minute used by the fleet" \
            in refused.reason
        assert 50 < refused.wait_s <= 60.5  # the minute, and a margin for the way there

    run(scenario, a, b)


def test_tokens_are_counted_fleet_wide_and_settled_to_what_was_used(
        private_redis: PrivateRedis) -> None:
    a, b = _client(private_redis), _client(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        one, two = (RedisLimiter(c, KEY, None, 1000, clock) for c in (a, b))
        first = await one.acquire(600)
        assert isinstance(first, Reservation)
        assert isinstance(await two.acquire(600), Refusal)  # 1,200 > 1,000
        await one.settle(first, 100)  # the call used far less than estimated
        assert isinstance(await two.acquire(600), Refusal)  # as two last heard, for a moment
        clock.advance(CACHE_S)
        assert isinstance(await two.acquire(600), Reservation)

    run(scenario, a, b)


def test_a_429_seen_by_one_holds_off_every_worker(private_redis: PrivateRedis) -> None:
    a, b = _client(private_redis), _client(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        one, two = (RedisLimiter(c, KEY, None, None, clock) for c in (a, b))
        await one.rate_limited(2.0)
        refused = await two.acquire(1)
        assert isinstance(refused, Refusal) and "429" in refused.reason
        assert 1.0 < refused.wait_s <= 2.0
        await b.delete(f"{KEY}:state")  # (the 429 forgotten; the header alone decides)
        clock.advance(2.0)  # and the hold over where the workers remember it
        await one.observe_headers({"x-ratelimit-remaining-requests": "0",
                                   "x-ratelimit-reset-requests": "30s"})
        refused = await two.acquire(1)
        assert isinstance(refused, Refusal) and "no requests left" in refused.reason

    run(scenario, a, b)


def test_failures_seen_by_one_open_the_breaker_for_all_and_one_probe_goes_out(
        private_redis: PrivateRedis) -> None:
    a, b = _client(private_redis), _client(private_redis)

    async def scenario() -> None:
        clock = SystemClock()
        one, two = (RedisBreaker(c, "t:breaker:groq:llama", 2, 0.3, clock) for c in (a, b))
        for _ in range(2):
            permit = await one.allow()
            assert permit is Permit.CALL
            await one.failed(permit)
        assert await two.allow() is None  # open for every worker
        assert (await two.refresh()).state == "open"
        deadline = time.monotonic() + 5
        while (await two.refresh()).state != "half_open":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        permits = [await one.allow(), await two.allow(), await one.allow()]
        assert permits.count(Permit.PROBE) == 1 and permits.count(None) == 2
        prober, other = (one, two) if permits[0] is Permit.PROBE else (two, one)
        closed = time.monotonic()
        await prober.succeeded(Permit.PROBE)
        assert await prober.allow() is Permit.CALL
        while await other.allow() is not Permit.CALL:  # within its cache time
            assert time.monotonic() - closed < CACHE_S + 1
            await asyncio.sleep(0.02)

    run(scenario, a, b)


def test_with_redis_away_each_worker_keeps_a_conservative_share(
        private_redis: PrivateRedis) -> None:
    client = _client(private_redis)

    async def scenario() -> None:
        limiter = RedisLimiter(client, KEY, 4, None, SystemClock(), workers=lambda: 2)
        breaker = RedisBreaker(client, "t:breaker:x", 1, 30, SystemClock())
        private_redis.stop()
        grants = [await limiter.acquire(1) for _ in range(3)]
        assert [isinstance(g, Reservation) for g in grants] == [True, True, False]  # 4 / 2
        permit = await breaker.allow()  # this process's breaker decides alone
        assert permit is Permit.CALL
        await breaker.failed(permit)
        assert await breaker.allow() is None

    run(scenario, client)


def test_a_flapping_redis_does_not_hand_out_a_fresh_share_each_time(
        private_redis: PrivateRedis) -> None:
    """Redis away, back, away again within a minute: the worker's share while away is still
    the one minute's, not a fresh budget per flap (which let a fleet under load far exceed the
    provider's limit)."""
    client = _client(private_redis)

    async def scenario() -> None:
        clock = FakeClock()
        limiter = RedisLimiter(client, KEY, 4, None, clock, workers=lambda: 2)
        private_redis.stop()
        grants = [await limiter.acquire(1) for _ in range(3)]
        assert [isinstance(g, Reservation) for g in grants] == [True, True, False]  # 4 / 2
        private_redis.start()
        deadline = time.monotonic() + 10
        while not isinstance(await limiter.acquire(1), SharedReservation):  # Redis decides
            assert time.monotonic() < deadline, "Redis did not come back"
            await asyncio.sleep(0.05)
        private_redis.stop()
        assert isinstance(await limiter.acquire(1), Refusal)  # the same minute's share
        clock.advance(60)
        assert isinstance(await limiter.acquire(1), Reservation)  # and a new one after it

    run(scenario, client)


def test_once_redis_failed_it_is_not_asked_again_for_a_moment(
        private_redis: PrivateRedis) -> None:
    """While Redis hangs, each call would wait for a socket timeout before falling back; the
    shared client instead fails at once for HOLD_S after a failure, then asks again."""
    from agents.llm.shared import HOLD_S
    from agents.llm.shared.client import RedisAway, connect

    clock = FakeClock()
    client = connect(private_redis.url, clock)

    async def scenario() -> None:
        assert await client.ping()
        private_redis.stop()
        try:
            await client.ping()
            raise AssertionError("a stopped Redis answered")
        except RedisAway:
            raise AssertionError("held off before any failure") from None
        except (ConnectionError, aioredis.ConnectionError):
            pass
        private_redis.start()  # back, but the hold is not over: not asked
        try:
            await client.ping()
            raise AssertionError("asked Redis within the hold")
        except RedisAway:
            pass
        clock.advance(HOLD_S)
        assert await client.ping()

    run(scenario, client)


def test_hundreds_of_calls_at_once_share_a_few_connections(private_redis: PrivateRedis) -> None:
    """At a slot's start hundreds of calls ask at once: they wait their turn on the shared
    client's connections instead of failing (which would read as Redis being away and hand
    each worker a local share of the limit)."""
    from agents.llm.shared.client import connect

    client = connect(private_redis.url, SystemClock(), connections=8)

    async def scenario() -> None:
        limiter = RedisLimiter(client, KEY, 10_000, None, SystemClock())
        grants = await asyncio.gather(*(limiter.acquire(10) for _ in range(400)))
        assert all(isinstance(g, SharedReservation) for g in grants)
        clients = await client.client_list()
        assert len(clients) <= 8 + 1

    run(scenario, client)
