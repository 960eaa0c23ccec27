"""The Redis bus, against a Redis server of the test's own: a commit in one process wakes the
readers of another within milliseconds; Redis going away is said once and readers poll; when
it answers again, wake-ups travel again without a restart."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from dashboard.session import SESSION_COOKIE
from orchestrator.bus import RedisBus
from orchestrator.bus.redis import CommandPublisher
from orchestrator.runtime import Runtime
from schema.clock import FakeClock, SystemClock
from schema.events import TOPIC_EVENTS, TOPIC_QUEUE
from tests.conftest import make_settings
from tests.redis_helpers import PrivateRedis, private_redis

__all__ = ["private_redis"]  # fixture

TOPICS = (TOPIC_QUEUE, TOPIC_EVENTS)
POLL_S = 60.0  # a reader's poll: far longer than any wait here, so only Redis can wake it


def _bus(url: str, sender: str) -> RedisBus:
    return RedisBus(url, SystemClock(), prefix="t:", sender=sender)


async def _connected(bus: RedisBus, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not bus.status().connected:
        assert time.monotonic() < deadline, "the bus did not connect"
        await asyncio.sleep(0.01)


def test_a_commit_in_one_process_wakes_the_readers_of_another(
        private_redis: PrivateRedis) -> None:
    async def scenario() -> None:
        a, b = _bus(private_redis.url, "a"), _bus(private_redis.url, "b")
        await a.start()
        await b.start()
        try:
            await _connected(a)
            await _connected(b)
            here, there = a.subscribe(TOPIC_QUEUE), b.subscribe(TOPIC_QUEUE)
            events = b.subscribe(TOPIC_EVENTS)
            for sub in (here, there, events):
                await sub.wait(0.2)  # the catch-up wake-up of listening
            began = time.monotonic()
            a.publish(frozenset((TOPIC_QUEUE,)))  # as a commit listener does
            assert await here.wait(POLL_S)  # this process: at once
            assert await there.wait(POLL_S)  # the other: over Redis
            assert time.monotonic() - began < 2
            assert not await events.wait(0.3)  # only the topic touched
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_a_process_listens_only_to_the_topics_it_has_readers_of(
        private_redis: PrivateRedis) -> None:
    """A beat reads neither the queue nor events; a worker reads the queue; a dashboard
    events: each hears only those wake-ups, so none spends its time on the others'."""
    async def scenario() -> None:
        import redis.asyncio as aioredis

        beat, worker, dashboard = (_bus(private_redis.url, n) for n in ("b", "w", "d"))
        probe = aioredis.Redis.from_url(private_redis.url)
        try:
            for bus in (beat, worker, dashboard):
                await bus.start()
                await _connected(bus)
            queue = worker.subscribe(TOPIC_QUEUE)
            dashboard.subscribe(TOPIC_EVENTS)
            await queue.wait(0.5)

            async def listeners() -> dict[str, int]:
                counts = await probe.pubsub_numsub(*(beat.channel(t) for t in TOPICS))
                return {c.decode().rsplit(":", 1)[1]: n for c, n in counts}

            deadline = time.monotonic() + 5
            while await listeners() != {TOPIC_QUEUE: 1, TOPIC_EVENTS: 1}:
                assert time.monotonic() < deadline, await listeners()
                await asyncio.sleep(0.01)
            dashboard.publish(frozenset((TOPIC_QUEUE,)))  # `Run a tick now` on a dashboard
            assert await queue.wait(5)  # a topic subscribed after connecting is heard too
        finally:
            for bus in (beat, worker, dashboard):
                await bus.close()
            await probe.aclose()

    asyncio.run(scenario())


def test_a_short_command_wakes_the_fleet(private_redis: PrivateRedis) -> None:
    async def scenario() -> None:
        worker = _bus(private_redis.url, "w")
        await worker.start()
        try:
            await _connected(worker)
            sub = worker.subscribe(TOPIC_QUEUE)
            await sub.wait(0.2)
            command = CommandPublisher(private_redis.url, prefix="t:")
            command.publish(frozenset((TOPIC_QUEUE,)))  # `tickwork stacks play 1` committed
            command.close()
            assert await sub.wait(5)
        finally:
            await worker.close()

    asyncio.run(scenario())


def test_redis_going_away_is_said_once_and_push_comes_back(
        private_redis: PrivateRedis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tickwork.bus")

    async def scenario() -> None:
        a, b = _bus(private_redis.url, "a"), _bus(private_redis.url, "b")
        await a.start()
        await b.start()
        try:
            await _connected(a)
            await _connected(b)
            private_redis.stop()
            deadline = time.monotonic() + 15
            while a.status().connected or b.status().connected:
                assert time.monotonic() < deadline, "the loss of Redis was not noticed"
                a.publish(frozenset((TOPIC_QUEUE,)))
                await asyncio.sleep(0.05)
            assert a.status().error
            for _ in range(5):  # more commits while Redis is away: nothing more is said
                a.publish(frozenset((TOPIC_QUEUE,)))
                await asyncio.sleep(0.05)
            private_redis.start()
            restarted = time.monotonic()
            await _connected(a, timeout=10)
            await _connected(b, timeout=10)
            assert time.monotonic() - restarted < 5.5  # push back within the backoff's cap
            there = b.subscribe(TOPIC_QUEUE)
            await there.wait(0.2)
            a.publish(frozenset((TOPIC_QUEUE,)))
            assert await there.wait(5)
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())
    away = [r for r in caplog.records if "is unavailable" in r.getMessage()]
    back = [r for r in caplog.records if "answers again: wake-ups" in r.getMessage()]
    assert len(away) == 2 and len(back) == 2  # once per process (a and b), each way


def test_sessions_keep_working_while_redis_is_away(
        private_redis: PrivateRedis, db_url: str, clock: FakeClock) -> None:
    """Sessions are signed cookies: with Redis stopped, a browser signed in on one dashboard
    still writes through another, a new sign-in works, and no request waits on Redis for
    long."""
    from dashboard.api import create_app

    rt = Runtime.build(make_settings(db_url, redis_url=private_redis.url), clock, env={})

    async def scenario() -> None:
        first = httpx.ASGITransport(app=create_app(rt))
        second = httpx.ASGITransport(app=create_app(rt))
        async with httpx.AsyncClient(transport=first, base_url="http://one.test") as one, \
                httpx.AsyncClient(transport=second, base_url="http://two.test") as two:
            r = await one.post("/session", json={"token": "test-token"})
            csrf, cookie = r.json()["csrf_token"], r.cookies[SESSION_COOKIE]
            private_redis.stop()
            two.cookies.set(SESSION_COOKIE, cookie)
            began = time.monotonic()
            for n in range(5):
                r = await two.post("/api/stacks", json={"name": f"while-away-{n}"},
                                   headers={"X-CSRF-Token": csrf})
                assert r.status_code == 201, r.text
            assert time.monotonic() - began < 5  # Redis asked at most once, briefly
            r = await two.post("/session", json={"token": "test-token"})
            assert r.status_code == 200

    try:
        asyncio.run(scenario())
    finally:
        rt.close()


def test_a_session_made_on_one_dashboard_process_is_honoured_by_another(
        private_redis: PrivateRedis, db_url: str, clock: FakeClock) -> None:
    from dashboard.api import create_app

    rt = Runtime.build(make_settings(db_url, redis_url=private_redis.url), clock, env={})

    async def scenario() -> None:
        first = httpx.ASGITransport(app=create_app(rt))  # two dashboards: each keeps only
        second = httpx.ASGITransport(app=create_app(rt))  # what Redis shares between them
        async with httpx.AsyncClient(transport=first, base_url="http://one.test") as one, \
                httpx.AsyncClient(transport=second, base_url="http://two.test") as two:
            r = await one.post("/session", json={"token": "test-token"})
            assert r.status_code == 200, r.text
            csrf, cookie = r.json()["csrf_token"], r.cookies[SESSION_COOKIE]
            two.cookies.set(SESSION_COOKIE, cookie)  # the browser, on the other process
            r = await two.post("/api/stacks", json={"name": "from-two"},
                               headers={"X-CSRF-Token": csrf})
            assert r.status_code == 201, r.text
            await one.post("/session/logout")  # `one` keeps the cookie it was given
            r = await two.post("/api/stacks", json={"name": "after-logout"},
                               headers={"X-CSRF-Token": csrf})
            assert r.status_code == 401  # signing out on one ends it on every one

    try:
        asyncio.run(scenario())
    finally:
        rt.close()
