"""Composition: build the parts from Settings and a Clock, and run them together.

`Runtime` owns the database, bus, LLM, agent registry, tick runner, worker, reaper and beat of
one process. `tickwork up` runs all of them with the HTTP server; `beat` and `worker` run the
parts they name. Nothing here is global: tests build a Runtime with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass, field

from agents.llm.base import LLM
from agents.llm.sim import SimulatedLLM
from agents.registry import AgentRegistry
from orchestrator.beat import Beat, BeatScheduler
from orchestrator.bus import InProcessBus
from orchestrator.config import Settings
from orchestrator.reaper import Reaper
from orchestrator.runner import TickRunner
from orchestrator.worker import Worker, WorkerConfig
from schema.clock import Clock, SystemClock
from schema.db import Database
from schema.migrate import upgrade

log = logging.getLogger("tickwork")


def build_llm(settings: Settings, clock: Clock) -> LLM:
    """The model chain. With no provider configured, the simulated model serves."""
    return SimulatedLLM(clock, settings.sim_latency, settings.sim_seed)


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    db: Database
    bus: InProcessBus
    registry: AgentRegistry
    llm: LLM
    runner: TickRunner
    worker: Worker
    reaper: Reaper
    beat: Beat
    admin_token: str
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _scheduler: BeatScheduler | None = None

    @classmethod
    def build(cls, settings: Settings, clock: Clock | None = None, *, migrate: bool = True,
              llm: LLM | None = None, registry: AgentRegistry | None = None) -> Runtime:
        clock = clock or SystemClock()
        db = Database(settings.database_url)
        if migrate:
            upgrade(db)
        bus = InProcessBus(clock)
        db.add_commit_listener(bus.publish)
        registry = registry or AgentRegistry.default(settings.agent_paths)
        llm = llm or build_llm(settings, clock)
        runner = TickRunner(db, registry, llm, clock, settings.lease_s)
        worker = Worker(db, runner, bus, clock, WorkerConfig(
            max_concurrent=settings.max_concurrent_ticks, lease_s=settings.lease_s,
            tick_timeout_s=settings.tick_timeout_s, poll_s=settings.poll_s,
            claim_batch=settings.claim_batch))
        reaper = Reaper(db, clock, settings.max_attempts, settings.reap_every_s)
        beat = Beat(db, clock, settings.tick_interval, settings.catchup_slots)
        token = (settings.admin_token.get_secret_value() if settings.admin_token
                 else secrets.token_urlsafe(24))
        return cls(settings, clock, db, bus, registry, llm, runner, worker, reaper, beat, token)

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(name)

    async def start(self, *, beat: bool = True, worker: bool = True,
                    scheduler: bool = True) -> None:
        """Start the parts of this process. With `scheduler=False` the beat is not put on
        APScheduler: the caller fires `self.beat.fire()` itself (tests, benchmarks)."""
        self.bus.bind(asyncio.get_running_loop())
        if worker:
            self._spawn(self.worker.run(), "worker")
            self._spawn(self.reaper.run(), "reaper")
        if beat and scheduler:
            self._scheduler = BeatScheduler(self.beat, self.clock)
            self._scheduler.start()

    def stop_beat(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown()

    async def stop(self, grace_s: float = 5.0) -> None:
        self.stop_beat()
        await self.worker.drain(grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.bus.close()

    def close(self) -> None:
        self.db.close()
