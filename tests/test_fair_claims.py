"""Fair claims: with several live workers, each claim takes no more than the worker's share
of the queue, so the first to wake does not take a whole slot while the others idle; a tick
left waiting past OVERDUE_S goes to whoever asks (its fair taker may have died)."""

from __future__ import annotations

import asyncio

from orchestrator.store import Store
from orchestrator.store.base import OVERDUE_S
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
