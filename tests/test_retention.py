"""Retention: finished ticks older than TICKWORK_RETENTION_DAYS go, with their steps, LLM
attempts and events; the ticks within the window, the per-stack daily usage and the tick
counts (the stack's counts, /metrics) stay. One process prunes at a time."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import pytest
from prometheus_client import generate_latest
from sqlalchemy import text

from dashboard.metrics import registry
from orchestrator import stacks
from orchestrator.retention import DAY_S, PAUSE_S, Retention, prune_batch
from orchestrator.runtime import Runtime
from schema import tables as t
from schema.clock import FakeClock
from schema.db import Database
from schema.read import get_stack
from tests.conftest import store_of
from tests.engine_helpers import (
    BEAT,
    ScriptedLLM,
    attempts_of,
    build_runtime,
    count_rows,
    events_of,
    new_stack,
    run_queued,
    settle,
    steps_of,
    ticks_of,
)

DAYS = 14


def succeeded_total(rt: Runtime) -> float:
    """`tickwork_ticks_total{status="succeeded"}` as /metrics shows it."""
    body = generate_latest(registry(rt, lambda: 0)).decode()
    (value,) = re.findall(r'^tickwork_ticks_total\{status="succeeded"\} (\S+)$', body, re.M)
    return float(value)


def stack_view(rt: Runtime, stack_id: int) -> dict[str, Any]:
    with rt.store.read() as conn:
        found = get_stack(conn, stack_id, BEAT, rt.registry.names(), now=rt.clock.now())
    assert found is not None
    return found.model_dump(include={"counts", "usage_total"})


def trace(db: Database, tick_id: int) -> tuple[int, int, int]:
    return (len(steps_of(db, tick_id)), len(attempts_of(db, tick_id)),
            len(events_of(db, tick_id=tick_id)))


async def prune(retention: Retention, clock: FakeClock, timeout: float = 10.0) -> int:
    """`prune_once`, moving the fake clock on through its pauses between batches."""
    task = asyncio.ensure_future(retention.prune_once())
    deadline = time.monotonic() + timeout
    while not task.done():
        assert time.monotonic() < deadline, "pruning did not finish"
        if clock.sleepers:
            clock.advance(PAUSE_S)
        await asyncio.sleep(0.001)
    return task.result()


def old_and_new(rt: Runtime, clock: FakeClock) -> tuple[list[int], list[int], int]:
    """Stack `a` with a tick 15 days old and one from today, stack `b` with an old one."""
    a, b = new_stack(rt.db, clock, "a"), new_stack(rt.db, clock, "b")
    old = [c.id for c in asyncio.run(run_queued(rt))]
    clock.advance(15 * DAY_S)
    with rt.store.write() as conn:
        stacks.run_now(conn, a, clock.now())
    (new,) = [c.id for c in asyncio.run(run_queued(rt))]
    assert all(r["status"] == "succeeded" for r in ticks_of(rt.db))
    assert [r["stack_id"] for r in ticks_of(rt.db)] == [a, b, a]
    return [a, b], old, new


def test_old_ticks_go_with_their_trace_and_the_counts_stay(db_url: str,
                                                           clock: FakeClock) -> None:
    with build_runtime(db_url, clock, llm=ScriptedLLM(clock)) as rt:
        (a, b), old, new = old_and_new(rt, clock)
        for tick_id in [*old, new]:
            steps, attempts, events = trace(rt.db, tick_id)
            assert steps == 4 and attempts >= 4 and events >= 6
        recent = trace(rt.db, new)
        before = {sid: stack_view(rt, sid) for sid in (a, b)}
        assert before[a]["counts"]["succeeded"] == 2
        assert before[a]["usage_total"]["llm_calls"] >= 8
        assert succeeded_total(rt) == 3
        artifacts = count_rows(rt.db, t.artifacts)

        assert asyncio.run(prune(Retention(rt.store, clock, days=DAYS), clock)) == 2

        assert [r["id"] for r in ticks_of(rt.db)] == [new]
        for tick_id in old:
            assert trace(rt.db, tick_id) == (0, 0, 0)
        cutoff = clock.now() - DAYS * DAY_S
        assert count_rows(rt.db, t.events, t.events.c.created_at < cutoff) == 0
        assert trace(rt.db, new) == recent
        assert {sid: stack_view(rt, sid) for sid in (a, b)} == before
        assert succeeded_total(rt) == 3
        assert count_rows(rt.db, t.artifacts) == artifacts  # the stack's work stays
        # Nothing left to prune: a second pass deletes nothing.
        assert asyncio.run(prune(Retention(rt.store, clock, days=DAYS), clock)) == 0


def test_ticks_within_the_window_stay(db_url: str, clock: FakeClock) -> None:
    with build_runtime(db_url, clock, llm=ScriptedLLM(clock)) as rt:
        new_stack(rt.db, clock, "a")
        (tick,) = [c.id for c in asyncio.run(run_queued(rt))]
        before = trace(rt.db, tick)
        clock.advance(13 * DAY_S)
        assert asyncio.run(prune(Retention(rt.store, clock, days=DAYS), clock)) == 0
        assert trace(rt.db, tick) == before
        assert [r["id"] for r in ticks_of(rt.db)] == [tick]


def test_zero_days_keeps_everything(db_url: str, clock: FakeClock) -> None:
    with build_runtime(db_url, clock, llm=ScriptedLLM(clock)) as rt:
        _, old, new = old_and_new(rt, clock)
        traces = {i: trace(rt.db, i) for i in [*old, new]}
        events = count_rows(rt.db, t.events)
        clock.advance(3650 * DAY_S)
        assert asyncio.run(prune(Retention(rt.store, clock, days=0), clock)) == 0
        assert {i: trace(rt.db, i) for i in [*old, new]} == traces
        assert count_rows(rt.db, t.events) == events


def test_small_batches_still_prune_every_old_tick(db_url: str, clock: FakeClock) -> None:
    with build_runtime(db_url, clock, llm=ScriptedLLM(clock)) as rt:
        ids = [new_stack(rt.db, clock, f"s{i}") for i in range(5)]
        old = [c.id for c in asyncio.run(run_queued(rt))]
        assert len(old) == 5
        clock.advance(15 * DAY_S)
        with rt.store.write() as conn:
            stacks.run_now(conn, ids[0], clock.now())
        (new,) = [c.id for c in asyncio.run(run_queued(rt))]
        recent = trace(rt.db, new)

        assert asyncio.run(prune(Retention(rt.store, clock, days=DAYS, batch=2), clock)) == 5

        assert [r["id"] for r in ticks_of(rt.db)] == [new]
        for tick_id in old:
            assert trace(rt.db, tick_id) == (0, 0, 0)
        cutoff = clock.now() - DAYS * DAY_S
        assert count_rows(rt.db, t.events, t.events.c.created_at < cutoff) == 0
        assert trace(rt.db, new) == recent


def test_one_pruner_at_a_time_on_postgres(db: Database, clock: FakeClock) -> None:
    if db.is_sqlite:
        pytest.skip("PostgreSQL's advisory lock; SQLite has one writer")
    new_stack(db, clock, "a")
    settle(db, clock)
    clock.advance(15 * DAY_S)
    cutoff = clock.now() - DAYS * DAY_S
    store = store_of(db)
    retention = Retention(store, clock, days=DAYS)
    with db.write() as holder:
        assert prune_batch(holder, 0.0) == 0  # holds the pruners' lock, deletes nothing
        with db.write() as other:
            assert prune_batch(other, cutoff) is None
            pid = other.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert pid != holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
        # Another process's pass leaves the old tick to the one pruning.
        assert asyncio.run(prune(retention, clock)) == 0
        assert len(ticks_of(db)) == 1
    assert asyncio.run(prune(retention, clock)) == 1
    assert ticks_of(db) == []
