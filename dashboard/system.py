"""What the System page shows (`health`), and its JSON twin (`GET /api/system/health`).

What an operator checks first: beat lateness, throughput, the queue, the workers, and each
LLM provider's breaker and rate-limit headroom. Figures about this process come from its
`Stats`, its beat and its chain; figures about all workers come from the database
(`orchestrator.activity`). The page itself (`/system`) is `dashboard.pages` rendering
`templates/system.html` from `health`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from orchestrator import activity, fleet
from orchestrator.runtime import Runtime
from schema import read
from schema.models import ts


class Lateness(BaseModel):
    p50_ms: float | None
    p99_ms: float | None
    samples: int


class Fire(BaseModel):
    slot: int
    queued: int
    skipped: int
    fanout_ms: float


class Breaker(BaseModel):
    state: str  # closed | open | half_open
    failures: int
    opened_at: datetime | None
    probe_in_s: float | None
    probing: bool


class Headroom(BaseModel):
    requests_left: int | None
    tokens_left: int | None
    requests_reset_s: float | None
    tokens_reset_s: float | None
    blocked_for_s: float | None
    rpm: int | None
    tpm: int | None


class Provider(BaseModel):
    name: str
    model: str
    label: str
    breaker: Breaker
    headroom: Headroom


class RecentAttempts(BaseModel):
    provider: str
    attempts: int
    ok: int
    ok_share: float
    statuses: dict[str, int]


class WorkerHere(BaseModel):
    id: str
    running: int
    concurrency_limit: int


class WorkerSeen(BaseModel):
    id: str
    running: int


class FleetProcess(BaseModel):
    """One live tickwork process, as it registered itself in the database."""

    id: str
    role: str  # up | beat | worker | dashboard
    host: str
    pid: int
    version: str
    started_at: datetime
    heartbeat_age_s: float
    running: int
    finished: int
    agents: list[str] | None
    info: dict[str, Any]
    this: bool  # the process that answered


class FleetTotals(BaseModel):
    processes: int
    by_role: dict[str, int]
    running: int
    finished: int


class SystemHealth(BaseModel):
    llm: str
    simulated: bool
    tick_interval: int
    window_s: float
    lateness: Lateness  # this process's recent claims
    lateness_all: Lateness  # the newest beat ticks in the database, any worker
    # The start of work: a beat tick's first step beginning − its slot.
    work_lateness: Lateness = Lateness(p50_ms=None, p99_ms=None, samples=0)
    work_lateness_all: Lateness = Lateness(p50_ms=None, p99_ms=None, samples=0)
    ticks_per_s: float  # this process, over the window
    ticks_per_s_all: float  # every worker, from the database
    queue_depth: int
    running: int
    worker: WorkerHere
    workers: list[WorkerSeen]  # workers holding running ticks, from the database
    beat_last_slot: int | None
    beat_fires: list[Fire]  # this process's most recent beat fires, newest first
    providers: list[Provider]
    recent_attempts: list[RecentAttempts]
    fleet: list[FleetProcess] = []  # every live process, from the database
    fleet_totals: FleetTotals | None = None
    role: str = "up"  # this process's role
    wakeups: str = "in-process"  # how wake-ups travel (Redis away: polling, and why)


def fleet_of(rows: list[dict[str, Any]], me: str) -> tuple[list[FleetProcess], FleetTotals]:
    procs = [FleetProcess(id=r["id"], role=r["role"], host=r["host"], pid=r["pid"],
                          version=r["version"], started_at=ts(r["started_at"]),
                          heartbeat_age_s=round(max(0.0, float(r["age_s"])), 3),
                          running=r["running"], finished=r["finished"], agents=r["agents"],
                          info=r["info"], this=r["id"] == me) for r in rows]
    by_role: dict[str, int] = {}
    for p in procs:
        by_role[p.role] = by_role.get(p.role, 0) + 1
    return procs, FleetTotals(processes=len(procs), by_role=by_role,
                              running=sum(p.running for p in procs),
                              finished=sum(p.finished for p in procs))


def wakeups(rt: Runtime) -> str:
    """One line on how wake-ups travel between processes now."""
    bus = rt.bus.status()
    if bus.connected:
        return bus.backend
    return (f"{bus.backend} unavailable ({bus.error}); polling the database every "
            f"{rt.settings.poll_s:g} s")


async def health(rt: Runtime) -> SystemHealth:
    seen = await rt.store.query(activity.recent, rt.clock.now())
    rows = await rt.store.query(fleet.live, rt.clock.now(), rt.settings.lease_s)
    procs, totals = fleet_of(rows, rt.process_id)
    interval = await rt.store.query(read.beat_interval, rt.settings.tick_interval)
    snap = rt.stats.snapshot(rt.clock.monotonic())
    providers = []
    for p in rt.chain.providers if rt.chain is not None else []:
        b, h = await p.breaker.refresh(), p.limiter.headroom()
        providers.append(Provider(
            name=p.name, model=p.model, label=p.label,
            breaker=Breaker(state=b.state, failures=b.failures, opened_at=ts(b.opened_at),
                            probe_in_s=b.probe_in_s, probing=b.probing),
            headroom=Headroom(requests_left=h.requests_left, tokens_left=h.tokens_left,
                              requests_reset_s=h.requests_reset_s,
                              tokens_reset_s=h.tokens_reset_s, blocked_for_s=h.blocked_for_s,
                              rpm=h.rpm, tpm=h.tpm)))
    return SystemHealth(
        llm=rt.llm_label, simulated=rt.llm.simulated, tick_interval=interval,
        window_s=seen.window_s,
        lateness=Lateness(p50_ms=snap.lateness_p50_ms, p99_ms=snap.lateness_p99_ms,
                          samples=len(rt.stats.lateness.recent)),
        lateness_all=Lateness(p50_ms=seen.lateness_p50_ms, p99_ms=seen.lateness_p99_ms,
                              samples=seen.lateness_samples),
        work_lateness=Lateness(p50_ms=snap.work_lateness_p50_ms,
                               p99_ms=snap.work_lateness_p99_ms,
                               samples=len(rt.stats.work_lateness.recent)),
        work_lateness_all=Lateness(p50_ms=seen.work_lateness_p50_ms,
                                   p99_ms=seen.work_lateness_p99_ms,
                                   samples=seen.work_lateness_samples),
        ticks_per_s=snap.ticks_per_s, ticks_per_s_all=seen.ticks_per_s,
        queue_depth=seen.queue_depth, running=seen.running,
        worker=WorkerHere(id=rt.worker.id, running=rt.worker.running,
                          concurrency_limit=rt.settings.max_concurrent_ticks),
        workers=[WorkerSeen(id=w, running=n) for w, n in sorted(seen.workers.items())],
        beat_last_slot=rt.beat.last_slot,
        beat_fires=[Fire(slot=f.slot, queued=f.queued, skipped=f.skipped,
                         fanout_ms=round(f.fanout_ms, 3)) for f in reversed(rt.beat.history[-10:])],
        providers=providers,
        fleet=procs, fleet_totals=totals, role=rt.membership.role, wakeups=wakeups(rt),
        recent_attempts=[RecentAttempts(provider=s.provider, attempts=s.attempts, ok=s.ok,
                                        ok_share=round(s.ok_share, 4), statuses=s.statuses)
                         for s in seen.providers])


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(tags=["system"])

    @api.get("/api/system/health")
    async def system_health() -> SystemHealth:
        """Beat lateness, throughput, queue, workers, and each provider's breaker and
        rate-limit headroom (what the System page shows)."""
        return await health(rt)

    return api
