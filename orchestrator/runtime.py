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
import secrets
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field

import orjson

from agents.llm.base import LLM
from agents.llm.chain import Chain, ChainOptions, build_chain
from agents.llm.sim import SimulatedLLM
from agents.registry import AgentRegistry
from orchestrator.beat import Beat, BeatScheduler
from orchestrator.bus import InProcessBus
from orchestrator.config import ProviderEnv, Settings
from orchestrator.reaper import Reaper
from orchestrator.runner import TickRunner
from orchestrator.stats import Stats
from orchestrator.worker import Worker, WorkerConfig
from schema.clock import Clock, SystemClock
from schema.db import Database
from schema.migrate import upgrade

log = logging.getLogger("tickwork")


def chain_options(settings: Settings) -> ChainOptions:
    try:
        prices = orjson.loads(settings.llm_prices) if settings.llm_prices.strip() else None
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"TICKWORK_LLM_PRICES is not JSON ({exc}); write e.g. "
                         '{"gpt-4o-mini": [0.15, 0.6]}') from None
    return ChainOptions(
        attempt_timeout_s=settings.llm_timeout_s, max_attempts=settings.llm_max_attempts,
        backoff_base_s=settings.llm_backoff_base_s, backoff_cap_s=settings.llm_backoff_cap_s,
        max_wait_s=settings.llm_max_wait_s, breaker_threshold=settings.breaker_threshold,
        breaker_cooldown_s=settings.breaker_cooldown_s, groq_rpm=settings.groq_rpm,
        groq_tpm=settings.groq_tpm, openai_rpm=settings.openai_rpm,
        openai_tpm=settings.openai_tpm, prices=prices)


def build_llm(settings: Settings, clock: Clock, env: Mapping[str, str] | None = None) -> Chain:
    """The model chain from TICKWORK_LLM_CHAIN and the providers' keys; with no key set, the
    simulated model serves (and says so)."""
    sim = SimulatedLLM(clock, settings.sim_latency, settings.sim_seed)
    provider_env = ProviderEnv().as_env() if env is None else dict(env)
    return build_chain(settings.llm_chain, provider_env, clock, chain_options(settings),
                       fallback=sim)


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    db: Database
    bus: InProcessBus
    registry: AgentRegistry
    llm: LLM
    chain: Chain | None
    runner: TickRunner
    worker: Worker
    reaper: Reaper
    beat: Beat
    admin_token: str
    stats: Stats = field(default_factory=Stats)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _scheduler: BeatScheduler | None = None

    @classmethod
    def build(cls, settings: Settings, clock: Clock | None = None, *, migrate: bool = True,
              llm: LLM | None = None, registry: AgentRegistry | None = None,
              env: Mapping[str, str] | None = None) -> Runtime:
        """`llm` replaces the chain (tests); `env` replaces the providers' variables, which
        are otherwise read from the environment and `.env`."""
        clock = clock or SystemClock()
        db = Database(settings.database_url, group_commit_ms=settings.group_commit_ms)
        if migrate:
            upgrade(db)
        bus = InProcessBus(clock)
        db.add_commit_listener(bus.publish)
        registry = registry or AgentRegistry.default(settings.agent_paths)
        chain: Chain | None = None
        if llm is None:
            chain = build_llm(settings, clock, env)
            llm = chain.llm
        stats = Stats()
        runner = TickRunner(db, registry, llm, clock, settings.lease_s, stats)
        worker = Worker(db, runner, bus, clock, WorkerConfig(
            max_concurrent=settings.max_concurrent_ticks, lease_s=settings.lease_s,
            tick_timeout_s=settings.tick_timeout_s, poll_s=settings.poll_s,
            claim_batch=settings.claim_batch), stats=stats)
        reaper = Reaper(db, clock, settings.max_attempts, settings.reap_every_s)
        beat = Beat(db, clock, settings.tick_interval, settings.catchup_slots)
        token = (settings.admin_token.get_secret_value() if settings.admin_token
                 else secrets.token_urlsafe(24))
        return cls(settings, clock, db, bus, registry, llm, chain, runner, worker, reaper, beat,
                   token, stats)

    @property
    def llm_label(self) -> str:
        """Which chain serves, for start-up lines and the API ("simulated" when it is)."""
        if self.chain is None or self.chain.providers:
            return self.llm.label
        return f"{self.llm.label} — no provider key set"

    @property
    def llm_notes(self) -> list[str]:
        return list(self.chain.notes) if self.chain is not None else []

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(name)

    async def start(self, *, beat: bool = True, worker: bool = True,
                    scheduler: bool = True) -> None:
        """Start the parts of this process. With `scheduler=False` the beat is not put on
        APScheduler: the caller fires `self.beat.fire()` itself (tests, benchmarks)."""
        self.bus.bind(asyncio.get_running_loop())
        # Everything built so far (modules, tables, compiled statements, clients) lives as
        # long as the process: move it out of the collector's sight. Without this, each full
        # collection walks it all, stopping every tick meanwhile (at 1,000 stacks, for about
        # 100 ms; a slot it lands on starts late).
        gc.collect()
        gc.freeze()
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
        if self.chain is not None:
            await self.chain.aclose()

    def close(self) -> None:
        self.db.close()
