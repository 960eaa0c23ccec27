"""Recent activity, read from the database: what every worker did lately, wherever it runs.

The System page and `tickwork top` show these; they work next to any number of processes
because the database is the source of truth. Each read looks only at the newest rows by id
(an index range on the primary key), so a long history does not make it slower.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, func, select

from orchestrator.stats import percentile
from schema import tables as t

RECENT_TICKS = 50_000  # newest ticks a "last minute" figure looks at
LATENESS_SAMPLE = 1_000  # newest beat ticks whose lateness makes the percentiles
RECENT_ATTEMPTS = 20_000  # newest LLM attempts the provider shares look at
WINDOW_S = 60.0
TERMINAL = ("succeeded", "failed", "timed_out", "cancelled")


@dataclass(frozen=True, slots=True)
class ProviderShare:
    provider: str
    attempts: int
    ok: int
    statuses: dict[str, int]

    @property
    def ok_share(self) -> float:
        return self.ok / self.attempts if self.attempts else 0.0


@dataclass(frozen=True, slots=True)
class Activity:
    window_s: float
    finished: int  # ticks that finished within the window
    ticks_per_s: float
    queue_depth: int
    running: int
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    lateness_samples: int
    work_lateness_p50_ms: float | None = None  # the first step beginning − the slot
    work_lateness_p99_ms: float | None = None
    work_lateness_samples: int = 0
    workers: dict[str, int] = field(default_factory=dict)  # worker id -> running ticks
    providers: list[ProviderShare] = field(default_factory=list)


def _newest_id(conn: Connection, table: t.Table, back: int) -> int:
    top = conn.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    return int(top) - back


def recent(conn: Connection, now: float, window_s: float = WINDOW_S) -> Activity:
    """Throughput, queue, workers, lateness and provider health as of `now` (epoch s)."""
    since = now - window_s
    floor = _newest_id(conn, t.ticks, RECENT_TICKS)
    k = t.ticks.c
    finished = int(conn.execute(
        select(func.count()).select_from(t.ticks)
        .where(k.id > floor, k.status.in_(TERMINAL), k.finished_at >= since)).scalar_one())
    active = {s: int(n) for s, n in conn.execute(
        select(k.status, func.count()).where(k.status.in_(t.ACTIVE)).group_by(k.status))}
    workers = {str(w): int(n) for w, n in conn.execute(
        select(k.worker_id, func.count())
        .where(k.status == "running", k.worker_id.is_not(None)).group_by(k.worker_id))}
    late = [float(v) * 1000 for (v,) in conn.execute(
        select(k.started_at - k.scheduled_at)
        .where(k.id > floor, k.slot.is_not(None), k.started_at.is_not(None))
        .order_by(k.id.desc()).limit(LATENESS_SAMPLE))]
    st = t.steps.c
    work = [float(v) * 1000 for (v,) in conn.execute(
        select(st.started_at - k.scheduled_at)
        .select_from(t.ticks.join(t.steps, (st.tick_id == k.id) & (st.index == 0)
                                  & (st.attempt == 1)))
        .where(k.id > floor, k.slot.is_not(None))
        .order_by(k.id.desc()).limit(LATENESS_SAMPLE))]
    a = t.llm_attempts.c
    newest = (select(a.provider, a.status)
              .where(a.id > _newest_id(conn, t.llm_attempts, RECENT_ATTEMPTS),
                     a.started_at >= since).subquery())
    by: dict[str, dict[str, int]] = {}
    for provider, status, n in conn.execute(
            select(newest.c.provider, newest.c.status, func.count())
            .group_by(newest.c.provider, newest.c.status)):
        by.setdefault(str(provider), {})[str(status)] = int(n)
    shares = [ProviderShare(p, sum(s.values()), s.get("ok", 0), s) for p, s in sorted(by.items())]
    return Activity(
        window_s=window_s, finished=finished, ticks_per_s=finished / window_s,
        queue_depth=active.get("queued", 0), running=active.get("running", 0),
        lateness_p50_ms=percentile(late, 50), lateness_p99_ms=percentile(late, 99),
        lateness_samples=len(late), work_lateness_p50_ms=percentile(work, 50),
        work_lateness_p99_ms=percentile(work, 99), work_lateness_samples=len(work),
        workers=workers, providers=shares)
