"""Drains and leases: a stopping worker hands its ticks back without using an attempt, and a
tick whose lease is gone (run out while heartbeats fail, or taken by another worker) stops
before it spends anything more."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from orchestrator.runner import LeaseLost
from orchestrator.store.reasons import REASON_LEASE_FAILED, REASON_RELEASED
from orchestrator.worker import Lease, Worker, WorkerConfig
from schema import tables as t
from schema.clock import FakeClock
from tests.conftest import wait_for
from tests.engine_helpers import (
    GatedLLM,
    ScriptedLLM,
    build_runtime,
    events_of,
    new_stack,
    raw_claim,
    reap,
    run_queued,
    seed_of,
    steps_of,
    tick_row,
    ticks_of,
)

LEASE_S = 30.0


def db_down(*args: Any, **kwargs: Any) -> Any:
    raise OperationalError("UPDATE ticks", {}, Exception("server closed the connection"))


async def failing_heartbeat(*args: Any, **kwargs: Any) -> set[tuple[int, int]]:
    db_down()
    return set()


def at(agent: str) -> Any:
    return lambda r: seed_of(r)[2] == agent


def test_a_drain_releases_the_tick_without_using_an_attempt(db_url: str,
                                                            clock: FakeClock) -> None:
    first = GatedLLM(clock, holds=at("builder"))
    with build_runtime(db_url, clock, llm=first) as rt:
        sid = new_stack(rt.db, clock, "a")

        async def drain() -> None:
            await rt.worker.claim_once()
            await wait_for(lambda: first.waiting_for("builder"), what="step 2 under way")
            await rt.worker.drain(grace_s=0)

        asyncio.run(drain())
        (tick,) = ticks_of(rt.db, sid)
        assert (tick["status"], tick["attempt"], tick["released"]) == ("queued", 2, 1)
        assert tick["reason"] == REASON_RELEASED and "released" in tick["reason"]
        assert tick["worker_id"] is None and tick["lease_expires_at"] is None
        assert [(s["agent"], s["attempt"]) for s in steps_of(rt.db, tick["id"])] == [
            ("planner", 1)]
        assert rt.worker.running == 0
        assert asyncio.run(rt.worker.claim_once()) == []  # a drained worker claims no more
        assert first.agents_called() == ["planner", "builder"]

        second = ScriptedLLM(clock)
        with build_runtime(db_url, clock, llm=second) as other:
            claimed = asyncio.run(run_queued(other))
            assert [(c.id, c.attempt) for c in claimed] == [(tick["id"], 2)]
        # The journaled planner step is replayed, not asked again.
        assert second.agents_called() == ["builder", "communicator", "reviewer"]
        assert first.agents_called() == ["planner", "builder"]
        row = tick_row(rt.db, tick["id"])
        assert (row["status"], row["attempt"], row["released"]) == ("succeeded", 2, 1)
        assert [(s["agent"], s["attempt"]) for s in steps_of(rt.db, tick["id"])] == [
            ("planner", 1), ("builder", 2), ("communicator", 2), ("reviewer", 2)]


def test_drains_never_use_up_a_ticks_attempts(db_url: str, clock: FakeClock) -> None:
    llm = GatedLLM(clock)  # every call waits: each worker is drained mid-step
    with build_runtime(db_url, clock, llm=llm, max_attempts=2) as rt:
        sid = new_stack(rt.db, clock, "a")
        (tick,) = ticks_of(rt.db, sid)

        async def drain_three_times() -> None:
            for n in range(1, 4):
                worker = Worker(rt.store, rt.runner, rt.bus, clock,
                                WorkerConfig(lease_s=LEASE_S))
                assert [c.attempt for c in await worker.claim_once()] == [n]
                await wait_for(lambda: len(llm.waiting) == 1, what=f"drain {n} under way")
                await worker.drain(grace_s=0)
                row = tick_row(rt.db, tick["id"])
                assert (row["status"], row["attempt"], row["released"]) == ("queued", n + 1, n)

        asyncio.run(drain_three_times())
        # Three drains, more than max_attempts: the next lease expiry still requeues it.
        (c,) = asyncio.run(raw_claim(rt.db, clock, "w-gone"))
        assert c.attempt == 4
        clock.advance(LEASE_S + 1)
        assert asyncio.run(reap(rt)) == (1, 0, 0)
        row = tick_row(rt.db, tick["id"])
        assert (row["status"], row["attempt"], row["released"]) == ("queued", 5, 3)
        # Its second real attempt is its last: the drains did not count.
        (c,) = asyncio.run(raw_claim(rt.db, clock, "w-gone-too"))
        clock.advance(LEASE_S + 1)
        assert asyncio.run(reap(rt)) == (0, 1, 0)
        row = tick_row(rt.db, tick["id"])
        assert (row["status"], row["reason"]) == ("failed", REASON_LEASE_FAILED)


def test_a_lease_run_out_while_heartbeats_fail_stops_the_tick(
        db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = GatedLLM(clock, holds=at("builder"))
    with build_runtime(db_url, clock, llm=llm, lease_s=LEASE_S) as rt:
        sid = new_stack(rt.db, clock, "a")

        async def main() -> None:
            await rt.worker.claim_once()
            await wait_for(lambda: llm.waiting_for("builder"), what="step 2 under way")
            monkeypatch.setattr(rt.store, "heartbeat", failing_heartbeat)
            clock.advance(LEASE_S - 1)  # heartbeats fail, but the lease still holds
            with pytest.raises(OperationalError):
                await rt.worker.heartbeat_once()
            await asyncio.sleep(0)
            assert rt.worker.running == 1 and llm.waiting_for("builder")
            clock.advance(2)  # now it has run out
            with pytest.raises(OperationalError):
                await rt.worker.heartbeat_once()
            await wait_for(lambda: rt.worker.running == 0, what="the tick to stop")
            llm.release()
            await asyncio.sleep(0)

        (tick,) = ticks_of(rt.db, sid)
        asyncio.run(main())
        assert llm.agents_called() == ["planner", "builder"]  # nothing after the lease ran out
        assert [s["agent"] for s in steps_of(rt.db, tick["id"])] == ["planner"]
        kinds = [e["kind"] for e in events_of(rt.db, tick_id=tick["id"])]
        assert kinds == ["tick.queued", "tick.started", "step.finished"]
        # Not failed by the worker: the reaper hands it on.
        assert tick_row(rt.db, tick["id"])["status"] == "running"
        assert asyncio.run(reap(rt)) == (1, 0, 0)
        assert tick_row(rt.db, tick["id"])["attempt"] == 2


def test_an_expired_lease_refuses_the_next_llm_call(db_url: str, clock: FakeClock) -> None:
    llm = ScriptedLLM(clock)
    with build_runtime(db_url, clock, llm=llm) as rt:
        sid = new_stack(rt.db, clock, "a")
        (tick,) = asyncio.run(raw_claim(rt.db, clock))
        lease = Lease(clock, LEASE_S, clock.monotonic())
        clock.advance(LEASE_S)
        assert not lease.valid()
        with pytest.raises(LeaseLost):
            asyncio.run(rt.runner.run(tick, lease=lease))
        assert llm.calls == []
        assert steps_of(rt.db, tick.id) == []
        assert ticks_of(rt.db, sid)[0]["status"] == "running"


def test_a_tick_another_worker_holds_now_is_stopped_at_the_next_heartbeat(
        db_url: str, clock: FakeClock) -> None:
    llm = GatedLLM(clock, holds=at("planner"))
    with build_runtime(db_url, clock, llm=llm) as rt:
        sid = new_stack(rt.db, clock, "a")
        (tick,) = ticks_of(rt.db, sid)
        other = Worker(rt.store, rt.runner, rt.bus, clock, WorkerConfig(lease_s=LEASE_S))

        async def main() -> None:
            await rt.worker.claim_once()
            await wait_for(lambda: len(llm.waiting) == 1, what="attempt 1 under way")
            stale = llm.waiting[0]
            # The database's lease ran out (its clock, not ours): the reaper hands it on.
            with rt.db.write() as conn:
                conn.execute(update(t.ticks).where(t.ticks.c.id == tick["id"])
                             .values(lease_expires_at=clock.now() - 1))
            assert await reap(rt) == (1, 0, 0)
            assert [c.attempt for c in await other.claim_once()] == [2]
            await wait_for(lambda: len(llm.waiting) == 2, what="attempt 2 under way")
            assert rt.worker.running == 1  # attempt 1 goes on: its own lease looks valid
            await rt.worker.heartbeat_once()
            await wait_for(lambda: rt.worker.running == 0, what="attempt 1 to stop")
            assert stale not in llm.waiting and len(llm.waiting) == 1  # only attempt 2 waits
            assert other.running == 1
            llm.release()
            await wait_for(lambda: other.running == 0, what="attempt 2 to finish")

        asyncio.run(main())
        row = tick_row(rt.db, tick["id"])
        assert (row["status"], row["attempt"]) == ("succeeded", 2)
        assert [s["attempt"] for s in steps_of(rt.db, tick["id"])] == [2, 2, 2, 2]
        # Attempt 1 made no call after its planner's, which it never got an answer to.
        assert llm.agents_called() == ["planner", "planner", "builder", "communicator",
                                       "reviewer"]
