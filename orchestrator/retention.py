"""Retention: finished ticks older than TICKWORK_RETENTION_DAYS go, with their steps, LLM
attempts and events; the per-stack daily usage and tick counts stay.

Deleted in small batches, each its own short transaction, with a pause between them, so the
hot path never waits long behind one. One process prunes at a time: on PostgreSQL each batch
first takes a transaction-scoped advisory lock that only pruners ask for, and a process that
does not get it leaves the batch to the one that did.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, delete, select, text

from orchestrator.store.abc import Store
from schema import tables as t
from schema.clock import Clock
from schema.models import TERMINAL

log = logging.getLogger("tickwork.retention")

DAY_S = 86_400
BATCH = 500  # ticks per transaction
EVENTS_PER_TICK = 8  # events deleted per batch: a tick writes about this many
PAUSE_S = 0.05  # between batches
_PRUNE_LOCK = 0x7469636B72  # "tickr"


def prune_batch(conn: Connection, cutoff: float, batch: int = BATCH) -> int | None:
    """Delete up to `batch` finished ticks older than `cutoff` (and their steps, attempts and
    events), and as many old events; returns the ticks deleted, or None when another process
    is pruning."""
    if conn.dialect.name == "postgresql" and not conn.execute(
            text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _PRUNE_LOCK}).scalar_one():
        return None
    # Ids grow with time: look only at the oldest rows (an index range on the primary key),
    # never scan for old ones.
    k = t.ticks.c
    oldest = select(k.id).order_by(k.id).limit(batch).scalar_subquery()
    ids = list(conn.execute(
        select(k.id).where(k.id.in_(oldest), k.finished_at < cutoff,
                           k.status.in_(sorted(TERMINAL)))).scalars())
    if ids:
        conn.execute(delete(t.llm_attempts).where(t.llm_attempts.c.tick_id.in_(ids)))
        conn.execute(delete(t.steps).where(t.steps.c.tick_id.in_(ids)))
        conn.execute(delete(t.ticks).where(k.id.in_(ids)))
    e = t.events.c
    oldest_events = select(e.id).order_by(e.id).limit(batch * EVENTS_PER_TICK).scalar_subquery()
    conn.execute(delete(t.events).where(e.id.in_(oldest_events), e.created_at < cutoff))
    return len(ids)


class Retention:
    def __init__(self, store: Store, clock: Clock, days: float, every_s: float = 60.0,
                 batch: int = BATCH) -> None:
        self._store = store
        self._clock = clock
        self._days = days
        self._every_s = every_s
        self._batch = batch

    async def prune_once(self) -> int:
        """Prune until nothing older than the retention is left (or another process is at
        it); returns the ticks deleted."""
        if self._days <= 0:
            return 0
        total = 0
        while True:
            cutoff = self._clock.now() - self._days * DAY_S
            n = await self._store.transact(prune_batch, cutoff, self._batch)
            if n is None:
                break
            total += n
            if n < self._batch:
                break
            await self._clock.sleep(PAUSE_S)
        if total:
            log.info("retention: deleted %d tick(s) finished more than %g day(s) ago", total,
                     self._days)
        return total

    async def run(self) -> None:
        while True:
            try:
                await self.prune_once()
            except Exception as exc:
                log.warning("pruning old ticks failed (%s); trying again later",
                            exc.__class__.__name__)
            await self._clock.sleep(self._every_s)
