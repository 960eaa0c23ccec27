"""GET /api/stacks/{id}/series: the Stack page's charts, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import insert, update

from orchestrator.runtime import Runtime
from schema import tables as t
from schema.clock import FakeClock
from tests.engine_helpers import new_stack
from tests.test_charts import NOW, add_tick, get

DAY = 86_400
TODAY = int(NOW // DAY)


def stack_series(rt: Runtime, stack: int, query: str = "") -> dict[str, Any]:
    r = asyncio.run(get(rt, f"/api/stacks/{stack}/series{query}"))
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture
def stacks(runtime: Runtime, clock: FakeClock) -> tuple[int, int]:
    clock.set(NOW)
    return (new_stack(runtime.db, clock, "alpha", paused=True),
            new_stack(runtime.db, clock, "beta", paused=True))


def test_durations_of_the_last_ticks_that_ran(runtime: Runtime, stacks: tuple[int, int]
                                              ) -> None:
    alpha, beta = stacks
    s = NOW - 1000
    with runtime.db.write() as conn:
        first = add_tick(conn, alpha, scheduled=s, late_ms=0.0, finished=s + 1.5)
        add_tick(conn, alpha, scheduled=s + 10, finished=s + 10, status="skipped")
        failed = add_tick(conn, alpha, scheduled=s + 20, late_ms=0.0, finished=s + 20.25,
                          status="failed")
        add_tick(conn, alpha, scheduled=s + 30, finished=s + 30, status="cancelled")
        late = add_tick(conn, alpha, scheduled=s + 40, late_ms=500.0, finished=s + 340.5,
                        status="timed_out")
        add_tick(conn, beta, scheduled=s + 50, late_ms=0.0, finished=s + 99)  # another stack
        add_tick(conn, alpha, scheduled=s + 60, late_ms=0.0, status="running")

    ticks = stack_series(runtime, alpha)["ticks"]
    assert ticks["tick_id"] == [first, failed, late]
    assert ticks["t"] == [pytest.approx(s), pytest.approx(s + 20), pytest.approx(s + 40.5)]
    assert ticks["status"] == ["succeeded", "failed", "timed_out"]
    assert ticks["duration_ms"] == [pytest.approx(1500.0), pytest.approx(250.0),
                                    pytest.approx(300_000.0)]
    last_two = stack_series(runtime, alpha, "?ticks=2")["ticks"]
    assert last_two["tick_id"] == [failed, late]


def test_the_durations_follow_the_claims_not_the_ids(runtime: Runtime,
                                                     stacks: tuple[int, int]) -> None:
    """A tick claimed again after its lease ran out starts after a newer one: the chart's
    x axis still runs forwards."""
    alpha, _ = stacks
    with runtime.db.write() as conn:
        older = add_tick(conn, alpha, scheduled=NOW - 100, late_ms=50_000.0, finished=NOW - 40)
        newer = add_tick(conn, alpha, scheduled=NOW - 90, late_ms=0.0, finished=NOW - 80)
    ticks = stack_series(runtime, alpha)["ticks"]
    assert ticks["tick_id"] == [newer, older]
    assert ticks["t"] == sorted(ticks["t"])


def test_tokens_and_cost_per_utc_day(runtime: Runtime, stacks: tuple[int, int]) -> None:
    alpha, beta = stacks
    with runtime.db.write() as conn:
        for stack, day, tokens, cost in [(alpha, TODAY, 1200, 0.012), (alpha, TODAY - 2, 300, 0.5),
                                         (alpha, TODAY - 30, 999, 9.0),  # a day too old
                                         (beta, TODAY, 77, 7.0)]:
            conn.execute(insert(t.stack_usage).values(
                stack_id=stack, day=day, input_tokens=tokens, output_tokens=tokens // 2,
                cost_usd=cost, llm_calls=4))

    usage = stack_series(runtime, alpha)["usage"]
    assert usage["day"] == list(range(TODAY - 29, TODAY + 1))
    assert usage["t"] == [float(d * DAY) for d in usage["day"]]
    assert usage["input_tokens"] == [0] * 27 + [300, 0, 1200]
    assert usage["output_tokens"] == [0] * 27 + [150, 0, 600]
    assert usage["cost_usd"] == [0.0] * 27 + [pytest.approx(0.5), 0.0, pytest.approx(0.012)]
    assert usage["llm_calls"] == [0] * 27 + [4, 0, 4]
    week = stack_series(runtime, alpha, "?days=7")["usage"]
    assert week["day"][0] == TODAY - 6 and len(week["cost_usd"]) == 7


def test_a_stack_with_nothing_yet(runtime: Runtime, stacks: tuple[int, int]) -> None:
    body = stack_series(runtime, stacks[0])
    assert body["stack_id"] == stacks[0] and body["now"] == NOW
    assert body["ticks"] == {"t": [], "tick_id": [], "status": [], "duration_ms": []}
    assert body["usage"]["cost_usd"] == [0.0] * 30


def test_an_unknown_or_deleted_stack_is_404(runtime: Runtime, stacks: tuple[int, int]
                                            ) -> None:
    r = asyncio.run(get(runtime, "/api/stacks/999/series"))
    assert r.status_code == 404
    assert r.json() == {"error": "no stack with id 999"}
    with runtime.db.write() as conn:
        conn.execute(update(t.stacks).where(t.stacks.c.id == stacks[1]).values(deleted_at=NOW))
    r = asyncio.run(get(runtime, f"/api/stacks/{stacks[1]}/series"))
    assert r.status_code == 404
    assert r.json() == {"error": f"no stack with id {stacks[1]}"}


@pytest.mark.parametrize(("query", "field"), [
    ("?ticks=0", "query.ticks"), ("?ticks=201", "query.ticks"), ("?ticks=x", "query.ticks"),
    ("?days=0", "query.days"), ("?days=91", "query.days")])
def test_bounds_are_refused(runtime: Runtime, stacks: tuple[int, int], query: str,
                            field: str) -> None:
    r = asyncio.run(get(runtime, f"/api/stacks/{stacks[0]}/series{query}"))
    assert r.status_code == 422
    assert [d["field"] for d in r.json()["detail"]] == [field]


@pytest.mark.parametrize("path", ["/api/stacks/0/series", "/api/stacks/2147483648/series"])
def test_a_stack_id_out_of_range_is_refused(runtime: Runtime, path: str) -> None:
    r = asyncio.run(get(runtime, path))
    assert r.status_code == 422
    assert [d["field"] for d in r.json()["detail"]] == ["path.stack_id"]
