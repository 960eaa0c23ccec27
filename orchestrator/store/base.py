"""What both stores share: the engine's operations, written once over the SQL of `queue`,
`journal` and `outbox`, and run through the store's own transactions.

A subclass gives its `Dialect` and, where its database wants it, its own way of running a
transaction (`SQLiteStore` groups journaled steps into one; `PostgresStore` runs many at once).
Every transaction a store runs has the store's dialect bound to its connection.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection

from orchestrator.store import journal, outbox, queue, steps
from orchestrator.store.abc import Claimed, Dialect, Journal
from orchestrator.store.groupcommit import GroupCommit
from orchestrator.store.hooks import bind
from orchestrator.store.steps import StepWrite
from schema.db import Database

P = ParamSpec("P")
T = TypeVar("T")

OVERDUE_S = 2.0  # a tick queued this long is claimed by whoever can, balanced or not


def claim_and_load(conn: Connection, worker_id: str, limit: int, now: float, lease_s: float,
                   workers: int) -> tuple[list[Claimed], dict[int, Journal]]:
    """Claim this worker's share of the queue, and read the claimed ticks' journals in the
    same transaction (on SQLite, on the writer's connection, whose page cache is warm).

    The share: with `workers` live workers, each aims at an equal part of the ticks queued and
    running, so the first worker to wake does not take a whole slot while the others idle.
    Ticks that have waited longer than OVERDUE_S go to whoever asks (a peer may have died).
    """
    if workers > 1:
        queued, running, overdue, mine = queue.balance(conn, worker_id, now - OVERDUE_S)
        fair = math.ceil((queued + running) / workers)
        limit = min(limit, max(fair - mine, overdue, 0))
    claimed = queue.claim(conn, worker_id, limit, now, lease_s)
    return claimed, journal.load_many(conn, claimed)


class SQLStore:
    """The operations of `abc.Store`, over `self.transact` and friends."""

    def __init__(self, db: Database, dialect: Dialect) -> None:
        self.db = db
        self.dialect = dialect
        # Journaled steps that arrive within the window share one transaction (group commit;
        # on SQLite, on its one writer thread).
        self._steps: GroupCommit[StepWrite, bool] = GroupCommit(
            self._commit_group, db.writer, db.group_commit_s)

    def _commit_group(self, writes: list[StepWrite]) -> list[bool]:
        return self.db.transact_sync(self._bound(steps.commit_steps), writes)

    # -- transactions -------------------------------------------------------------------------

    def _bound(self, fn: Callable[Concatenate[Connection, P], T]) -> Callable[..., T]:
        dialect = self.dialect

        def run(conn: Connection, *args: Any, **kwargs: Any) -> T:
            bind(conn, dialect)
            return fn(conn, *args, **kwargs)

        return run

    async def transact(self, fn: Callable[Concatenate[Connection, P], T], *args: P.args,
                       **kwargs: P.kwargs) -> T:
        return await self.db.transact(self._bound(fn), *args, **kwargs)

    async def query(self, fn: Callable[Concatenate[Connection, P], T], *args: P.args,
                    **kwargs: P.kwargs) -> T:
        return await self.db.query(self._bound(fn), *args, **kwargs)

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        with self.db.write() as conn:
            bind(conn, self.dialect)
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.db.read() as conn:
            bind(conn, self.dialect)
            yield conn

    def close(self) -> None:
        self.db.close()

    # -- the queue ----------------------------------------------------------------------------

    async def fan_out(self, slot: int, interval: int, now: float) -> tuple[int, int]:
        return await self.transact(queue.fan_out, slot, interval, now)

    async def claim(self, worker_id: str, limit: int, now: float, lease_s: float,
                    workers: int = 1) -> tuple[list[Claimed], dict[int, Journal]]:
        if limit <= 0:
            return [], {}
        return await self.transact(claim_and_load, worker_id, limit, now, lease_s, workers)

    async def heartbeat(self, worker_id: str, held: Sequence[tuple[int, int]], now: float,
                        lease_s: float) -> set[tuple[int, int]]:
        return await self.transact(queue.heartbeat, worker_id, held, now, lease_s)

    async def release(self, worker_id: str, ticks: Iterable[tuple[int, int]], now: float
                      ) -> int:
        return await self.transact(queue.release, worker_id, list(ticks), now)

    async def reap(self, now: float, max_attempts: int) -> tuple[int, int, int]:
        return await self.transact(queue.reap, now, max_attempts)

    # -- the journal --------------------------------------------------------------------------

    async def load(self, tick: Claimed) -> Journal:
        return await self.query(journal.load, tick.id, tick.stack_id, tick.attempt)

    async def commit_step(self, tick: Claimed, index: int, result: Any, started_at: float,
                          now: float, lease_s: float, final: tuple[str, str | None] | None
                          ) -> bool:
        return await self._steps.write(StepWrite(tick, index, result, started_at, now, lease_s,
                                                 final))

    async def finalize(self, tick: Claimed, status: str, reason: str | None, now: float
                       ) -> dict[str, Any] | None:
        return await self.transact(queue.finalize, tick.id, tick.attempt, status, reason, now)

    # -- the outbox ---------------------------------------------------------------------------

    async def events_after(self, after: int, limit: int) -> list[dict[str, Any]]:
        return await self.query(outbox.events_after, after, limit)

    async def last_event_id(self) -> int:
        return await self.query(outbox.last_event_id)
