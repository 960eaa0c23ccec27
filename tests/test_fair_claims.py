"""Fair claims: with several live workers, each claim takes no more than the worker's share
of the queue, so the first to wake does not take a whole slot while the others idle; a tick
left waiting past OVERDUE_S goes to whoever asks (its fair taker may have died)."""

from __future__ import annotations

import asyncio

from sqlalchemy import insert, select, update

from orchestrator.store import Store
from orchestrator.store.base import OVERDUE_S
from orchestrator.store.journal import HISTORY, load
from schema import tables as t
from schema.clock import FakeClock
from schema.db import Database
from tests.conftest import store_of
from tests.engine_helpers import new_stack, ticks_of

LEASE_S = 30.0
BIG = 1000


def stacks(db: Database, clock: FakeClock, n: int = 10, prefix: str = "s") -> list[int]:
    """`n` running stacks, each with its start tick queued."""
    return [new_stack(db, clock, f"{prefix}{i}") for i in range(n)]


async def claim(store: Store, worker: str, clock: FakeClock, workers: int,
                limit: int = BIG) -> list[int]:
    claimed, journals = await store.claim(worker, limit, clock.now(), LEASE_S, workers)
    assert sorted(journals) == sorted(c.id for c in claimed)  # each comes with its journal
    return [c.id for c in claimed]


def running_on(db: Database) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in ticks_of(db):
        if r["status"] == "running":
            out.setdefault(r["worker_id"], []).append(r["id"])
    return out


def test_two_live_workers_split_the_queue(db: Database, clock: FakeClock) -> None:
    stacks(db, clock)
    store = store_of(db)

    async def main() -> tuple[list[int], list[int], list[int]]:
        a = await claim(store, "w-a", clock, workers=2)
        again = await claim(store, "w-a", clock, workers=2)  # its share is taken already
        b = await claim(store, "w-b", clock, workers=2)
        return a, again, b

    a, again, b = asyncio.run(main())
    assert (len(a), again, len(b)) == (5, [], 5)
    assert sorted(a + b) == [r["id"] for r in ticks_of(db)]
    assert running_on(db) == {"w-a": sorted(a), "w-b": sorted(b)}


def test_a_lone_worker_takes_the_whole_queue(db: Database, clock: FakeClock) -> None:
    stacks(db, clock)
    got = asyncio.run(claim(store_of(db), "w-a", clock, workers=1))
    assert sorted(got) == [r["id"] for r in ticks_of(db)]


def test_a_fair_share_is_still_bounded_by_the_limit(db: Database, clock: FakeClock) -> None:
    stacks(db, clock)
    store = store_of(db)

    async def main() -> list[int]:
        first = await claim(store, "w-a", clock, workers=2, limit=3)
        second = await claim(store, "w-a", clock, workers=2)  # tops up to its share
        other = await claim(store, "w-b", clock, workers=2)
        return [len(first), len(second), len(other)]

    assert asyncio.run(main()) == [3, 2, 5]


def test_overdue_ticks_go_to_whoever_asks(db: Database, clock: FakeClock) -> None:
    stacks(db, clock)
    store = store_of(db)
    a = asyncio.run(claim(store, "w-a", clock, workers=2))
    assert len(a) == 5
    # Its peer never comes: the rest waits, but not past OVERDUE_S.
    clock.advance(OVERDUE_S / 2)
    assert asyncio.run(claim(store, "w-a", clock, workers=2)) == []
    clock.advance(OVERDUE_S)
    rest = asyncio.run(claim(store, "w-a", clock, workers=2))
    assert len(rest) == 5
    assert running_on(db) == {"w-a": sorted(a + rest)}
    assert all(r["status"] == "running" for r in ticks_of(db))


def test_overdue_ticks_go_past_the_share_and_fresh_ones_wait(db: Database,
                                                            clock: FakeClock) -> None:
    stacks(db, clock)
    store = store_of(db)
    assert len(asyncio.run(claim(store, "w-a", clock, workers=2))) == 5
    clock.advance(OVERDUE_S + 1)
    fresh = {r["id"] for sid in stacks(db, clock, 2, "fresh") for r in ticks_of(db, sid)}
    # Its share is ceil((7 queued + 5 running) / 2) = 6, one more; but the five overdue
    # ones go to it all the same, and only they.
    more = asyncio.run(claim(store, "w-a", clock, workers=2))
    assert len(more) == 5 and not set(more) & fresh
    assert asyncio.run(claim(store, "w-a", clock, workers=2)) == []
    assert set(asyncio.run(claim(store, "w-b", clock, workers=2))) == fresh


def test_a_claim_reads_each_journal_as_a_lone_read_would(db: Database, clock: FakeClock
                                                         ) -> None:
    """The claim reads every claimed tick's journal in one batch: the same memory, the same
    last messages and artifacts (newest first, no more than the history), the same finished
    steps of a retried attempt, as `load` for that tick alone."""
    ids = stacks(db, clock, 3)
    busy, quiet = ids[0], ids[1]
    with db.write() as conn:
        tick = dict(conn.execute(select(t.ticks.c.stack_id, t.ticks.c.id)).all())
        first = tick[busy]
        conn.execute(insert(t.memories), [{"stack_id": s, "key": f"k{i}", "value": f"{s}:{i}",
                                           "tick_id": tick[s], "updated_at": 0.0}
                                          for s in (busy, quiet) for i in range(3)])
        conn.execute(insert(t.messages), [{"stack_id": s, "tick_id": tick[s], "agent": "a",
                                           "body": f"{s}:{i}", "created_at": float(i)}
                                          for s in ids[:2] for i in range(HISTORY + 3)])
        conn.execute(insert(t.artifacts), [{"stack_id": busy, "tick_id": first, "agent": "b",
                                            "title": f"t{i}", "content": f"c{i}",
                                            "created_at": float(i)} for i in range(HISTORY + 1)])
        conn.execute(update(t.ticks).where(t.ticks.c.id == first).values(attempt=2))
        conn.execute(insert(t.steps), [{"tick_id": first, "index": 0, "agent": "planner",
                                        "status": "succeeded", "attempt": 1, "started_at": 0.0,
                                        "finished_at": 1.0, "prompt": "[]", "output": "{}"}])
    store = store_of(db)
    claimed, journals = asyncio.run(store.claim("w", BIG, clock.now(), LEASE_S, 1))
    assert len(claimed) == 3
    with db.read() as conn:
        for c in claimed:
            assert journals[c.id] == load(conn, c.id, c.stack_id, c.attempt)
    assert [m.body for m in journals[first].messages] == \
        [f"{busy}:{i}" for i in range(HISTORY + 2, 2, -1)]
    assert journals[first].done == {0: ("planner", "{}")}
