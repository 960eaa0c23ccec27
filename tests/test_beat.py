"""The beat: `Beat.fire` on the fake clock, beats racing from two processes, and the
APScheduler adapter that calls it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from orchestrator.beat import Beat, BeatScheduler
from orchestrator.slots import slot_of
from orchestrator.store import queue
from schema.clock import FakeClock
from schema.db import Database
from tests.conftest import store_of, wait_for
from tests.engine_helpers import (
    BEAT,
    ScriptedLLM,
    build_runtime,
    events_of,
    in_threads,
    new_stack,
    per_stack_slot,
    raw_claim,
    settle,
    steps_of,
    ticks_of,
)

T0 = 1_800_000_000.0


def beat_rows(db: Database, stack_id: int) -> list[dict[str, Any]]:
    return [r for r in ticks_of(db, stack_id) if r["trigger"] == "beat"]


def test_a_fire_fans_out_the_current_slot_once(db: Database, clock: FakeClock) -> None:
    a, b = new_stack(db, clock, "a"), new_stack(db, clock, "b")
    new_stack(db, clock, "p", paused=True)
    settle(db, clock)
    clock.advance(BEAT + 0.25)  # a little late, as a real fire is
    beat = Beat(store_of(db), clock, BEAT)
    fired = asyncio.run(beat.fire())
    slot = slot_of(clock.now(), BEAT)
    assert [(f.slot, f.queued, f.skipped) for f in fired] == [(slot, 2, 0)]
    assert asyncio.run(beat.fire()) == []  # the same slot again: nothing
    for sid in (a, b):
        (row,) = beat_rows(db, sid)
        assert (row["slot"], row["status"], row["attempt"]) == (slot, "queued", 1)
        assert row["scheduled_at"] == slot * BEAT  # the slot's intended fire time
        assert row["queued_at"] == clock.now()
    assert len(ticks_of(db)) == 4  # two start ticks, two beat ticks; nothing for "p"
    assert beat.history == fired


def test_a_spread_gives_each_stack_its_own_phase_within_the_slot(db: Database,
                                                                  clock: FakeClock) -> None:
    """TICKWORK_SPREAD_S: each stack's tick is scheduled at its own phase in [slot, slot +
    spread), the phases covering the spread evenly; a worker starts none before its time."""
    ids = [new_stack(db, clock, f"s{i}") for i in range(40)]
    settle(db, clock)
    clock.advance(BEAT)
    asyncio.run(Beat(store_of(db), clock, BEAT, spread_s=8.0).fire())
    slot = slot_of(clock.now(), BEAT)
    phases = sorted(beat_rows(db, sid)[0]["scheduled_at"] - slot * BEAT for sid in ids)
    assert all(0 <= p < 8.0 for p in phases)
    assert len(set(phases)) == len(phases)
    quarters = [sum(1 for p in phases if q * 2 <= p < (q + 1) * 2) for q in range(4)]
    assert min(quarters) >= 6, quarters  # 40 stacks over four 2 s quarters: about 10 each


def test_a_late_fire_catches_up_missed_slots(db: Database, clock: FakeClock) -> None:
    sid = new_stack(db, clock, "a")
    settle(db, clock)
    beat = Beat(store_of(db), clock, BEAT, catchup=6)
    asyncio.run(beat.fire())  # the current slot
    first = slot_of(clock.now(), BEAT)
    settle(db, clock)
    clock.advance(3 * BEAT + 1)  # three slots on: the beat missed two
    fired = asyncio.run(beat.fire())
    assert [f.slot for f in fired] == [first + 1, first + 2, first + 3]
    rows = beat_rows(db, sid)
    assert [(r["slot"], r["status"], r["reason"]) for r in rows] == [
        (first, "succeeded", None),
        (first + 1, "queued", None),
        (first + 2, "skipped", queue.REASON_PREV_QUEUED),
        (first + 3, "skipped", queue.REASON_PREV_QUEUED)]


def test_catch_up_is_bounded(db: Database, clock: FakeClock) -> None:
    sid = new_stack(db, clock, "a")
    beat = Beat(store_of(db), clock, BEAT, catchup=3)
    asyncio.run(beat.fire())
    first = slot_of(clock.now(), BEAT)
    clock.advance(100 * BEAT)  # the process was stopped for a long while
    fired = asyncio.run(beat.fire())
    now_slot = slot_of(clock.now(), BEAT)
    assert now_slot == first + 100
    assert [f.slot for f in fired] == [now_slot - 3, now_slot - 2, now_slot - 1, now_slot]
    assert [r["slot"] for r in beat_rows(db, sid)] == [first, *(f.slot for f in fired)]


def test_catch_up_skips_slots_whose_previous_tick_is_running(db: Database,
                                                            clock: FakeClock) -> None:
    sid = new_stack(db, clock, "a")
    beat = Beat(store_of(db), clock, BEAT)
    asyncio.run(beat.fire())
    asyncio.run(raw_claim(db, clock))  # the start tick runs, long
    clock.advance(2 * BEAT)
    asyncio.run(beat.fire())
    assert [(r["status"], r["reason"]) for r in beat_rows(db, sid)] == [
        ("skipped", queue.REASON_PREV_QUEUED)] + [("skipped", queue.REASON_PREV_RUNNING)] * 2


def test_a_stack_with_its_own_interval_is_due_every_third_slot(db: Database,
                                                              clock: FakeClock) -> None:
    assert T0 % 30 == 0
    slow = new_stack(db, clock, "every-30", interval_s=30)
    fast = new_stack(db, clock, "every-10")
    settle(db, clock)
    beat = Beat(store_of(db), clock, BEAT)
    asyncio.run(beat.fire())
    first = slot_of(clock.now(), BEAT)
    for _ in range(9):
        settle(db, clock)
        clock.advance(BEAT)
        asyncio.run(beat.fire())
    assert [r["slot"] - first for r in beat_rows(db, slow)] == [0, 3, 6, 9]
    assert [r["slot"] - first for r in beat_rows(db, fast)] == list(range(10))
    assert {r["status"] for r in beat_rows(db, slow)} == {"succeeded", "queued"}


# -- invariant 1 across processes -----------------------------------------------------------

def test_fan_out_twice_for_a_slot_adds_nothing_the_second_time(db: Database,
                                                              clock: FakeClock) -> None:
    new_stack(db, clock, "a")
    clock.advance(BEAT)
    slot = slot_of(clock.now(), BEAT)
    with db.write() as conn:
        assert queue.fan_out(conn, slot, BEAT, clock.now()) == (0, 1)  # start tick queued
    with db.write() as conn:
        assert queue.fan_out(conn, slot, BEAT, clock.now()) == (0, 0)
    assert max(per_stack_slot(db).values()) == 1


def test_beats_racing_from_two_connections_insert_one_row_per_stack(
        db: Database, db_url: str, clock: FakeClock) -> None:
    for i in range(5):
        new_stack(db, clock, f"s{i}")
    settle(db, clock)
    other = Database(db_url)
    counts: list[tuple[int, int]] = []
    try:
        for _ in range(12):
            clock.advance(BEAT)
            slot, now = slot_of(clock.now(), BEAT), clock.now()

            def fire(d: Database, s: int = slot, n: float = now) -> None:
                with d.write() as conn:
                    counts.append(queue.fan_out(conn, s, BEAT, n))

            assert in_threads(lambda: fire(db), lambda: fire(other)) == []
    finally:
        other.close()
    per_key = per_stack_slot(db)
    assert max(per_key.values()) == 1
    assert len(per_key) == 5 * 12  # one row per stack per slot
    assert sum(q + s for q, s in counts) == 5 * 12  # the losing beat inserted nothing
    assert all(len(events_of(db, tick_id=r["id"])) == 1 for r in ticks_of(db)
               if r["trigger"] == "beat")


# -- the APScheduler adapter -----------------------------------------------------------------

def test_the_scheduler_job_is_coalesced_single_and_aligned_to_a_slot(
        db: Database) -> None:
    clock = FakeClock(T0 + 3.7)
    scheduler = BeatScheduler(Beat(store_of(db), clock, BEAT), clock)

    async def main() -> None:
        scheduler.start()
        try:
            job = scheduler.scheduler.get_job(BeatScheduler.JOB_ID)
            assert job is not None
            assert job.coalesce is True
            assert job.max_instances == 1
            assert job.misfire_grace_time is None
            assert job.trigger.interval == timedelta(seconds=BEAT)
            start = job.trigger.start_date
            assert start == datetime.fromtimestamp(T0 + BEAT, UTC)
            assert start.timestamp() % BEAT == 0
            assert job.next_run_time == start
        finally:
            scheduler.shutdown()

    asyncio.run(main())


def test_the_scheduler_fans_out_when_its_job_runs(db: Database, clock: FakeClock) -> None:
    sid = new_stack(db, clock, "a")
    settle(db, clock)
    clock.advance(BEAT)
    beat = Beat(store_of(db), clock, BEAT)
    scheduler = BeatScheduler(beat, clock)

    async def main() -> None:
        scheduler.start()
        try:
            job = scheduler.scheduler.get_job(BeatScheduler.JOB_ID)
            assert job is not None
            job.modify(next_run_time=datetime.now(UTC))
            scheduler.scheduler.wakeup()
            await wait_for(lambda: len(beat.history) == 1, what="the beat job to fire")
        finally:
            scheduler.shutdown()

    asyncio.run(main())
    slot = slot_of(clock.now(), BEAT)
    assert [(f.slot, f.queued) for f in beat.history] == [(slot, 1)]
    assert [(r["slot"], r["status"]) for r in beat_rows(db, sid)] == [(slot, "queued")]


def test_a_worker_starts_a_spread_tick_at_its_phase_not_before(db_url: str,
                                                              clock: FakeClock) -> None:
    llm = ScriptedLLM(clock)
    with build_runtime(db_url, clock, llm=llm, spread_s=8.0) as rt:
        sid = new_stack(rt.db, clock, "a")
        settle(rt.db, clock)
        clock.advance(BEAT)

        async def run() -> float:
            await rt.beat.fire()
            (tick,) = await rt.worker.claim_once()
            phase = tick.scheduled_at - clock.now()
            await wait_for(lambda: clock.sleepers > 0, what="the tick to wait for its phase")
            assert llm.calls == []  # claimed, not started
            clock.advance(phase)
            await wait_for(lambda: rt.worker.running == 0, what="the tick to run")
            return phase

        phase = asyncio.run(run())
        assert 0 < phase < 8.0
        (row,) = beat_rows(rt.db, sid)
        assert row["status"] == "succeeded"
        first = min(s["started_at"] for s in steps_of(rt.db, row["id"]))
        assert first >= row["scheduled_at"]


def test_claimed_ticks_begin_a_few_at_a_time_with_the_loop_turning_between() -> None:
    """A slot's claim may hand a worker hundreds of ticks; they begin a few per turn of the
    event loop, in the order claimed, so the loop serves its other work between them."""
    from orchestrator.worker import Pacer

    async def scenario() -> list[str]:
        pacer, seen = Pacer(per_turn=4), []

        async def tick(i: int) -> None:
            await pacer.turn()
            seen.append(f"t{i}")

        async def other() -> None:  # something else due on the loop meanwhile
            for _ in range(3):
                await asyncio.sleep(0)
                seen.append("other")

        await asyncio.gather(*(tick(i) for i in range(12)), other())
        return seen

    seen = asyncio.run(scenario())
    ticks = [s for s in seen if s != "other"]
    assert ticks == [f"t{i}" for i in range(12)]
    between = [i for i, s in enumerate(seen)
               if s == "other" and seen.index("t0") < i < seen.index("t11")]
    assert between  # the loop turned, and ran the rest, before every tick had begun
