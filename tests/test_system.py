"""The System page and /api/system/health: lateness, throughput, queue, workers, providers."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from agents.llm.breaker import Permit
from dashboard.api import create_app
from orchestrator.runtime import Runtime
from orchestrator.store import queue
from schema import tables as t
from schema.clock import FakeClock
from tests.conftest import make_settings, wait_for
from tests.engine_helpers import new_stack, settle

HOSTILE = "<img src=x onerror=alert(1)>"
GROQ_KEY = "gsk-very-secret-key-value"
OPENAI_KEY = "sk-very-secret-key-value"


async def get(rt: Runtime, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
        r = await client.get(path)
    assert r.status_code == 200, r.text
    return r


@pytest.fixture
def chained(db_url: str, clock: FakeClock) -> Iterator[Runtime]:
    """A runtime whose chain has real providers (keys set; nothing is called) and a model
    name that is hostile HTML."""
    settings = make_settings(db_url, llm_chain=f"groq:{HOSTILE},openai:gpt-4o-mini")
    rt = Runtime.build(settings, clock, env={"GROQ_API_KEY": GROQ_KEY,
                                             "OPENAI_API_KEY": OPENAI_KEY})
    try:
        yield rt
    finally:
        if rt.chain is not None:
            asyncio.run(rt.chain.aclose())
        rt.close()


def trip(rt: Runtime) -> None:
    """Open the first provider's breaker, as consecutive failures would."""
    assert rt.chain is not None
    breaker = rt.chain.providers[0].breaker
    for _ in range(breaker.threshold):
        asyncio.run(breaker.failed(Permit.CALL))


def test_health_json_shows_breakers_headroom_and_workers(chained: Runtime,
                                                         clock: FakeClock) -> None:
    trip(chained)
    stack = new_stack(chained.db, clock, "alpha")
    with chained.db.write() as conn:  # another worker holds the stack's tick
        [claimed] = queue.claim(conn, "w-elsewhere", 10, clock.now(), 30.0)
    assert claimed.stack_id == stack

    body = asyncio.run(get(chained, "/api/system/health")).json()
    assert body["simulated"] is False
    assert body["tick_interval"] == 10
    groq, openai = body["providers"]
    assert (groq["name"], groq["model"]) == ("groq", HOSTILE)
    assert groq["breaker"]["state"] == "open"
    assert groq["breaker"]["failures"] == 5
    assert groq["breaker"]["probe_in_s"] == pytest.approx(30.0)
    assert openai["breaker"] == {"state": "closed", "failures": 0, "opened_at": None,
                                 "probe_in_s": None, "probing": False}
    assert groq["headroom"]["requests_left"] == 30  # the configured 30 rpm, none used
    assert groq["headroom"]["rpm"] == 30 and groq["headroom"]["tpm"] == 12_000
    assert openai["headroom"]["requests_left"] is None  # no configured or reported limit
    assert body["worker"] == {"id": chained.worker.id, "running": 0,
                              "concurrency_limit": chained.settings.max_concurrent_ticks}
    assert body["workers"] == [{"id": "w-elsewhere", "running": 1}]
    assert body["running"] == 1 and body["queue_depth"] == 0
    text = str(body)
    assert GROQ_KEY not in text and OPENAI_KEY not in text


def test_health_json_after_a_tick(runtime: Runtime, clock: FakeClock) -> None:
    async def scenario() -> dict[str, Any]:
        new_stack(runtime.db, clock, "alpha")
        settle(runtime.db, clock)
        clock.set((clock.now() // 10 + 1) * 10 + 0.03)
        await runtime.beat.fire()
        assert await runtime.worker.claim_once()
        await wait_for(lambda: runtime.worker.finished == 1, what="the tick to finish")
        return (await get(runtime, "/api/system/health")).json()

    body = asyncio.run(scenario())
    assert body["simulated"] is True and "simulated" in body["llm"]
    assert body["providers"] == []  # no provider key: the simulated model serves
    assert body["lateness"] == {"p50_ms": pytest.approx(30.0), "p99_ms": pytest.approx(30.0),
                                "samples": 1}
    assert body["lateness_all"]["samples"] == 1
    assert body["lateness_all"]["p99_ms"] == pytest.approx(30.0)
    # the start of work: its first step began when it was claimed (the fake clock stood still)
    assert body["work_lateness"] == {"p50_ms": pytest.approx(30.0),
                                     "p99_ms": pytest.approx(30.0), "samples": 1}
    assert body["work_lateness_all"] == body["work_lateness"]
    assert body["ticks_per_s"] == pytest.approx(1 / 60)
    assert body["ticks_per_s_all"] == pytest.approx(2 / 60)  # the settled start tick too
    [fire] = body["beat_fires"]
    assert fire["queued"] == 1 and fire["skipped"] == 0
    assert body["beat_last_slot"] == fire["slot"]
    [sim] = body["recent_attempts"]
    assert sim == {"provider": "sim", "attempts": 4, "ok": 4, "ok_share": 1.0,
                   "statuses": {"ok": 4}}


def test_system_page_shows_provider_health_and_escapes_everything(chained: Runtime,
                                                                  clock: FakeClock) -> None:
    trip(chained)
    new_stack(chained.db, clock, "alpha")
    with chained.db.write() as conn:
        [claimed] = queue.claim(conn, HOSTILE, 10, clock.now(), 30.0)
        step = conn.execute(insert(t.steps).values(
            tick_id=claimed.id, index=0, agent="planner", status="succeeded", attempt=1,
            started_at=clock.now()).returning(t.steps.c.id)).scalar_one()
        conn.execute(insert(t.llm_attempts).values(
            step_id=step, tick_id=claimed.id, seq=0, provider=HOSTILE, model="m",
            status="ok", latency_ms=1.0, started_at=clock.now()))

    page = asyncio.run(get(chained, "/system"))
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "<img" not in text  # the hostile worker id, provider and model show as text
    assert html.escape(HOSTILE) in text
    assert text.count(html.escape(HOSTILE)) >= 3
    assert 'class="badge failed">open<' in text  # groq's breaker
    assert 'class="badge ok">closed<' in text  # openai's
    assert "30 / 30" in text  # requests left of the configured rpm
    assert "12000 / 12000" in text
    assert "simulated" not in text.split("<main>", 1)[-1].split("Providers")[0]
    assert GROQ_KEY not in text and OPENAI_KEY not in text


def test_system_page_says_when_the_model_is_simulated(runtime: Runtime) -> None:
    text = asyncio.run(get(runtime, "/system")).text
    assert '<span class="badge simulated">simulated</span>' in text
    assert html.escape(runtime.llm_label) in text
    assert "the simulated model answers every call" in text
    assert runtime.worker.id in text
