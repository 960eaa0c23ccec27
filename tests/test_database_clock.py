"""Leases on PostgreSQL are measured on the database's clock: a worker whose own clock is
minutes behind (or a reaper minutes ahead) neither loses nor steals a lease. With the
process's clock instead, the same skew hands a running tick to another worker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from orchestrator import fleet
from orchestrator.fleet import Membership
from orchestrator.stacks import Agents, create
from orchestrator.store import PostgresStore, open_store
from schema import tables as t
from schema.clock import FakeClock
from schema.db import Database
from schema.models import StackCreate
from tests.pg_helpers import pg_url

__all__ = ["pg_url"]  # fixture

SKEW_S = 600.0  # ten minutes


@pytest.fixture
def db(pg_url: str) -> Iterator[Database]:
    database = Database(pg_url)
    try:
        yield database
    finally:
        database.close()


def _queue_a_tick(store: PostgresStore, now: float) -> None:
    with store.write() as conn:
        create(conn, StackCreate(name="skewed"), beat_interval=10, now=now, agents=Agents(()))


def _lease(store: PostgresStore) -> float:
    with store.read() as conn:
        return float(conn.execute(select(t.ticks.c.lease_expires_at)).scalar_one())


def test_a_skewed_worker_neither_loses_nor_steals_a_lease(db: Database) -> None:
    behind, ahead = FakeClock(time.time() - SKEW_S), FakeClock(time.time() + SKEW_S)
    worker = open_store(db, lease_clock="database")
    reaper = open_store(db, lease_clock="database")
    assert isinstance(worker, PostgresStore)
    _queue_a_tick(worker, behind.now())

    async def scenario() -> None:
        claimed, _ = await worker.claim("w-behind", 10, behind.now(), 30.0)
        assert len(claimed) == 1
        # The lease runs 30 s from the database's now, whatever the worker's clock says.
        assert abs(_lease(worker) - (time.time() + 30)) < 5
        assert await reaper.reap(ahead.now(), 3) == (0, 0, 0)  # not stolen
        held = [(claimed[0].id, claimed[0].attempt)]
        assert await worker.heartbeat("w-behind", held, behind.now(), 30.0) == set(held)
        assert abs(_lease(worker) - (time.time() + 30)) < 5

    asyncio.run(scenario())


def test_on_the_process_clock_the_same_skew_steals_the_lease(db: Database) -> None:
    behind, ahead = FakeClock(time.time() - SKEW_S), FakeClock(time.time() + SKEW_S)
    worker = open_store(db, lease_clock="process")
    assert isinstance(worker, PostgresStore)
    _queue_a_tick(worker, behind.now())

    async def scenario() -> None:
        claimed, _ = await worker.claim("w-behind", 10, behind.now(), 30.0)
        assert len(claimed) == 1
        assert await open_store(db, lease_clock="process").reap(ahead.now(), 3) == (1, 0, 0)

    asyncio.run(scenario())


def test_a_lease_still_expires_on_the_database_clock(db: Database) -> None:
    clock = FakeClock(time.time() + SKEW_S)  # the reaper's clock runs ahead: irrelevant
    store = open_store(db, lease_clock="database")
    assert isinstance(store, PostgresStore)
    _queue_a_tick(store, clock.now())

    async def scenario() -> None:
        await store.claim("w-gone", 10, clock.now(), 0.2)  # a worker that then vanishes
        assert await store.reap(clock.now(), 3) == (0, 0, 0)
        deadline = time.monotonic() + 10
        while (found := await store.reap(clock.now(), 3)) == (0, 0, 0):
            assert time.monotonic() < deadline, "the lease never expired"
            await asyncio.sleep(0.05)
        assert found == (1, 0, 0)

    asyncio.run(scenario())


def test_the_fleet_heartbeats_on_the_database_clock(db: Database) -> None:
    behind, ahead = FakeClock(time.time() - SKEW_S), FakeClock(time.time() + SKEW_S)
    store = open_store(db, lease_clock="database")
    member = Membership(store, behind, "p-behind", "worker", 30.0, agents=["planner"])

    async def scenario() -> None:
        await member.start()
        with store.read() as conn:  # seen alive by a process whose clock runs ahead
            assert [p["id"] for p in fleet.live(conn, ahead.now(), 30.0)] == ["p-behind"]
        await member.stop()

    asyncio.run(scenario())
