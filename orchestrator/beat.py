"""The beat: every interval, fan out one tick per due running stack for the current slot.

`Beat.fire` is the whole decision and reads time only from the Clock, so tests drive it with a
fake one. `BeatScheduler` is the thin APScheduler 3 adapter that calls it on a wall-clock
interval trigger aligned to slot boundaries: coalesced (a late fire runs once, for its slot and
the slots it missed, up to `catchup`), one instance at a time, no misfire deadline.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Connection, select

from orchestrator.leadership import Leadership
from orchestrator.slots import next_fire, slots_to_fire
from orchestrator.store import queue
from orchestrator.store.abc import Dialect, Store
from orchestrator.store.prepared import Prepared
from schema import tables as t
from schema.clock import Clock
from schema.read import BEAT_INTERVAL, beat_interval

log = logging.getLogger("tickwork.beat")


@dataclass(frozen=True, slots=True)
class Fired:
    slot: int
    queued: int
    skipped: int
    fanout_ms: float


LAST_SLOT = "beat_last_slot"


def fan_out_as(conn: Connection, slot: int, interval: int, now: float, token: int | None,
               spread_s: float = 0.0) -> tuple[int, int] | None:
    """Fan out `slot` as the leader holding `token` (None: a beat that runs alone), and record
    it as the last slot fanned out. None, writing nothing, when a newer leader has fanned out
    since (its token is larger)."""
    m = t.meta.c
    row = conn.execute(select(m.value).where(m.key == LAST_SLOT).with_for_update()
                       ).scalar_one_or_none()
    last = orjson.loads(row) if row else None
    if token is not None and last is not None and last.get("token", 0) > token:
        return None
    fired = queue.fan_out(conn, slot, interval, now, spread_s)
    keep = max(slot, last["slot"]) if last is not None else slot
    _UPSERT_META.run(conn, {"key": LAST_SLOT, "updated_at": now, "value": orjson.dumps(
        {"slot": keep, "token": token or 0}).decode()}).close()
    return fired


def last_fanned_out(conn: Connection) -> int | None:
    """The last slot any beat fanned out (a new leader catches up from there)."""
    row = conn.execute(select(t.meta.c.value).where(t.meta.c.key == LAST_SLOT)
                       ).scalar_one_or_none()
    return int(orjson.loads(row)["slot"]) if row else None


class Beat:
    def __init__(self, store: Store, clock: Clock, interval: int, catchup: int = 6,
                 leadership: Leadership | None = None, spread_s: float = 0.0) -> None:
        self.interval = interval
        self.spread_s = spread_s
        self._store = store
        self._clock = clock
        self._catchup = catchup
        self.leadership = leadership
        self._token: int | None = None  # the lease this beat last fanned out under
        self._firing = asyncio.Lock()  # one fire at a time (a scheduled one, a catch-up)
        self.last_slot: int | None = None
        self.history: list[Fired] = []  # the most recent fires, for the system view

    async def record_interval(self) -> None:
        """Record the interval this beat runs at as the system's: every process and command
        reads it from the database (stack intervals are checked against it)."""
        await self._store.transact(record_interval, self.interval, self._clock.now())

    async def fire(self) -> list[Fired]:
        async with self._firing:
            return await self._fire()

    async def _fire(self) -> list[Fired]:
        token = None
        if self.leadership is not None:
            if not self.leadership.leading:
                return []  # another beat leads
            token = self.leadership.token
            if token != self._token:  # newly leading: catch up from where the last one was
                self._token = token
                recorded = await self._store.query(last_fanned_out)
                if recorded is not None:
                    self.last_slot = recorded
        fired = []
        for slot in slots_to_fire(self.last_slot, self._clock.now(), self.interval,
                                  self._catchup):
            started = self._clock.monotonic()
            done = await self._store.transact(fan_out_as, slot, self.interval,
                                              self._clock.now(), token, self.spread_s)
            if done is None:
                log.info("a newer beat leader fanned out meanwhile; this one stops")
                break
            queued, skipped = done
            self.last_slot = slot
            fired.append(Fired(slot, queued, skipped,
                               (self._clock.monotonic() - started) * 1000))
        self.history = (self.history + fired)[-100:]
        for f in fired:
            log.debug("slot %d: %d queued, %d skipped in %.1f ms", f.slot, f.queued, f.skipped,
                      f.fanout_ms)
        return fired


def _upsert_meta(dialect: Dialect) -> Any:
    stmt = dialect.insert(t.meta)
    return stmt.on_conflict_do_update(index_elements=["key"], set_={
        "value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at})


_UPSERT_META = Prepared(_upsert_meta)


def record_interval(conn: Connection, interval: int, now: float) -> None:
    previous = beat_interval(conn, interval)
    _UPSERT_META.run(conn, {"key": BEAT_INTERVAL, "value": str(interval),
                            "updated_at": now}).close()
    if previous != interval:
        log.info("the beat interval is now %d s (it was %d s)", interval, previous)


class BeatScheduler:
    JOB_ID = "tickwork-beat"

    def __init__(self, beat: Beat, clock: Clock) -> None:
        self.beat = beat
        self._clock = clock
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self._started = False

    async def _fire(self) -> None:
        try:
            await self.beat.fire()
        except Exception:
            log.exception("fan-out failed; the next fire catches up")

    def start(self) -> None:
        first = datetime.fromtimestamp(next_fire(self._clock.now(), self.beat.interval), UTC)
        self.scheduler.add_job(
            self._fire,
            IntervalTrigger(seconds=self.beat.interval, start_date=first, timezone=UTC),
            id=self.JOB_ID,
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
            replace_existing=True,
        )
        self.scheduler.start()
        self._started = True

    def shutdown(self) -> None:
        """Stop firing (idempotent: APScheduler's asyncio shutdown completes on the loop)."""
        if self._started:
            self._started = False
            self.scheduler.shutdown(wait=False)
