"""GET /api/system/series: the System page's charts, per minute, on SQLite and PostgreSQL.

Ticks and LLM attempts are written with known times around a fake clock standing 30 s into a
minute, and each figure is checked in its minute.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, insert

from dashboard.api import create_app
from orchestrator.runtime import Runtime
from schema import tables as t
from schema.clock import FakeClock
from tests.conftest import wait_for
from tests.engine_helpers import new_stack, settle

MINUTE = 1_800_000_000.0  # the start of the fake clock's current minute (a multiple of 60)
NOW = MINUTE + 30.0
_slots = itertools.count(1)


async def get(rt: Runtime, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
        return await client.get(path)


def series(rt: Runtime, query: str = "?minutes=3") -> dict[str, Any]:
    r = asyncio.run(get(rt, f"/api/system/series{query}"))
    assert r.status_code == 200, r.text
    return r.json()


def add_tick(conn: Connection, stack: int, *, scheduled: float, late_ms: float | None = None,
             finished: float | None = None, status: str = "succeeded",
             trigger: str = "beat") -> int:
    started = None if late_ms is None else scheduled + late_ms / 1000
    return int(conn.execute(insert(t.ticks).values(
        stack_id=stack, slot=next(_slots) if trigger == "beat" else None,
        scheduled_at=scheduled, trigger=trigger, status=status, queued_at=scheduled,
        started_at=started, finished_at=finished).returning(t.ticks.c.id)).scalar_one())


def add_step(conn: Connection, tick: int, index: int, *attempts: tuple[str, str, float]) -> None:
    """A step of `tick` with its attempts, in order: (provider, status, started_at)."""
    step = conn.execute(insert(t.steps).values(
        tick_id=tick, index=index, agent="planner", status="succeeded", attempt=1,
        started_at=attempts[0][2]).returning(t.steps.c.id)).scalar_one()
    for seq, (provider, status, started) in enumerate(attempts):
        conn.execute(insert(t.llm_attempts).values(
            step_id=step, tick_id=tick, seq=seq, provider=provider, model="m", status=status,
            latency_ms=1.0, started_at=started))


@pytest.fixture
def stack(runtime: Runtime, clock: FakeClock) -> int:
    clock.set(NOW)
    return new_stack(runtime.db, clock, "alpha", paused=True)


def test_beat_lateness_p50_and_p99_per_minute_of_the_slot(runtime: Runtime, stack: int) -> None:
    with runtime.db.write() as conn:
        for late in (30.0, 10.0, 400.0, 20.0):  # two minutes ago
            add_tick(conn, stack, scheduled=MINUTE - 120 + 10, late_ms=late)
        add_tick(conn, stack, scheduled=MINUTE - 60, late_ms=5.0)  # a minute ago
        for late in range(100, 0, -1):  # this minute: 1..100 ms
            add_tick(conn, stack, scheduled=MINUTE + 20, late_ms=float(late))
        # not beat lateness: a tick run by hand, one before the window, one not yet claimed
        add_tick(conn, stack, scheduled=MINUTE - 60, late_ms=9_999.0, trigger="manual")
        add_tick(conn, stack, scheduled=MINUTE - 180, late_ms=9_999.0)
        add_tick(conn, stack, scheduled=MINUTE + 25, status="queued")

    body = series(runtime)
    assert body["t"] == [MINUTE - 120, MINUTE - 60, MINUTE]
    assert body["step_s"] == 60 and body["now"] == NOW
    # nearest rank: ceil(q * n / 100)-th smallest, as orchestrator.stats.percentile
    assert body["lateness_p50_ms"] == [pytest.approx(20.0), pytest.approx(5.0),
                                       pytest.approx(50.0)]
    assert body["lateness_p99_ms"] == [pytest.approx(400.0), pytest.approx(5.0),
                                       pytest.approx(99.0)]
    assert body["lateness_samples"] == [4, 1, 100]


def test_an_empty_minute_has_no_lateness_and_no_ticks(runtime: Runtime, stack: int) -> None:
    body = series(runtime, "?minutes=60")
    assert len(body["t"]) == 60 and body["t"][-1] == MINUTE and body["t"][0] == MINUTE - 3540
    assert body["lateness_p50_ms"] == [None] * 60 and body["lateness_p99_ms"] == [None] * 60
    assert body["ticks_finished"] == [0] * 60 and body["ticks_per_s"] == [0.0] * 60
    assert body["llm_calls"] == []
    assert series(runtime, "")["t"] == body["t"]  # an hour unless asked


def test_ticks_finished_per_second_of_each_minute(runtime: Runtime, stack: int) -> None:
    with runtime.db.write() as conn:
        for status in ("succeeded", "failed", "timed_out"):  # two minutes ago
            add_tick(conn, stack, scheduled=MINUTE - 125, late_ms=1.0,
                     finished=MINUTE - 100, status=status)
        add_tick(conn, stack, scheduled=MINUTE - 100, finished=MINUTE - 99,
                 status="cancelled")
        for _ in range(2):  # this minute, 30 s of it gone
            add_tick(conn, stack, scheduled=MINUTE - 5, late_ms=1.0, finished=MINUTE + 1)
        # not counted: a skip, a tick that finished before the window, one still running
        add_tick(conn, stack, scheduled=MINUTE, finished=MINUTE, status="skipped")
        add_tick(conn, stack, scheduled=MINUTE - 300, late_ms=1.0, finished=MINUTE - 181)
        add_tick(conn, stack, scheduled=MINUTE, late_ms=1.0, status="running")

    body = series(runtime)
    assert body["ticks_finished"] == [4, 0, 2]
    assert body["ticks_per_s"] == [pytest.approx(4 / 60, abs=1e-6), 0.0,
                                   pytest.approx(2 / 30, abs=1e-6)]


def test_llm_calls_by_provider_and_outcome(runtime: Runtime, stack: int) -> None:
    two, one, this = MINUTE - 110, MINUTE - 50, MINUTE + 10
    with runtime.db.write() as conn:
        tick = add_tick(conn, stack, scheduled=MINUTE - 120, late_ms=1.0, finished=NOW)
        # a 429 from groq, then openai serves the step: a fallback
        add_step(conn, tick, 0, ("groq", "rate_limited", two), ("openai", "ok", two + 1))
        # groq's breaker is open: skipped (no call), openai serves: still a fallback
        add_step(conn, tick, 1, ("groq", "skipped_open_breaker", one), ("openai", "ok", one))
        # groq fails twice and then serves the step itself: errors, then ok (no fallback)
        add_step(conn, tick, 2, ("groq", "server_error", this), ("groq", "timeout", this),
                 ("groq", "ok", this + 1))
        add_step(conn, tick, 3, ("groq", "ok", this))
        add_step(conn, tick, 4, ("openai", "invalid_output", this))
        add_step(conn, tick, 5, ("groq", "ok", MINUTE - 200))  # before the window

    calls = {(c["provider"], c["outcome"]): c["calls"] for c in series(runtime)["llm_calls"]}
    assert calls == {
        ("groq", "ok"): [0, 0, 2],
        ("groq", "rate_limited"): [1, 0, 0],
        ("groq", "error"): [0, 0, 2],
        ("openai", "fallback"): [1, 1, 0],
        ("openai", "error"): [0, 0, 1],
    }
    order = [(c["provider"], c["outcome"]) for c in series(runtime)["llm_calls"]]
    assert order == [("groq", "ok"), ("groq", "rate_limited"), ("groq", "error"),
                     ("openai", "fallback"), ("openai", "error")]


def test_a_tick_run_by_the_engine_shows_in_its_minute(runtime: Runtime, clock: FakeClock
                                                      ) -> None:
    async def scenario() -> dict[str, Any]:
        new_stack(runtime.db, clock, "alpha")
        settle(runtime.db, clock)  # the start tick, finished at once
        clock.set(MINUTE + 10.03)  # 30 ms after the beat's slot
        await runtime.beat.fire()
        assert await runtime.worker.claim_once()
        await wait_for(lambda: runtime.worker.finished == 1, what="the tick to finish")
        clock.set(NOW)
        r = await get(runtime, "/api/system/series?minutes=2")
        assert r.status_code == 200, r.text
        return r.json()

    body = asyncio.run(scenario())
    assert body["lateness_p50_ms"] == [None, pytest.approx(30.0)]
    assert body["lateness_samples"] == [0, 1]
    assert body["ticks_finished"] == [0, 2]  # the start tick as well
    [sim] = body["llm_calls"]
    assert (sim["provider"], sim["outcome"], sim["calls"]) == ("sim", "ok", [0, 4])


@pytest.mark.parametrize("query", ["?minutes=0", "?minutes=361", "?minutes=-5",
                                   "?minutes=ten", "?minutes=1.5"])
def test_minutes_out_of_bounds_are_refused(runtime: Runtime, query: str) -> None:
    r = asyncio.run(get(runtime, f"/api/system/series{query}"))
    assert r.status_code == 422
    body = r.json()
    assert body["error"] == "invalid request"
    assert [d["field"] for d in body["detail"]] == ["query.minutes"]


def test_the_series_are_documented(runtime: Runtime) -> None:
    doc = asyncio.run(get(runtime, "/openapi.json")).json()
    system = doc["paths"]["/api/system/series"]["get"]
    assert system["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SystemSeries"}
    assert "422" in system["responses"]
    [minutes] = system["parameters"]
    assert minutes["schema"]["minimum"] == 1 and minutes["schema"]["maximum"] == 360
    stack = doc["paths"]["/api/stacks/{stack_id}/series"]["get"]
    assert stack["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StackSeries"}
    assert {"404", "422"} <= set(stack["responses"])
    limits = {p["name"]: p["schema"]["maximum"] for p in stack["parameters"]
              if p["in"] == "query"}
    assert limits == {"ticks": 200, "days": 90}
    fields = doc["components"]["schemas"]["SystemSeries"]["properties"]
    assert {"t", "lateness_p50_ms", "lateness_p99_ms", "ticks_per_s", "llm_calls"} <= set(fields)


def test_visitors_share_one_answer_for_two_seconds(runtime: Runtime, clock: FakeClock,
                                                   stack: int) -> None:
    async def scenario() -> list[int]:
        transport = httpx.ASGITransport(app=create_app(runtime))
        seen = []
        async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
            for tick in range(3):
                with runtime.db.write() as conn:
                    add_tick(conn, stack, scheduled=NOW - 5, late_ms=1.0, finished=NOW)
                answers = await asyncio.gather(*(client.get("/api/system/series?minutes=1")
                                                 for _ in range(3)))
                seen += [r.json()["ticks_finished"][-1] for r in answers]
                clock.advance(1.0 if tick == 0 else 2.0)
        return seen

    # the first answer is shared 1 s later; 2 s on, the next read sees every tick
    assert asyncio.run(scenario()) == [1, 1, 1, 1, 1, 1, 3, 3, 3]
