"""Guessing the admin token is throttled per client address: after five failed sign-ins or
wrong bearer tokens within a minute, that address's attempts are answered 429 with Retry-After
until the window passes; successes do not count, other addresses and reading are unaffected.
With Redis, every dashboard process shares the counts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from dashboard import throttle
from dashboard.api import create_app
from orchestrator.runtime import Runtime
from schema.clock import FakeClock
from tests.conftest import make_settings, wait_for
from tests.redis_helpers import PrivateRedis, private_redis

__all__ = ["private_redis"]  # fixture

ADMIN = {"Authorization": "Bearer test-token"}
WRONG = {"Authorization": "Bearer not-the-token"}
GUESSER, OTHER = "198.51.100.7", "203.0.113.9"


@asynccontextmanager
async def clients(app: Any) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two clients of one dashboard, from two addresses."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(GUESSER, 1)),
                                 base_url="http://tickwork.test") as guesser, \
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(OTHER, 1)),
                              base_url="http://tickwork.test") as other:
        yield guesser, other


async def fail_sign_ins(client: httpx.AsyncClient, n: int) -> None:
    for _ in range(n):
        r = await client.post("/session", json={"token": "a guess"})
        assert r.status_code == 401, r.text


def assert_throttled(r: httpx.Response, *, window_s: int = 60) -> None:
    assert r.status_code == 429, r.text
    assert 1 <= int(r.headers["retry-after"]) <= window_s
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-security-policy"]  # refusals are hardened like the rest


def test_five_failed_sign_ins_throttle_that_address_only(
        runtime: Runtime, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with clients(create_app(runtime)) as (guesser, other):
            with caplog.at_level(logging.WARNING, logger="tickwork.dashboard"):
                await fail_sign_ins(guesser, throttle.FAILURES)
            r = await guesser.post("/session", json={"token": "another guess"})
            assert_throttled(r)
            assert r.json() == {"error": "too many failed sign-ins from this address: try "
                                         f"again in {r.headers['retry-after']} s"}
            # While throttled, the right token is refused too: the answer says nothing.
            assert_throttled(await guesser.post("/session", json={"token": "test-token"}))
            form = await guesser.post("/session", data={"token": "test-token", "next": "/"})
            assert_throttled(form)
            assert form.headers["content-type"].startswith("text/plain")
            assert "try again in" in form.text
            # Reading stays open to that address, and other addresses sign in as usual.
            assert (await guesser.get("/api/stacks")).status_code == 200
            assert (await guesser.get("/")).status_code == 200
            assert (await other.post("/session", json={"token": "test-token"})
                    ).status_code == 200
        said = [r.getMessage() for r in caplog.records if "failed sign-ins" in r.getMessage()]
        assert said == [f"5 failed sign-ins from {GUESSER} within 60 s: its attempts are "
                        "refused until they are older"]

    asyncio.run(scenario())


def test_wrong_bearer_tokens_count_and_are_throttled_with_sign_ins(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with clients(create_app(runtime)) as (guesser, other):
            await fail_sign_ins(guesser, 2)
            for _ in range(throttle.FAILURES - 2):
                r = await guesser.post("/api/stacks", json={"name": "x"}, headers=WRONG)
                assert r.status_code == 401
            for method, path in (("POST", "/api/stacks"), ("DELETE", "/api/stacks/1"),
                                 ("POST", "/api/stacks/play-all")):
                assert_throttled(await guesser.request(method, path, headers=ADMIN))
                assert_throttled(await guesser.request(method, path, headers=WRONG))
            # Writes without a token are not guesses: they get the usual 401.
            assert (await guesser.post("/api/stacks", json={"name": "x"})).status_code == 401
            r = await other.post("/api/stacks", json={"name": "x"}, headers=ADMIN)
            assert r.status_code == 201, r.text
            # Reads carrying a token are not checked, so not throttled either.
            assert (await guesser.get("/api/stacks", headers=WRONG)).status_code == 200

    asyncio.run(scenario())


def test_successes_neither_count_nor_are_refused(runtime: Runtime) -> None:
    async def scenario() -> None:
        async with clients(create_app(runtime)) as (guesser, _):
            for n in range(3 * throttle.FAILURES):
                r = await guesser.post("/session", json={"token": "test-token"})
                assert r.status_code == 200
                r = await guesser.post("/api/stacks", json={"name": f"s{n}"}, headers=ADMIN)
                assert r.status_code == 201
            await fail_sign_ins(guesser, throttle.FAILURES - 1)
            assert (await guesser.post("/session", json={"token": "test-token"})
                    ).status_code == 200
            assert (await guesser.post("/session", json={"token": "guess"})).status_code == 401
            assert_throttled(await guesser.post("/session", json={"token": "guess"}))

    asyncio.run(scenario())


def test_the_address_may_try_again_once_the_window_has_passed(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throttle, "WINDOW_S", 1)  # the counts live on the wall clock

    async def scenario() -> None:
        async with clients(create_app(runtime)) as (guesser, _):
            await fail_sign_ins(guesser, throttle.FAILURES)
            assert_throttled(await guesser.post("/session", json={"token": "test-token"}),
                             window_s=1)

            async def signed_in() -> bool:
                r = await guesser.post("/session", json={"token": "test-token"})
                assert r.status_code in (200, 429), r.text
                return r.status_code == 200

            await wait_for(signed_in, timeout=10, what="the window to pass")

    asyncio.run(scenario())


def test_dashboard_processes_share_the_counts_through_redis(
        private_redis: PrivateRedis, tmp_path: Any) -> None:
    """Behind a load balancer, a guesser's attempts spread over the dashboards still add up;
    with Redis away each process counts its own, and nobody waits on Redis."""
    settings = make_settings(f"sqlite:///{tmp_path / 'tickwork.db'}",
                             redis_url=private_redis.url)
    rt = Runtime.build(settings, FakeClock(1_800_000_000.0), env={})

    async def scenario() -> None:
        async with clients(create_app(rt)) as (one, _), clients(create_app(rt)) as (two, _):
            await fail_sign_ins(one, 3)
            await fail_sign_ins(two, throttle.FAILURES - 3)
            assert_throttled(await one.post("/session", json={"token": "test-token"}))
            assert_throttled(await two.post("/session", json={"token": "test-token"}))

            private_redis.stop()
            began = time.monotonic()
            # No Redis: the count starts again in each process, with the same limit.
            await fail_sign_ins(one, throttle.FAILURES)
            assert_throttled(await one.post("/session", json={"token": "test-token"}))
            assert (await two.post("/session", json={"token": "test-token"})
                    ).status_code == 200
            assert time.monotonic() - began < 5  # Redis asked at most once per process

    try:
        asyncio.run(scenario())
    finally:
        rt.close()
