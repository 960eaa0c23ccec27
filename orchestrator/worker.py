"""The worker: claims queued ticks under a lease, runs each as its own task, heartbeats.

A global limit (`max_concurrent`) caps the ticks running in this worker. Each tick runs under
a timeout; a tick that raises, hangs or times out is finalised on its own and touches no other.
Wake-ups come from the bus (a tick was queued); without one, the queue is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import Connection

from orchestrator import journal, queue
from orchestrator.interfaces import Bus
from orchestrator.journal import Journal
from orchestrator.queue import Claimed
from orchestrator.runner import LeaseLost, TickRunner
from orchestrator.stats import Stats
from schema.clock import Clock, within
from schema.db import Database
from schema.events import TOPIC_QUEUE

log = logging.getLogger("tickwork.worker")


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    max_concurrent: int = 1000
    lease_s: float = 30.0
    tick_timeout_s: float = 300.0
    poll_s: float = 1.0
    claim_batch: int = 1000


def _claim_and_load(conn: Connection, worker_id: str, limit: int, now: float, lease_s: float
                    ) -> tuple[list[Claimed], dict[int, Journal]]:
    """Claim, and read the claimed ticks' journals in the same transaction (on SQLite, on
    the writer's connection, whose page cache is warm)."""
    claimed = queue.claim(conn, worker_id, limit, now, lease_s)
    return claimed, journal.load_many(conn, claimed)


class Worker:
    def __init__(self, db: Database, runner: TickRunner, bus: Bus, clock: Clock,
                 config: WorkerConfig, worker_id: str | None = None,
                 stats: Stats | None = None) -> None:
        self.id = worker_id or f"w-{uuid.uuid4().hex[:12]}"
        self.stats = stats or Stats()
        self._db = db
        self._runner = runner
        self._bus = bus
        self._clock = clock
        self._cfg = config
        # Keyed by (tick id, attempt): a stale attempt still winding down and the retry this
        # worker claimed after it are two entries, each heartbeated or stopped on its own.
        self._running: dict[tuple[int, int], tuple[Claimed, asyncio.Task[None]]] = {}
        self._capacity_freed = asyncio.Event()
        self._stopping = False
        self.finished = 0

    @property
    def running(self) -> int:
        return len(self._running)

    async def claim_once(self) -> list[Claimed]:
        """Claim what fits and start it; returns what was claimed."""
        free = self._cfg.max_concurrent - len(self._running)
        if free <= 0 or self._stopping:
            return []
        claimed, states = await self._db.transact(_claim_and_load, self.id,
                                                  min(free, self._cfg.claim_batch),
                                                  self._clock.now(), self._cfg.lease_s)
        for tick in claimed:
            task = asyncio.create_task(self._run(tick, states.get(tick.id)),
                                       name=f"tick-{tick.id}")
            self._running[(tick.id, tick.attempt)] = (tick, task)
        self.stats.ticks_claimed(claimed, self._clock.now())
        return claimed

    async def _run(self, tick: Claimed, state: Journal | None) -> None:
        started = self._clock.monotonic()
        try:
            await within(self._clock, self._cfg.tick_timeout_s, self._runner.run(tick, state))
        except TimeoutError:
            await self._settle(tick, "timed_out", f"ran past its {self._cfg.tick_timeout_s:g} s "
                               "timeout")
        except LeaseLost as exc:
            log.warning("%s", exc)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a runner bug fails this tick only
            log.exception("tick %s crashed", tick.id)
            await self._settle(tick, "failed", f"runner error: {exc!r}")
        finally:
            self._running.pop((tick.id, tick.attempt), None)
            self.finished += 1
            self._capacity_freed.set()
        now = self._clock.monotonic()
        self.stats.tick_finished(now - started, now)

    async def _settle(self, tick: Claimed, status: str, reason: str) -> None:
        try:
            await self._runner.finish(tick, status, reason)
        except Exception:  # the database is away: the lease expires and the reaper decides
            log.exception("could not finalise tick %s", tick.id)

    async def heartbeat_once(self) -> None:
        held = list(self._running)
        if not held:
            return
        kept = await self._db.transact(queue.heartbeat, self.id, held, self._clock.now(),
                                       self._cfg.lease_s)
        for key in held:
            if key not in kept and key in self._running:
                log.warning("tick %s attempt %s is no longer ours; stopping it", *key)
                self._running[key][1].cancel()

    async def run(self) -> None:
        """Claim and run until `stop()`; heartbeats alongside."""
        sub = self._bus.subscribe(TOPIC_QUEUE)
        beat = asyncio.create_task(self._heartbeats(), name=f"{self.id}-heartbeat")
        try:
            while not self._stopping:
                try:
                    claimed = await self.claim_once()
                except Exception:
                    log.exception("claim failed; retrying")
                    claimed = []
                if len(claimed) == self._cfg.claim_batch:
                    continue  # a full batch: there may be more queued
                if len(self._running) >= self._cfg.max_concurrent:
                    self._capacity_freed.clear()
                    await self._capacity_freed.wait()
                    continue
                await sub.wait(self._cfg.poll_s)
        finally:
            sub.close()
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat

    async def _heartbeats(self) -> None:
        while True:
            await self._clock.sleep(self._cfg.lease_s / 3)
            try:
                await self.heartbeat_once()
            except Exception:
                log.exception("heartbeat failed")

    def stop(self) -> None:
        self._stopping = True
        self._capacity_freed.set()

    async def drain(self, grace_s: float) -> None:
        """Stop claiming; give running ticks `grace_s` to finish, then release their leases so
        they are retried (their finished steps replay from the journal)."""
        self.stop()
        tasks = [task for _, task in self._running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        left = list(self._running.values())
        for _, task in left:
            task.cancel()
        if left:
            await asyncio.gather(*(task for _, task in left), return_exceptions=True)
            with contextlib.suppress(Exception):
                await self._db.transact(queue.release, self.id, [t.id for t, _ in left],
                                        self._clock.now())
