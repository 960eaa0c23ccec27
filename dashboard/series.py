"""The figures behind the dashboard's charts, aggregated by the database.

Every series is a set of columns over one x column `t` (epoch seconds, oldest first), as a chart
draws them. Each read returns a bounded number of rows whatever the history holds: the database
groups and counts; Python only places the groups in their columns.

System, per minute (minute = floor(t / 60)) over the last `minutes`, the newest one partial:

- beat lateness p50 and p99: the tick's claim (`started_at`) − its slot (`scheduled_at`), of beat
  ticks, in the minute of their slot. Nearest-rank percentiles (`orchestrator.stats.percentile`):
  window functions pick the rank ⌈q·n/100⌉ of each minute in SQL, so two rows a minute come
  back, on SQLite and PostgreSQL alike.
- ticks finished per second: ticks that reached a final status (`orchestrator.activity.TERMINAL`)
  in the minute of `finished_at`, over the seconds of the minute gone by (60, or fewer for the
  current minute).
- LLM calls by provider and outcome, in the minute the call started: `ok`; `fallback` (an ok
  call serving a step whose first attempt went to another provider, as the load tests count
  fallbacks); `rate_limited` (a 429); `error` (any other failure). Skipped attempts (an open
  breaker, a rate limit held off) made no call and are not counted.

Only ticks scheduled since the window began, less a horizon (the longest a tick can run: its
attempts × (timeout + lease)), are read, through the (status, scheduled_at) index; attempts are
read through their ticks' ids.

A stack: the durations (finished − claimed) of its last ticks that ran, and what it spent per UTC
day (day = floor(t / 86400), `stack_usage`) over the last days, a day with nothing spent as 0.
"""

from __future__ import annotations

import math
from typing import Any, Literal, cast

from pydantic import BaseModel, Field
from sqlalchemy import BigInteger, ColumnElement, Connection, and_, case, func, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from orchestrator.activity import TERMINAL
from orchestrator.errors import NotFound
from schema import tables as t
from schema.models import TERMINAL as FINAL_STATES

MINUTE = 60
DAY = 86_400
STARTED = ("running", "succeeded", "failed", "timed_out")  # claimed: started_at is set
RAN = ("succeeded", "failed", "timed_out")  # ran to an end: a duration
EVERY_STATUS = tuple(sorted({*t.ACTIVE, *FINAL_STATES}))
SKIPPED_ATTEMPTS = ("skipped_open_breaker", "skipped_rate_limit")
Outcome = Literal["ok", "fallback", "rate_limited", "error"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "fallback", "rate_limited", "error")
PERCENTILES = (50, 99)


class floor_div(FunctionElement[int]):
    """floor(x / n) as an integer, for the positive times bucketed here."""

    type = BigInteger()
    name = "floor_div"
    inherit_cache = True


def _literal(compiler: SQLCompiler, n: Any, kw: dict[str, Any]) -> str:
    return str(compiler.process(n, **{**kw, "literal_binds": True}))


@compiles(floor_div)
def _floor_div(element: floor_div, compiler: SQLCompiler, **kw: Any) -> str:
    x, n = element.clauses  # SQLite: CAST truncates, which floors a positive number
    return f"CAST(({compiler.process(x, **kw)}) / {_literal(compiler, n, kw)} AS INTEGER)"


@compiles(floor_div, "postgresql")
def _floor_div_pg(element: floor_div, compiler: SQLCompiler, **kw: Any) -> str:
    x, n = element.clauses  # PostgreSQL's CAST rounds: floor first
    return f"CAST(FLOOR(({compiler.process(x, **kw)}) / {_literal(compiler, n, kw)}) AS BIGINT)"


# -- the answers --------------------------------------------------------------------------------

class LLMCalls(BaseModel):
    provider: str
    outcome: Outcome = Field(description="ok | fallback (ok, after another provider was tried "
                                         "first in the step) | rate_limited (429) | error")
    calls: list[int] = Field(description="calls that started in each minute of `t`")


class SystemSeries(BaseModel):
    now: float = Field(description="when the figures were read, epoch seconds")
    step_s: int = Field(description="the width of each point, seconds")
    t: list[float] = Field(description="each minute's start, epoch seconds, oldest first")
    lateness_p50_ms: list[float | None] = Field(
        description="beat ticks of the minute's slots: claim − slot, median, ms (null: none)")
    lateness_p99_ms: list[float | None] = Field(description="the same, 99th percentile, ms")
    lateness_samples: list[int] = Field(description="beat ticks in each minute's percentiles")
    ticks_finished: list[int] = Field(description="ticks that reached a final status")
    ticks_per_s: list[float] = Field(
        description="ticks finished per second of the minute gone by (the newest is partial)")
    llm_calls: list[LLMCalls] = Field(
        description="one series per provider and outcome seen in the window")


class TickDurations(BaseModel):
    t: list[float] = Field(description="each tick's claim, epoch seconds, oldest first")
    tick_id: list[int]
    status: list[str] = Field(description="succeeded | failed | timed_out")
    duration_ms: list[float] = Field(description="finished − claimed, ms")


class DailyUsage(BaseModel):
    t: list[float] = Field(description="each UTC day's start, epoch seconds, oldest first")
    day: list[int] = Field(description="floor(t / 86400)")
    input_tokens: list[int]
    output_tokens: list[int]
    cost_usd: list[float]
    llm_calls: list[int]


class StackSeries(BaseModel):
    stack_id: int
    now: float = Field(description="when the figures were read, epoch seconds")
    ticks: TickDurations = Field(description="the stack's last ticks that ran to an end")
    usage: DailyUsage = Field(description="what the stack spent each UTC day")


# -- the system ---------------------------------------------------------------------------------

def _percentile_rank(rn: ColumnElement[Any], n: ColumnElement[Any], q: int
                     ) -> ColumnElement[bool]:
    """rn is the nearest rank ⌈q·n/100⌉ (integers only: exact on every database)."""
    return and_(rn * 100 >= n * q, (rn - 1) * 100 < n * q)


def _lateness(conn: Connection, since: float, first: int
              ) -> dict[int, tuple[int, dict[int, float]]]:
    """Each minute's (beat ticks, {percentile: lateness ms})."""
    k = t.ticks.c
    minute = floor_div(k.scheduled_at, MINUTE)
    late = (k.started_at - k.scheduled_at) * 1000
    ranked = (select(minute.label("m"), late.label("v"),
                     func.row_number().over(partition_by=minute, order_by=late).label("rn"),
                     # the same window (one sort), every row of the minute in its frame
                     func.count().over(partition_by=minute, order_by=late,
                                       rows=(None, None)).label("n"))
              .where(k.status.in_(STARTED), k.scheduled_at >= since, k.trigger == "beat",
                     k.started_at.is_not(None))
              .subquery())
    r = ranked.c
    found: dict[int, tuple[int, dict[int, float]]] = {}
    for m, n, rn, v in conn.execute(
            select(r.m, r.n, r.rn, r.v)
            .where(or_(*(_percentile_rank(r.rn, r.n, q) for q in PERCENTILES)))):
        _, ms = found.setdefault(int(m) - first, (int(n), {}))
        for q in PERCENTILES:
            if rn == max(1, -(-q * n // 100)):
                ms[q] = round(float(v), 3)
    return found


def _finished(conn: Connection, since: float, horizon_s: float, first: int) -> dict[int, int]:
    k = t.ticks.c
    done = (select(floor_div(k.finished_at, MINUTE).label("m"))
            .where(k.status.in_(TERMINAL), k.scheduled_at >= since - horizon_s,
                   k.finished_at >= since)
            .subquery())
    return {int(m) - first: int(c) for m, c in conn.execute(
        select(done.c.m, func.count()).group_by(done.c.m))}


def _tick_floor(conn: Connection, after: float) -> int | None:
    """About the lowest id of the ticks scheduled since `after` (ids grow with the schedule):
    the earliest such tick of each status, one index seek each."""
    k = t.ticks.c
    ids = [conn.execute(select(k.id).where(k.status == status, k.scheduled_at >= after)
                        .order_by(k.scheduled_at).limit(1)).scalar() for status in EVERY_STATUS]
    found = [int(i) for i in ids if i is not None]
    return min(found) if found else None


def _calls(conn: Connection, since: float, horizon_s: float, first: int
           ) -> dict[tuple[str, Outcome], dict[int, int]]:
    floor = _tick_floor(conn, since - horizon_s)
    if floor is None:
        return {}
    a = t.llm_attempts.alias("a")
    f = t.llm_attempts.alias("f")  # the step's first attempt
    outcome = case(
        (a.c.status == "ok", case((f.c.provider != a.c.provider, "fallback"), else_="ok")),
        (a.c.status == "rate_limited", "rate_limited"),
        else_="error")
    joined = a.outerjoin(f, and_(f.c.tick_id == a.c.tick_id, f.c.step_id == a.c.step_id,
                                 f.c.seq == 0, f.c.tick_id >= floor))
    made = (select(floor_div(a.c.started_at, MINUTE).label("m"), a.c.provider.label("p"),
                   outcome.label("o"))
            .select_from(joined)
            .where(a.c.tick_id >= floor, a.c.started_at >= since,
                   a.c.status.not_in(SKIPPED_ATTEMPTS))
            .subquery())
    found: dict[tuple[str, Outcome], dict[int, int]] = {}
    for m, provider, kind, c in conn.execute(
            select(made.c.m, made.c.p, made.c.o, func.count())
            .group_by(made.c.m, made.c.p, made.c.o)):
        found.setdefault((str(provider), cast(Outcome, kind)), {})[int(m) - first] = int(c)
    return found


def system_series(conn: Connection, now: float, minutes: int, horizon_s: float
                  ) -> SystemSeries:
    """The System page's charts: the last `minutes` minutes as of `now`."""
    last = math.floor(now / MINUTE)
    first = last - minutes + 1
    since = float(first * MINUTE)
    late = _lateness(conn, since, first)
    finished = _finished(conn, since, horizon_s, first)
    calls = _calls(conn, since, horizon_s, first)
    span = range(minutes)
    seconds = [float(MINUTE)] * minutes
    seconds[-1] = max(1.0, now - last * MINUTE)
    done = [finished.get(i, 0) for i in span]
    order = {o: n for n, o in enumerate(OUTCOMES)}
    return SystemSeries(
        now=now, step_s=MINUTE, t=[float((first + i) * MINUTE) for i in span],
        lateness_p50_ms=[late[i][1].get(50) if i in late else None for i in span],
        lateness_p99_ms=[late[i][1].get(99) if i in late else None for i in span],
        lateness_samples=[late[i][0] if i in late else 0 for i in span],
        ticks_finished=done,
        ticks_per_s=[round(d / s, 6) for d, s in zip(done, seconds, strict=True)],
        llm_calls=[LLMCalls(provider=p, outcome=o, calls=[by.get(i, 0) for i in span])
                   for (p, o), by in sorted(calls.items(),
                                            key=lambda kv: (kv[0][0], order[kv[0][1]]))])


# -- a stack ------------------------------------------------------------------------------------

def stack_series(conn: Connection, stack_id: int, now: float, ticks: int, days: int
                 ) -> StackSeries:
    """The Stack page's charts: its last `ticks` ticks that ran, its last `days` UTC days."""
    s = t.stacks.c
    if conn.execute(select(s.id).where(s.id == stack_id, s.deleted_at.is_(None))).first() is None:
        raise NotFound(f"no stack with id {stack_id}")
    k = t.ticks.c
    ran = sorted(conn.execute(
        select(k.started_at, k.id, k.status, (k.finished_at - k.started_at) * 1000)
        .where(k.stack_id == stack_id, k.status.in_(RAN), k.started_at.is_not(None),
               k.finished_at.is_not(None))
        .order_by(k.id.desc()).limit(ticks)).all())
    today = math.floor(now / DAY)
    first = today - days + 1
    u = t.stack_usage.c
    spent = {int(r.day): r for r in conn.execute(
        select(u.day, u.input_tokens, u.output_tokens, u.cost_usd, u.llm_calls)
        .where(u.stack_id == stack_id, u.day >= first, u.day <= today))}
    span = range(first, today + 1)
    return StackSeries(
        stack_id=stack_id, now=now,
        ticks=TickDurations(t=[float(r[0]) for r in ran], tick_id=[int(r[1]) for r in ran],
                            status=[str(r[2]) for r in ran],
                            duration_ms=[round(float(r[3]), 3) for r in ran]),
        usage=DailyUsage(
            t=[float(d * DAY) for d in span], day=list(span),
            input_tokens=[int(spent[d].input_tokens) if d in spent else 0 for d in span],
            output_tokens=[int(spent[d].output_tokens) if d in spent else 0 for d in span],
            cost_usd=[round(float(spent[d].cost_usd), 6) if d in spent else 0.0 for d in span],
            llm_calls=[int(spent[d].llm_calls) if d in spent else 0 for d in span]))
