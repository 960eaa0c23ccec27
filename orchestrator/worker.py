"""The worker: claims queued ticks under a lease, runs each as its own task, heartbeats.

A global limit (`max_concurrent`) caps the ticks running in this worker, and each claim takes
at most this worker's fair share of the queue (the live workers of the fleet share it). Each
tick runs under a timeout; a tick that raises, hangs or times out is finalised on its own and
touches no other. Wake-ups come from the bus (a tick was queued); without one, the queue is
polled.

Every running tick holds a `Lease`, renewed by each heartbeat and each step it commits. A tick
whose lease another worker now holds is stopped at once; one whose lease ran out because
heartbeats failed (the database was away) stops before its next LLM call, so nothing is spent
on a tick the reaper may already have handed on. A database that stays away past the retries
leaves the tick to the reaper: it is retried, never failed for that.

Each attempt is traced from here (`TickRunner.trace`): the trace begins when the worker takes
the tick up and ends however the attempt ends — finalised, timed out, its lease lost, handed
back on a drain, or crashed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from orchestrator.interfaces import Bus
from orchestrator.runner import LeaseLost, TickRunner
from orchestrator.stats import Stats
from orchestrator.store.abc import Claimed, Journal, Store
from schema.clock import Clock, within
from schema.events import TOPIC_QUEUE

log = logging.getLogger("tickwork.worker")

Key = tuple[int, int]  # (tick id, attempt)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    max_concurrent: int = 1000
    lease_s: float = 30.0
    tick_timeout_s: float = 300.0
    poll_s: float = 1.0
    claim_batch: int = 1000


class Lease:
    """How long this worker may go on with a tick, on its own monotonic clock: a lease
    renewed at `t` lasts until `t + lease_s`, measured from before the write that renewed it,
    so it never outlives the lease the database holds."""

    def __init__(self, clock: Clock, lease_s: float, since: float) -> None:
        self._clock = clock
        self._lease_s = lease_s
        self.until = since + lease_s

    def renew(self, since: float) -> None:
        self.until = max(self.until, since + self._lease_s)

    def valid(self) -> bool:
        return self._clock.monotonic() < self.until


class Pacer:
    """Lets claimed ticks begin a few at a time, one turn of the event loop apart.

    A slot's claim hands a worker hundreds of ticks at once, and each runs until its first LLM
    request is on its way (its prompt, the SDK building the request: about a millisecond).
    Begun together they would hold the loop for the whole burst, everything else in the
    process (responses arriving, commits, the event stream) waiting behind them; begun
    `per_turn` at a time, the loop polls for I/O and runs what else is due between each few.
    The ticks still begin in the order claimed, and no later in all."""

    def __init__(self, per_turn: int = 16) -> None:
        self._per_turn = per_turn
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._releasing = False

    async def turn(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiting.append(future)
        if not self._releasing:
            self._releasing = True
            loop.call_soon(self._release, loop)
        await future

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        for _ in range(self._per_turn):
            if not self._waiting:
                break
            future = self._waiting.popleft()
            if not future.done():
                future.set_result(None)
        if self._waiting:
            loop.call_soon(self._release, loop)  # the next few, after this turn's I/O
        else:
            self._releasing = False


@dataclass
class _Running:
    tick: Claimed
    task: asyncio.Task[None]
    lease: Lease


class Worker:
    def __init__(self, store: Store, runner: TickRunner, bus: Bus, clock: Clock,
                 config: WorkerConfig, worker_id: str | None = None,
                 stats: Stats | None = None, peers: Callable[[], int] = lambda: 1) -> None:
        self.id = worker_id or f"w-{uuid.uuid4().hex[:12]}"
        self.stats = stats or Stats()
        self._store = store
        self._runner = runner
        self._bus = bus
        self._clock = clock
        self._cfg = config
        self._peers = peers
        # Keyed by (tick id, attempt): a stale attempt still winding down and the retry this
        # worker claimed after it are two entries, each heartbeated or stopped on its own.
        self._running: dict[Key, _Running] = {}
        self._capacity_freed = asyncio.Event()
        self._pacer = Pacer()
        self._stopping = False
        self.finished = 0

    @property
    def running(self) -> int:
        return len(self._running)

    async def claim_once(self) -> list[Claimed]:
        """Claim what fits (this worker's share) and start it; returns what was claimed."""
        free = self._cfg.max_concurrent - len(self._running)
        if free <= 0 or self._stopping:
            return []
        since = self._clock.monotonic()
        claimed, states = await self._store.claim(self.id, min(free, self._cfg.claim_batch),
                                                  self._clock.now(), self._cfg.lease_s,
                                                  max(1, self._peers()))
        for tick in claimed:
            lease = Lease(self._clock, self._cfg.lease_s, since)
            task = asyncio.create_task(self._run(tick, states.get(tick.id), lease),
                                       name=f"tick-{tick.id}")
            self._running[(tick.id, tick.attempt)] = _Running(tick, task, lease)
        self.stats.ticks_claimed(claimed, self._clock.now())
        return claimed

    async def _run(self, tick: Claimed, state: Journal | None, lease: Lease) -> None:
        started = self._clock.monotonic()
        trace = self._runner.trace(tick)
        try:
            early = tick.scheduled_at - self._clock.now()
            if early > 0:  # scheduled at its phase after the slot (TICKWORK_SPREAD_S)
                await self._clock.sleep(early)
            await self._pacer.turn()
            await within(self._clock, self._cfg.tick_timeout_s,
                         self._runner.run(tick, state, lease, trace))
        except TimeoutError:
            reason = f"ran past its {self._cfg.tick_timeout_s:g} s timeout"
            trace.outcome("timed_out", reason)
            await self._settle(tick, "timed_out", reason)
        except LeaseLost as exc:
            trace.outcome("lease_lost", str(exc))
            log.warning("%s", exc)
            return
        except asyncio.CancelledError:
            # Stopped: handed back to the queue on a drain, or another attempt owns it now.
            trace.outcome("released" if self._stopping else "lease_lost")
            raise
        except SQLAlchemyError as exc:  # still failing after the retries: the reaper retries it
            trace.outcome("error", f"the database is unavailable ({exc.__class__.__name__})")
            log.warning("tick %s stopped: the database is unavailable (%s); it is retried once "
                        "its lease expires", tick.id, exc.__class__.__name__)
            return
        except Exception as exc:  # a runner bug fails this tick only
            log.exception("tick %s crashed", tick.id)
            trace.outcome("failed", f"runner error: {exc!r}")
            await self._settle(tick, "failed", f"runner error: {exc!r}")
        finally:
            trace.end(self._clock.now())
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
        since = self._clock.monotonic()
        try:
            kept = await self._store.heartbeat(self.id, held, self._clock.now(),
                                               self._cfg.lease_s)
        except Exception:
            self._stop_expired()
            raise
        for key in held:
            entry = self._running.get(key)
            if entry is None:
                continue
            if key in kept:
                entry.lease.renew(since)
            else:
                log.warning("tick %s attempt %s is no longer ours; stopping it", *key)
                entry.task.cancel()

    def _stop_expired(self) -> None:
        """Heartbeats fail: stop every tick whose lease has run out by now."""
        for key, entry in list(self._running.items()):
            if not entry.lease.valid():
                log.warning("tick %s attempt %s: its lease ran out while heartbeats failed; "
                            "stopping it", *key)
                entry.task.cancel()

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
                    await asyncio.sleep(0)  # a full batch: there may be more queued
                    continue
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
            except Exception as exc:
                log.warning("heartbeat failed (%s); trying again", exc.__class__.__name__)

    def stop(self) -> None:
        self._stopping = True
        self._capacity_freed.set()

    async def drain(self, grace_s: float) -> None:
        """Stop claiming; give running ticks `grace_s` to finish, then hand the rest back to
        the queue without using an attempt: they resume from their journal elsewhere."""
        self.stop()
        tasks = [entry.task for entry in self._running.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        left = [(key, entry.task) for key, entry in self._running.items()]
        for _, task in left:
            task.cancel()
        if left:
            await asyncio.gather(*(task for _, task in left), return_exceptions=True)
            try:
                n = await self._store.release(self.id, [key for key, _ in left],
                                              self._clock.now())
                log.info("released %d running tick(s) to the queue", n)
            except Exception as exc:
                log.warning("could not release %d tick(s) (%s); they are retried when their "
                            "leases expire", len(left), exc.__class__.__name__)
