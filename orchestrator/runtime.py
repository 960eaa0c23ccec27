"""Composition: build the parts from Settings and a Clock, and run them together.

`Runtime` owns the database, bus, LLM, agent registry, tick runner, worker, reaper and beat of
one process. `tickwork up` runs all of them with the HTTP server; `beat` and `worker` run the
parts they name. Nothing here is global: tests build a Runtime with a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents.llm.base import LLM
from agents.llm.chain import Chain, ChainOptions, build_chain
from agents.llm.shared import SharedLimits
from agents.llm.sim import SimulatedLLM
from agents.registry import AgentRegistry
from orchestrator.beat import Beat, BeatScheduler
from orchestrator.bus import open_bus
from orchestrator.config import ProviderEnv, Settings
from orchestrator.fleet import Membership
from orchestrator.interfaces import Bus
from orchestrator.leadership import DatabaseElector, Elector, Leadership, RedisElector
from orchestrator.reaper import Reaper
from orchestrator.retention import Retention
from orchestrator.runner import TickRunner
from orchestrator.stats import Stats
from orchestrator.store import Store, open_store
from orchestrator.telemetry import NoopTracing, Tracing, open_tracing
from orchestrator.worker import Worker, WorkerConfig
from schema.clock import Clock, SystemClock
from schema.db import Database
from schema.migrate import upgrade

log = logging.getLogger("tickwork")


def chain_options(settings: Settings) -> ChainOptions:
    prices = settings.prices
    return ChainOptions(
        attempt_timeout_s=settings.llm_timeout_s, max_attempts=settings.llm_max_attempts,
        connections=settings.max_concurrent_ticks,
        backoff_base_s=settings.llm_backoff_base_s, backoff_cap_s=settings.llm_backoff_cap_s,
        max_wait_s=settings.llm_max_wait_s, breaker_threshold=settings.breaker_threshold,
        breaker_cooldown_s=settings.breaker_cooldown_s, groq_rpm=settings.groq_rpm,
        groq_tpm=settings.groq_tpm, openai_rpm=settings.openai_rpm,
        openai_tpm=settings.openai_tpm, prices=prices)


def build_llm(settings: Settings, clock: Clock, env: Mapping[str, str] | None = None,
              workers: Callable[[], int] = lambda: 1) -> Chain:
    """The model chain from TICKWORK_LLM_CHAIN and the providers' keys; with no key set, the
    simulated model serves (and says so). With Redis, its limits and breakers are the
    fleet's (`workers`: how many share a provider's limit while Redis is away)."""
    sim = SimulatedLLM(clock, settings.sim_latency, settings.sim_seed)
    provider_env = ProviderEnv().as_env() if env is None else dict(env)
    shared = (SharedLimits(settings.redis_url, clock, prefix=settings.redis_prefix,
                           workers=workers) if settings.redis_url else None)
    chain = build_chain(settings.llm_chain, provider_env, clock, chain_options(settings),
                        fallback=sim, shared=shared)
    if shared is not None:
        chain.closers.append(shared.aclose)
    return chain


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    db: Database
    store: Store
    bus: Bus
    registry: AgentRegistry
    llm: LLM
    chain: Chain | None
    runner: TickRunner
    worker: Worker
    reaper: Reaper
    retention: Retention
    beat: Beat
    membership: Membership
    admin_token: str = field(repr=False)  # never printed
    stats: Stats = field(default_factory=Stats)
    tracing: Tracing = field(default_factory=NoopTracing)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _scheduler: BeatScheduler | None = None
    _redis: Any = None

    @classmethod
    def build(cls, settings: Settings, clock: Clock | None = None, *, migrate: bool = True,
              llm: LLM | None = None, registry: AgentRegistry | None = None,
              env: Mapping[str, str] | None = None, tracing: Tracing | None = None
              ) -> Runtime:
        """`llm` replaces the chain (tests); `env` replaces the providers' variables, which
        are otherwise read from the environment and `.env`, and the OpenTelemetry ones, which
        are otherwise read from the environment (`OTEL_EXPORTER_OTLP_ENDPOINT`: every tick is
        traced). `tracing` replaces what those would build (tests)."""
        clock = clock or SystemClock()
        db = Database(settings.database_url, group_commit_ms=settings.group_commit_ms)
        if migrate:
            upgrade(db)
        store = open_store(db, lease_clock=settings.lease_clock)
        process_id = f"p-{uuid.uuid4().hex[:12]}"
        bus = open_bus(settings.redis_url, clock, prefix=settings.redis_prefix,
                       sender=process_id)
        db.add_commit_listener(bus.publish)
        registry = registry or AgentRegistry.default(settings.agent_paths)
        membership = Membership(store, clock, process_id, "up", settings.lease_s)
        chain: Chain | None = None
        if llm is None:
            chain = build_llm(settings, clock, env, workers=lambda: membership.workers)
            llm = chain.llm
        stats = Stats()
        if tracing is None:
            tracing = open_tracing(os.environ if env is None else env)
        runner = TickRunner(store, registry, llm, clock, settings.lease_s, stats, tracing)
        worker = Worker(store, runner, bus, clock, WorkerConfig(
            max_concurrent=settings.max_concurrent_ticks, lease_s=settings.lease_s,
            tick_timeout_s=settings.tick_timeout_s, poll_s=settings.poll_s,
            claim_batch=settings.claim_batch), worker_id=process_id, stats=stats,
            peers=lambda: membership.workers)
        reaper = Reaper(store, clock, settings.max_attempts, settings.reap_every_s)
        retention = Retention(store, clock, settings.retention_days)
        beat = Beat(store, clock, settings.tick_interval, settings.catchup_slots,
                    spread_s=settings.spread_s)
        token = (settings.admin_token.get_secret_value() if settings.admin_token
                 else secrets.token_urlsafe(24))
        return cls(settings, clock, db, store, bus, registry, llm, chain, runner, worker,
                   reaper, retention, beat, membership, token, stats, tracing)

    @property
    def process_id(self) -> str:
        return self.membership.process_id

    @property
    def llm_label(self) -> str:
        """Which chain serves, for start-up lines and the API ("simulated" when it is)."""
        if self.chain is None or self.chain.providers:
            return self.llm.label
        return f"{self.llm.label} — no provider key set"

    @property
    def llm_notes(self) -> list[str]:
        if self.chain is None:
            return []
        loopback = self.chain.loopback_note
        return [*self.chain.notes, *([loopback] if loopback else [])]

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(name)

    @staticmethod
    def role_of(beat: bool, worker: bool) -> str:
        if beat and worker:
            return "up"
        return "beat" if beat else "worker" if worker else "dashboard"

    async def start(self, *, beat: bool = True, worker: bool = True,
                    scheduler: bool = True, role: str | None = None) -> None:
        """Start the parts of this process, and register it in the fleet. With
        `scheduler=False` the beat is not put on APScheduler: the caller fires
        `self.beat.fire()` itself (tests, benchmarks)."""
        self.bus.bind(asyncio.get_running_loop())
        await self.bus.start()
        info: dict[str, object] = {}
        if beat:
            await self.beat.record_interval()
            info["beat_interval"] = self.beat.interval
            await self._lead()
        if worker:
            info.update(concurrency=self.settings.max_concurrent_ticks, llm=self.llm_label)
        m = self.membership
        m.role = role or self.role_of(beat, worker)
        if worker:
            self.tracing.start(m.role, self.process_id)
        m.agents = self.registry.names() if worker else None
        m.info = info
        m.counts = lambda: (self.worker.running, self.worker.finished)
        await m.start()
        self._spawn(m.run(), "fleet")
        # Everything built so far (modules, tables, compiled statements, clients) lives as
        # long as the process: move it out of the collector's sight. Without this, each full
        # collection walks it all, stopping every tick meanwhile (at 1,000 stacks, for about
        # 100 ms; a slot it lands on starts late).
        gc.collect()
        gc.freeze()
        if worker:
            self._spawn(self.worker.run(), "worker")
            self._spawn(self.reaper.run(), "reaper")
            self._spawn(self.retention.run(), "retention")
        if beat and scheduler:
            self._scheduler = BeatScheduler(self.beat, self.clock)
            self._scheduler.start()

    async def _lead(self) -> None:
        """Take part in choosing the one beat that fans out (the lease is kept for half an
        interval, so another beat takes over within one interval of a leader dying)."""
        ttl = max(0.5, self.beat.interval / 2)
        me = self.process_id
        elector: Elector = DatabaseElector(self.store, self.clock, me, ttl)
        if self.settings.redis_url:
            import redis.asyncio as aioredis
            self._redis = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=2,
                                                  socket_connect_timeout=1)
            elector = RedisElector(self._redis, self.settings.redis_prefix, me, ttl, elector)
        leadership = self.beat.leadership = Leadership(elector, self.clock, ttl)
        await leadership.attempt_once()  # leading from the start: the first slot as usual
        leadership.on_lead = self._caught_up  # taking over later: catch up at once
        self._spawn(self.beat.leadership.run(), "leadership")

    async def _caught_up(self) -> None:
        """Newly leading: fan out the slots missed since the last leader, now."""
        try:
            await self.beat.fire()
        except Exception as exc:
            log.warning("catching up the missed slots failed (%s); the next fire does",
                        type(exc).__name__)

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
        if self.beat.leadership is not None:
            await self.beat.leadership.resign()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
        await self.membership.stop()
        await self.bus.close()
        if self.chain is not None:
            await self.chain.aclose()
        # The last spans go out on the exporter's thread; the loop does not wait on it.
        await asyncio.to_thread(self.tracing.close)

    def close(self) -> None:
        self.tracing.close()
        self.store.close()
