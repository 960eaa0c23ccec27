"""The six invariants of docs/design.md's tick lifecycle, each on SQLite and on PostgreSQL.

Concurrency tests use two `Database` objects (two processes' worth of connections) and real
threads; on SQLite the writers serialise, on PostgreSQL they truly overlap. More of the same
elsewhere: beats racing from two processes (test_beat), workers claiming at once and stale
attempts (test_runner), random interleavings of all of it (test_stateful).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from agents.registry import DEFAULT_TEAM
from agents.team import StepResult
from orchestrator import stacks
from orchestrator.beat import Beat
from orchestrator.slots import slot_of
from orchestrator.store import journal, queue, steps
from orchestrator.worker import Worker, WorkerConfig
from schema import tables as t
from schema.clock import FakeClock
from schema.db import Database
from schema.outputs import PlannerOutput
from tests.conftest import store_of, wait_for
from tests.engine_helpers import (
    BEAT,
    GatedLLM,
    build_runtime,
    count_rows,
    event_kinds,
    in_threads,
    new_stack,
    no_running_past_lease,
    raw_claim,
    reap,
    seed_of,
    settle,
    stack_row,
    steps_of,
    tick_row,
    ticks_of,
)

# -- 1. at most one tick per (stack, slot) ---------------------------------------------------

def test_two_beats_firing_the_same_slot_insert_one_row_per_stack(
        db: Database, db_url: str, clock: FakeClock) -> None:
    ids = [new_stack(db, clock, f"s{i}") for i in range(3)]
    settle(db, clock)
    clock.advance(BEAT)
    other = Database(db_url)
    try:
        first, second = Beat(store_of(db), clock, BEAT), Beat(store_of(other), clock, BEAT)
        fired = asyncio.run(first.fire()), asyncio.run(second.fire())
    finally:
        other.close()
    slot = slot_of(clock.now(), BEAT)
    assert [(f.slot, f.queued) for f in fired[0]] == [(slot, 3)]
    assert [(f.slot, f.queued, f.skipped) for f in fired[1]] == [(slot, 0, 0)]
    for sid in ids:
        rows = [r for r in ticks_of(db, sid) if r["slot"] == slot]
        assert [r["status"] for r in rows] == ["queued"]
        assert event_kinds(db, rows[0]["id"]) == {"tick.queued": 1}


def test_the_database_refuses_a_second_row_for_a_stack_and_slot(db: Database,
                                                                clock: FakeClock) -> None:
    sid = new_stack(db, clock, "a")
    settle(db, clock)
    asyncio.run(Beat(store_of(db), clock, BEAT).fire())
    assert [r["slot"] for r in ticks_of(db, sid)] == [None, slot_of(clock.now(), BEAT)]
    with pytest.raises(IntegrityError), db.write() as conn:
        conn.execute(insert(t.ticks).values(
            stack_id=sid, slot=slot_of(clock.now(), BEAT), scheduled_at=clock.now(),
            trigger="beat", status="skipped", queued_at=clock.now()))


# -- 2. at most one running tick per stack ---------------------------------------------------

def test_the_database_refuses_a_second_active_tick(db: Database, clock: FakeClock) -> None:
    sid = new_stack(db, clock, "a")
    running = asyncio.run(raw_claim(db, clock))[0]
    clock.advance(BEAT)
    with db.write() as conn:
        queue.fan_out(conn, slot_of(clock.now(), BEAT), BEAT, clock.now())
    skipped = next(r for r in ticks_of(db, sid) if r["id"] != running.id)
    for status in ("running", "queued"):
        with pytest.raises(IntegrityError), db.write() as conn:
            conn.execute(update(t.ticks).where(t.ticks.c.id == skipped["id"])
                         .values(status=status))
    with pytest.raises(IntegrityError), db.write() as conn:
        conn.execute(insert(t.ticks).values(
            stack_id=sid, slot=None, scheduled_at=clock.now(), trigger="manual",
            status="queued", queued_at=clock.now()))
    assert [r["status"] for r in ticks_of(db, sid)] == ["running", "skipped"]


def test_fan_out_skips_a_stack_whose_previous_tick_is_still_active(db: Database,
                                                                  clock: FakeClock) -> None:
    sid = new_stack(db, clock, "a")

    def fire_next() -> dict[str, Any]:
        clock.advance(BEAT)
        with db.write() as conn:
            queue.fan_out(conn, slot_of(clock.now(), BEAT), BEAT, clock.now())
        return ticks_of(db, sid)[-1]

    row = fire_next()  # the start tick is still queued
    assert (row["status"], row["reason"]) == ("skipped", queue.REASON_PREV_QUEUED)
    assert row["finished_at"] == clock.now()
    assert event_kinds(db, int(row["id"])) == {"tick.finished": 1}
    claimed = asyncio.run(raw_claim(db, clock))[0]
    row = fire_next()
    assert (row["status"], row["reason"]) == ("skipped", queue.REASON_PREV_RUNNING)
    with db.write() as conn:
        queue.finalize(conn, claimed.id, claimed.attempt, "succeeded", None, clock.now())
    row = fire_next()
    assert (row["status"], row["reason"]) == ("queued", None)


def test_a_claim_takes_no_more_ticks_than_asked(db: Database, clock: FakeClock) -> None:
    # A worker claims what fits its capacity; claiming more would run more than it may.
    for round_ in range(15):
        for i in range(4):
            new_stack(db, clock, f"r{round_}-{i}")
        claimed = asyncio.run(raw_claim(db, clock, f"w{round_}", limit=2))
        running = [r for r in ticks_of(db) if r["status"] == "running"
                   and r["worker_id"] == f"w{round_}"]
        assert (len(claimed), len(running)) == (2, 2)
        settle(db, clock)  # the other two
        with db.write() as conn:
            stacks.pause_all(conn, None, clock.now())


# -- 3. exactly one terminal state; finalisation is a compare-and-set -----------------------

def test_finalising_twice_changes_nothing(db: Database, clock: FakeClock) -> None:
    new_stack(db, clock, "a")
    c = asyncio.run(raw_claim(db, clock))[0]
    with db.write() as conn:
        assert queue.finalize(conn, c.id, c.attempt, "succeeded", None, clock.now())
    clock.advance(1)
    with db.write() as conn:
        assert queue.finalize(conn, c.id, c.attempt, "failed", "late", clock.now()) is None
    row = tick_row(db, c.id)
    assert (row["status"], row["reason"], row["finished_at"]) == (
        "succeeded", None, clock.now() - 1)
    assert event_kinds(db, c.id)["tick.finished"] == 1


def test_a_stale_attempt_cannot_finalise_or_journal_after_a_requeue(db: Database,
                                                                   clock: FakeClock) -> None:
    new_stack(db, clock, "a")
    old = asyncio.run(raw_claim(db, clock, "w-old"))[0]
    clock.advance(31)
    with db.write() as conn:
        assert queue.reap(conn, clock.now(), 3) == (1, 0, 0)
    new = asyncio.run(raw_claim(db, clock, "w-new"))[0]
    assert (new.id, old.attempt, new.attempt) == (old.id, 1, 2)
    step = StepResult("planner", "succeeded", [], output=PlannerOutput(task="x"))
    with db.write() as conn:
        assert queue.finalize(conn, old.id, old.attempt, "failed", "stale", clock.now()) is None
        assert not journal.commit_step(conn, tick_id=old.id, stack_id=old.stack_id,
                                       attempt=old.attempt, index=0, result=step,
                                       started_at=clock.now(), now=clock.now(), lease_s=30.0)
    assert tick_row(db, old.id)["status"] == "running"
    assert steps_of(db, old.id) == []
    with db.write() as conn:
        assert queue.finalize(conn, new.id, new.attempt, "succeeded", None, clock.now())
        assert queue.finalize(conn, new.id, new.attempt, "failed", "twice", clock.now()) is None
    assert tick_row(db, new.id)["status"] == "succeeded"
    assert event_kinds(db, new.id)["tick.finished"] == 1


def test_terminal_ticks_cannot_be_finalised(db: Database, clock: FakeClock) -> None:
    sid = new_stack(db, clock, "a")
    clock.advance(BEAT)
    with db.write() as conn:
        queue.fan_out(conn, slot_of(clock.now(), BEAT), BEAT, clock.now())
        stacks.pause(conn, sid, None, clock.now())
    for row in ticks_of(db, sid):
        assert row["status"] in ("skipped", "cancelled")
        with db.write() as conn:
            assert queue.finalize(conn, row["id"], row["attempt"], "succeeded", None,
                                  clock.now()) is None
        assert tick_row(db, row["id"])["status"] == row["status"]
        assert event_kinds(db, row["id"])["tick.finished"] == 1


# -- 4. steps are journaled; a retried tick replays them -------------------------------------

def test_a_retried_tick_replays_journaled_steps_without_calling_the_model(
        db_url: str, clock: FakeClock) -> None:
    llm = GatedLLM(clock, holds=lambda r: seed_of(r)[2] == "communicator" and not any(
        c.seed == r.seed for c in llm.calls[:-1]))
    with build_runtime(db_url, clock, llm=llm) as rt:
        sid = new_stack(rt.db, clock, "a", goal="write a haiku")

        async def crash_then_retry() -> list[str]:
            await rt.worker.claim_once()
            await wait_for(lambda: llm.waiting_for("communicator"), what="step 3 under way")
            for task in [entry.task for entry in rt.worker._running.values()]:
                task.cancel()  # the worker dies mid-step: nothing is finalised
            await wait_for(lambda: rt.worker.running == 0, what="the crash")
            before = len(llm.calls)
            clock.advance(31)
            assert await reap(rt) == (1, 0, 0)
            retry = Worker(rt.store, rt.runner, rt.bus, clock, WorkerConfig(lease_s=30.0))
            await retry.claim_once()
            await wait_for(lambda: retry.running == 0, what="the retry")
            return [seed_of(r)[2] for r in llm.calls[before:]]

        assert asyncio.run(crash_then_retry()) == ["communicator", "reviewer"]
        (tick,) = ticks_of(rt.db, sid)
        assert (tick["status"], tick["attempt"]) == ("succeeded", 2)
        steps = steps_of(rt.db, tick["id"])
        assert [(s["index"], s["status"], s["attempt"]) for s in steps] == [
            (0, "succeeded", 1), (1, "succeeded", 1), (2, "succeeded", 2), (3, "succeeded", 2)]
        assert len(llm.calls_by_seed()) == 4
        # Effects exactly once per step: one artifact, one message, one attempt row per step.
        assert count_rows(rt.db, t.artifacts, t.artifacts.c.stack_id == sid) == 1
        assert count_rows(rt.db, t.messages, t.messages.c.stack_id == sid) == 1
        assert count_rows(rt.db, t.llm_attempts, t.llm_attempts.c.tick_id == tick["id"]) == 4
        with rt.db.read() as conn:
            assert set(conn.execute(select(t.memories.c.key)
                                    .where(t.memories.c.stack_id == sid)).scalars()) == {
                "current_task", "last_review"}
            title = conn.execute(select(t.artifacts.c.title)).scalar_one()
        # The replayed builder output fed the communicator of attempt 2.
        retried = [r for r in llm.calls if seed_of(r)[2] == "communicator"][-1]
        assert any(f"Artifact: {title}" in m["content"] for m in retried.messages)
        kinds = event_kinds(rt.db, tick["id"])
        assert (kinds["step.finished"], kinds["tick.started"], kinds["tick.finished"]) == (4, 2, 1)


def test_a_step_and_its_effects_commit_together(db: Database, clock: FakeClock,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    sid = new_stack(db, clock, "a")
    c = asyncio.run(raw_claim(db, clock))[0]
    step = StepResult("planner", "succeeded", [], output=PlannerOutput(task="x"))
    step.effects.memory["current_task"] = "x"
    step.effects.messages.append("hello")

    def broken_outbox(*args: object, **kwargs: object) -> int:
        raise RuntimeError("outbox unavailable")

    monkeypatch.setattr(steps, "emit_many", broken_outbox)
    with pytest.raises(RuntimeError), db.write() as conn:
        journal.commit_step(conn, tick_id=c.id, stack_id=sid, attempt=c.attempt, index=0,
                            result=step, started_at=clock.now(), now=clock.now(), lease_s=30.0)
    assert steps_of(db, c.id) == []
    assert count_rows(db, t.memories, t.memories.c.stack_id == sid) == 0
    assert count_rows(db, t.messages, t.messages.c.stack_id == sid) == 0


# -- 5. pause --------------------------------------------------------------------------------

def test_pause_cancels_queued_ticks_and_fan_out_starts_none(db: Database, db_url: str,
                                                           clock: FakeClock) -> None:
    sid, control = new_stack(db, clock, "paused"), new_stack(db, clock, "control")
    with db.write() as conn:
        stacks.pause(conn, sid, "by hand", clock.now())
    (row,) = ticks_of(db, sid)
    assert (row["status"], row["reason"]) == ("cancelled", queue.REASON_PAUSED)
    assert event_kinds(db, row["id"]) == {"tick.queued": 1, "tick.finished": 1}
    settle(db, clock)  # the control stack's start tick; the cancelled one is not claimable
    assert tick_row(db, row["id"])["status"] == "cancelled"
    clock.advance(BEAT)
    asyncio.run(Beat(store_of(db), clock, BEAT).fire())
    assert len(ticks_of(db, sid)) == 1
    assert [r["status"] for r in ticks_of(db, control)] == ["succeeded", "queued"]
    assert asyncio.run(raw_claim(db, clock))[0].stack_id == control


def test_a_queued_tick_of_a_stopped_stack_is_never_claimed_and_gets_cancelled(
        db: Database, clock: FakeClock) -> None:
    # However a stack stopped running (here: a direct edit of its row), its queued tick
    # must not start, and the reaper cancels it.
    sid = new_stack(db, clock, "a")
    with db.write() as conn:
        conn.execute(update(t.stacks).where(t.stacks.c.id == sid)
                     .values(execution_state="paused"))
    assert asyncio.run(raw_claim(db, clock)) == []
    with db.write() as conn:
        assert queue.reap(conn, clock.now(), 3) == (0, 0, 1)
    (row,) = ticks_of(db, sid)
    assert (row["status"], row["reason"]) == ("cancelled", queue.REASON_PAUSED)


def test_a_running_tick_finishes_after_its_stack_is_paused(db_url: str,
                                                          clock: FakeClock) -> None:
    llm = GatedLLM(clock, holds=lambda r: seed_of(r)[2] == "builder")
    with build_runtime(db_url, clock, llm=llm) as rt:
        sid = new_stack(rt.db, clock, "a")

        async def main() -> None:
            await rt.worker.claim_once()
            await wait_for(lambda: llm.waiting_for("builder"), what="the tick under way")
            await rt.db.transact(stacks.pause, sid, None, clock.now())
            llm.release()
            await wait_for(lambda: rt.worker.running == 0, what="the tick to finish")

        asyncio.run(main())
        (row,) = ticks_of(rt.db, sid)
        assert row["status"] == "succeeded"
        assert len(steps_of(rt.db, row["id"])) == len(DEFAULT_TEAM)
        assert stack_row(rt.db, sid)["execution_state"] == "paused"


def test_play_resumes_with_a_tick_for_the_current_slot(db: Database, clock: FakeClock) -> None:
    sid = new_stack(db, clock, "a")
    with db.write() as conn:
        stacks.pause(conn, sid, None, clock.now())
    clock.advance(BEAT)
    asyncio.run(Beat(store_of(db), clock, BEAT).fire())
    assert len(ticks_of(db, sid)) == 1
    clock.advance(3)
    with db.write() as conn:
        outcome = stacks.play(conn, sid, now=clock.now(), agents=stacks.Agents(()))
        assert outcome.row["execution_state"] == "running"
    row = ticks_of(db, sid)[-1]
    assert (row["status"], row["trigger"], row["slot"]) == ("queued", "start", None)
    assert asyncio.run(raw_claim(db, clock))[0].id == row["id"]


def test_play_within_the_paused_slot_resumes_at_once(db: Database, clock: FakeClock) -> None:
    sid = new_stack(db, clock, "a")
    beat = Beat(store_of(db), clock, BEAT)
    asyncio.run(beat.fire())
    with db.write() as conn:
        stacks.pause(conn, sid, None, clock.now())
        stacks.play(conn, sid, now=clock.now(), agents=stacks.Agents(()))
    # The start tick was still queued when the slot fired (skipped), pause cancelled it, and
    # play queued a new one at once, inside the same slot.
    assert [(r["status"], r["trigger"]) for r in ticks_of(db, sid)] == [
        ("cancelled", "start"), ("skipped", "beat"), ("queued", "start")]
    assert asyncio.run(raw_claim(db, clock))[0].id == ticks_of(db, sid)[-1]["id"]


def test_a_pause_racing_a_fan_out_leaves_nothing_queued(db: Database, db_url: str,
                                                       clock: FakeClock) -> None:
    other = Database(db_url)
    try:
        for i in range(20):
            sid = new_stack(db, clock, f"s{i}")
            settle(db, clock)
            clock.advance(BEAT)
            slot, now = slot_of(clock.now(), BEAT), clock.now()

            def fan(s: int = slot, n: float = now) -> None:
                with other.write() as conn:
                    queue.fan_out(conn, s, BEAT, n)

            def pause(s: int = sid, n: float = now) -> None:
                with db.write() as conn:
                    stacks.pause(conn, s, None, n)

            assert in_threads(fan, pause) == []
            assert {r["status"] for r in ticks_of(db, sid)} <= {"succeeded", "cancelled"}
    finally:
        other.close()


def test_a_pause_racing_a_claim_neither_deadlocks_nor_leaves_a_tick_queued(
        db: Database, db_url: str, clock: FakeClock) -> None:
    other = Database(db_url)
    try:
        for i in range(25):
            sid = new_stack(db, clock, f"s{i}")

            def claim() -> None:
                with other.write() as conn:
                    queue.claim(conn, "w", 10, clock.now(), 30.0)

            def pause(s: int = sid) -> None:
                with db.write() as conn:
                    stacks.pause(conn, s, None, clock.now())

            assert in_threads(claim, pause) == []
            (row,) = ticks_of(db, sid)
            assert row["status"] in ("running", "cancelled")  # claimed first, or cancelled
    finally:
        other.close()


# -- 6. leases -------------------------------------------------------------------------------

def test_a_vanished_workers_tick_is_retried_then_failed(db_url: str, clock: FakeClock) -> None:
    with build_runtime(db_url, clock, max_attempts=3) as rt:
        sid = new_stack(rt.db, clock, "a")
        for attempt in (1, 2, 3):
            (c,) = asyncio.run(raw_claim(rt.db, clock, f"w{attempt}"))
            assert c.attempt == attempt
            clock.advance(29)  # within the lease: left alone
            assert asyncio.run(reap(rt)) == (0, 0, 0)
            assert tick_row(rt.db, c.id)["status"] == "running"
            clock.advance(2)
            assert asyncio.run(reap(rt)) == ((1, 0, 0) if attempt < 3 else (0, 1, 0))
            assert no_running_past_lease(rt.db, clock.now())
            row = tick_row(rt.db, c.id)
            if attempt < 3:
                assert (row["status"], row["attempt"], row["reason"], row["worker_id"]) == (
                    "queued", attempt + 1, queue.REASON_LEASE_RETRY, None)
        assert (row["status"], row["reason"]) == ("failed", queue.REASON_LEASE_FAILED)
        assert row["finished_at"] == clock.now()
        assert asyncio.run(raw_claim(rt.db, clock)) == []
        kinds = event_kinds(rt.db, c.id)
        assert (kinds["tick.queued"], kinds["tick.started"], kinds["tick.finished"]) == (3, 3, 1)
        assert ticks_of(rt.db, sid) == [row]


def test_a_heartbeating_worker_keeps_its_lease(db_url: str, clock: FakeClock) -> None:
    llm = GatedLLM(clock, holds=lambda r: seed_of(r)[2] == "planner")
    with build_runtime(db_url, clock, llm=llm, lease_s=30.0) as rt:
        sid = new_stack(rt.db, clock, "a")

        async def main() -> None:
            worker = asyncio.create_task(rt.worker.run())
            try:
                await wait_for(lambda: llm.waiting_for("planner"), what="the tick under way")
                (tick,) = ticks_of(rt.db, sid)
                for _ in range(9):  # three lease periods, a heartbeat every third of one
                    clock.advance(10)
                    await wait_for(lambda: tick_row(rt.db, tick["id"])["lease_expires_at"]
                                   == clock.now() + 30, what="a heartbeat")
                    assert await reap(rt) == (0, 0, 0)
                    assert tick_row(rt.db, tick["id"])["status"] == "running"
                llm.release()
                await wait_for(lambda: tick_row(rt.db, tick["id"])["status"] == "succeeded",
                               what="the tick to finish")
                assert tick_row(rt.db, tick["id"])["attempt"] == 1
            finally:
                rt.worker.stop()
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)

        asyncio.run(main())


