"""The System page (`/system`) and its JSON twin (`GET /api/system/health`).

What an operator checks first: beat lateness, throughput, the queue, the workers, and each
LLM provider's breaker and rate-limit headroom. Figures about this process come from its
`Stats`, its beat and its chain; figures about all workers come from the database
(`orchestrator.activity`). Every value is escaped on the way into the page.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from dashboard.pages_html import esc, page
from orchestrator import activity, fleet
from orchestrator.runtime import Runtime
from schema import read
from schema.models import ts

DASH = "—"


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


# -- HTML ----------------------------------------------------------------------------------

def _ms(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f} ms"


def _s(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f} s"


def _n(value: int | None) -> str:
    return DASH if value is None else str(value)


def _badge(kind: str) -> str:
    return f'<span class="badge {esc(kind)}">{esc(kind)}</span>'


def _table(head: list[str], rows: list[list[str]], empty: str) -> str:
    """A table; the cells are HTML already escaped by the caller."""
    if not rows:
        return f'<p class="empty">{esc(empty)}</p>'
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


BREAKER_BADGE = {"closed": "ok", "half_open": "rate_limited", "open": "failed"}


def _provider_rows(h: SystemHealth) -> list[list[str]]:
    rows = []
    for p in h.providers:
        b, r = p.breaker, p.headroom
        breaker = (f'<span class="badge {BREAKER_BADGE.get(b.state, "failed")}">'
                   f"{esc(b.state)}</span>")
        probe = _s(b.probe_in_s) if b.state == "open" else ("in flight" if b.probing else DASH)
        rows.append([esc(p.label), breaker, esc(b.failures), esc(probe),
                     esc(f"{_n(r.requests_left)} / {_n(r.rpm)}"), esc(_s(r.requests_reset_s)),
                     esc(f"{_n(r.tokens_left)} / {_n(r.tpm)}"), esc(_s(r.tokens_reset_s)),
                     esc(_s(r.blocked_for_s))])
    return rows


def system_body(h: SystemHealth) -> str:
    """The page's content, one `#system` element (the layout around it is the dashboard's),
    so a live page can re-read the page and swap it in."""
    sim = ' <span class="badge simulated">simulated</span>' if h.simulated else ""
    providers = _table(
        ["provider", "breaker", "failures", "probe in", "requests left / rpm", "resets in",
         "tokens left / tpm", "resets in", "held off"], _provider_rows(h),
        "No provider in the chain: the simulated model answers every call."
        if h.simulated else "No provider in the chain.")
    recent = _table(
        ["provider", "attempts", "ok", "ok share", "outcomes"],
        [[esc(a.provider), esc(a.attempts), esc(a.ok), esc(f"{a.ok_share:.0%}"),
          esc(", ".join(f"{k} {v}" for k, v in sorted(a.statuses.items())))]
         for a in h.recent_attempts],
        f"No LLM attempt in the last {h.window_s:g} s.")
    workers = _table(["worker", "running ticks"],
                     [[esc(w.id), esc(w.running)] for w in h.workers],
                     "No worker holds a running tick.")
    fleet_rows = [[esc(p.role) + (' <span class="badge ok">this</span>' if p.this else ""),
                   esc(p.host), esc(p.pid), esc(p.version), esc(_s(p.heartbeat_age_s)),
                   esc(p.running), esc(p.finished), f"<code>{esc(p.id)}</code>"]
                  for p in h.fleet]
    fleet_table = _table(["role", "host", "pid", "version", "heartbeat", "running",
                          "finished", "process"], fleet_rows, "No live process registered.")
    t = h.fleet_totals
    fleet_sum = ("" if t is None else
                 f'<p class="fleet-totals">{esc(t.processes)} process(es): '
                 + esc(", ".join(f"{n} {r}" for r, n in sorted(t.by_role.items())))
                 + f" · {esc(t.running)} tick(s) running · {esc(t.finished)} finished</p>")
    fires = _table(["slot", "queued", "skipped", "fan-out"],
                   [[esc(f.slot), esc(f.queued), esc(f.skipped), esc(_ms(f.fanout_ms))]
                    for f in h.beat_fires], "This process has not fired the beat.")
    overview = _table(["", "this process", "all workers"], [
        ["beat lateness p50", esc(_ms(h.lateness.p50_ms)), esc(_ms(h.lateness_all.p50_ms))],
        ["beat lateness p99", esc(_ms(h.lateness.p99_ms)), esc(_ms(h.lateness_all.p99_ms))],
        ["lateness samples", esc(h.lateness.samples), esc(h.lateness_all.samples)],
        ["start of work p50", esc(_ms(h.work_lateness.p50_ms)),
         esc(_ms(h.work_lateness_all.p50_ms))],
        ["start of work p99", esc(_ms(h.work_lateness.p99_ms)),
         esc(_ms(h.work_lateness_all.p99_ms))],
        [f"ticks per second (last {esc(f'{h.window_s:g}')} s)", esc(f"{h.ticks_per_s:.2f}"),
         esc(f"{h.ticks_per_s_all:.2f}")],
        ["running ticks", esc(h.worker.running), esc(h.running)],
        ["queue depth", DASH, esc(h.queue_depth)],
    ], "")
    return (
        '<div id="system"><h1>System</h1>'
        f'<p class="llm">LLM chain: <span class="chain">{esc(h.llm)}</span>{sim}</p>'
        f'<p>Beat every {esc(h.tick_interval)} s · {_this(h)} · wake-ups: '
        f'<span class="wakeups">{esc(h.wakeups)}</span> · '
        '<a href="/metrics">/metrics</a> · <a href="/api/system/health">JSON</a></p>'
        f'<section id="fleet"><h2>Fleet</h2>{fleet_sum}{fleet_table}</section>'
        f'<section id="overview"><h2>Overview</h2>{overview}</section>'
        f'<section id="providers"><h2>Providers</h2>{_providers_note(h)}{providers}'
        f'<h3>Last {esc(f"{h.window_s:g}")} s of LLM attempts (all workers)</h3>{recent}</section>'
        f'<section id="workers"><h2>Workers</h2>{workers}</section>'
        f'<section id="beat"><h2>Beat (this process)</h2>{fires}</section></div>'
    )


def _this(h: SystemHealth) -> str:
    if h.role in ("up", "worker"):
        return (f'this {esc(h.role)} process <code>{esc(h.worker.id)}</code> runs '
                f'{esc(h.worker.running)} of at most {esc(h.worker.concurrency_limit)} ticks')
    return f'this {esc(h.role)} process runs no ticks (the fleet below does)'


def _providers_note(h: SystemHealth) -> str:
    if h.role in ("up", "worker"):
        return ""
    return ('<p class="note">Breakers and rate limits below are this process\'s; the workers '
            'keep their own. The attempts further down are every worker\'s.</p>')


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(tags=["system"])

    @api.get("/api/system/health")
    async def system_health() -> SystemHealth:
        """Beat lateness, throughput, queue, workers, and each provider's breaker and
        rate-limit headroom (what the System page shows)."""
        return await health(rt)

    @api.get("/system", response_class=HTMLResponse, include_in_schema=False)
    async def system_page(request: Request) -> HTMLResponse:
        sessions = getattr(request.app.state, "sessions", None)
        session = sessions.of(request) if sessions is not None else None
        body = system_body(await health(rt))
        return HTMLResponse(page("System", body, path=request.url.path,
                                 csrf=session.csrf if session is not None else None,
                                 kind="system"))

    return api
