"""/metrics: the Prometheus text exposition format (version 0.0.4), every name `tickwork_`.

Written by hand rather than through prometheus-client: every family is either read from the
database at scrape time (ticks, stacks, skips: the truth across all processes) or copied from
this process's `orchestrator.stats.Stats`, so there is nothing for a client library's
instrumentation to hold; a scrape is two grouped queries plus a copy of the counters. The
series published before (`tickwork_ticks`, `tickwork_stacks`, `tickwork_queue_depth`,
`tickwork_event_stream_clients`, `tickwork_info`) keep their names and integer values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import get_args

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import Connection, func, select

from dashboard.sse import EventTailer
from orchestrator.fleet import version as fleet_version
from orchestrator.runtime import Runtime
from orchestrator.stats import Snapshot
from orchestrator.store.reasons import REASON_PREV_QUEUED, REASON_PREV_RUNNING
from schema import tables as t
from schema.models import TERMINAL, AttemptStatus, ExecutionState, TickStatus
from schema.read import FINAL_COUNTS, SKIPPED_COUNTS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "tickwork_"
BREAKER_STATES = ("closed", "open", "half_open")

Labels = Mapping[str, str]
Sample = tuple[str, Labels, float]  # (suffix, labels, value)


@dataclass(frozen=True, slots=True)
class DbCounts:
    ticks: dict[str, int]  # status -> ticks
    skipped: dict[str, int]  # reason -> skipped ticks
    stacks: dict[str, int]  # execution state -> stacks (not deleted)


def read_counts(conn: Connection) -> DbCounts:
    """The database's part of a scrape: the live ticks (queued, running: an index range),
    the per-day counters of the finished ones, the stacks. Nothing scans the ticks table."""
    k, u = t.ticks.c, t.stack_usage.c
    ticks = {status: int(n) for status, n in conn.execute(
        select(k.status, func.count()).where(k.status.in_(t.ACTIVE)).group_by(k.status))}
    names = [*FINAL_COUNTS.values(), *SKIPPED_COUNTS]
    sums = conn.execute(select(*(func.coalesce(func.sum(getattr(u, c)), 0)
                                 for c in names))).one()
    total = dict(zip(names, (int(n) for n in sums), strict=True))
    for status, column in FINAL_COUNTS.items():
        ticks[status] = total[column]
    skipped = {REASON_PREV_QUEUED: total["ticks_skipped_queued"],
               REASON_PREV_RUNNING: total["ticks_skipped_running"]}
    ticks["skipped"] = sum(skipped.values())
    stacks = {state: int(n) for state, n in conn.execute(
        select(t.stacks.c.execution_state, func.count())
        .where(t.stacks.c.deleted_at.is_(None)).group_by(t.stacks.c.execution_state))}
    return DbCounts(ticks, skipped, stacks)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Exposition:
    """Collects families and writes them out: HELP, TYPE, then the samples."""

    def __init__(self) -> None:
        self._lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        full = PREFIX + name
        self._lines += [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"]
        for suffix, labels, value in samples:
            body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self._lines.append(f"{full}{suffix}{{{body}}} {_number(value)}" if body
                               else f"{full}{suffix} {_number(value)}")

    def histogram(self, name: str, help_text: str, buckets: list[tuple[float, int]],
                  total: float, count: int) -> None:
        samples: list[Sample] = [("_bucket", {"le": "+Inf" if math.isinf(le) else repr(le)}, n)
                                 for le, n in buckets]
        samples += [("_sum", {}, float(total)), ("_count", {}, count)]
        self.family(name, "histogram", help_text, samples)

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


@dataclass(frozen=True, slots=True)
class Process:
    """This process's part of a scrape."""

    stats: Snapshot
    worker_running: int
    concurrency: int
    event_clients: int
    llm: str
    simulated: bool
    version: str
    breakers: list[tuple[str, str, str, int]]  # (provider, model, state, failures)


def render(db: DbCounts, proc: Process) -> str:
    out = Exposition()
    out.family("ticks", "gauge", "Ticks by status: queued and running now, and every tick "
               "that reached each final status (counted as it did; retention does not lower it).",
               [("", {"status": s}, db.ticks.get(s, 0)) for s in get_args(TickStatus)])
    out.family("ticks_total", "counter", "Ticks that reached each final status, from the "
               "database (all processes).",
               [("", {"status": s}, db.ticks.get(s, 0))
                for s in get_args(TickStatus) if s in TERMINAL])
    out.family("ticks_skipped_total", "counter", "Skipped ticks by reason, from the database.",
               [("", {"reason": r}, n) for r, n in sorted(db.skipped.items())])
    out.family("stacks", "gauge", "Stacks (not deleted) by execution state.",
               [("", {"state": s}, db.stacks.get(s, 0)) for s in get_args(ExecutionState)])
    out.family("queue_depth", "gauge", "Ticks queued and not yet claimed.",
               [("", {}, db.ticks.get("queued", 0))])
    out.family("ticks_running", "gauge", "Ticks running now, on any worker.",
               [("", {}, db.ticks.get("running", 0))])
    out.family("worker_running_ticks", "gauge", "Ticks running in this process's worker.",
               [("", {}, proc.worker_running)])
    out.family("worker_concurrency_limit", "gauge", "Most ticks this process's worker runs "
               "at once.", [("", {}, proc.concurrency)])
    s = proc.stats
    out.histogram("tick_duration_seconds", "Claim to end of the ticks this process ran.",
                  s.duration, s.duration_sum, s.duration_count)
    out.histogram("beat_lateness_seconds", "Tick start minus its slot's fire time, observed "
                  "when this process claimed a beat tick.",
                  s.lateness, s.lateness_sum, s.lateness_count)
    out.histogram("work_lateness_seconds", "A beat tick's first step beginning minus its "
                  "slot's fire time (the start of work), in this process.",
                  s.work_lateness, s.work_lateness_sum, s.work_lateness_count)
    seen = dict.fromkeys(p for p, _ in s.llm_requests)
    out.family("llm_requests_total", "counter", "LLM attempts this process made, by provider "
               "and outcome (the attempt's status).",
               [("", {"provider": p, "outcome": o}, s.llm_requests.get((p, o), 0))
                for p in seen for o in get_args(AttemptStatus)])
    out.family("llm_fallbacks_total", "counter", "Steps answered by another model than the "
               "chain's first, by the provider that answered.",
               [("", {"provider": p}, n) for p, n in sorted(s.fallbacks.items())])
    out.family("llm_breaker_state", "gauge", "Each chain provider's circuit breaker: 1 for "
               "its current state.",
               [("", {"provider": p, "model": m, "state": st}, int(st == state))
                for p, m, state, _ in proc.breakers for st in BREAKER_STATES])
    out.family("llm_breaker_failures", "gauge", "Consecutive failed calls per chain provider.",
               [("", {"provider": p, "model": m}, f) for p, m, _, f in proc.breakers])
    out.family("event_stream_clients", "gauge", "Clients connected to the event stream.",
               [("", {}, proc.event_clients)])
    out.family("info", "gauge", "This process: its version and model.",
               [("", {"version": proc.version, "llm": proc.llm,
                      "simulated": str(proc.simulated).lower()}, 1)])
    return out.text()


def process_part(rt: Runtime, event_clients: int, version: str) -> Process:
    breakers: list[tuple[str, str, str, int]] = []
    for p in rt.chain.providers if rt.chain is not None else []:
        snap = p.breaker.snapshot()
        breakers.append((p.name, p.model, snap.state, snap.failures))
    return Process(stats=rt.stats.snapshot(rt.clock.monotonic()),
                   worker_running=rt.worker.running,
                   concurrency=rt.settings.max_concurrent_ticks, event_clients=event_clients,
                   llm=rt.llm_label, simulated=rt.llm.simulated, version=version,
                   breakers=breakers)


async def scrape(rt: Runtime, event_clients: int, version: str) -> str:
    """One scrape: the database's counts (off the event loop), this process's counters."""
    db = await rt.store.query(read_counts)
    for p in rt.chain.providers if rt.chain is not None else []:
        await p.breaker.refresh()  # a breaker the fleet shares: its state now
    return render(db, process_part(rt, event_clients, version))


PROMETHEUS_TEXT = CONTENT_TYPE


def router(rt: Runtime, tailer: EventTailer) -> APIRouter:
    api = APIRouter(tags=["system"])

    @api.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {PROMETHEUS_TEXT: {}}}})
    async def metrics() -> PlainTextResponse:
        """Prometheus text format."""
        body = await scrape(rt, tailer.clients, fleet_version())
        return PlainTextResponse(body, media_type=PROMETHEUS_TEXT)

    return api
