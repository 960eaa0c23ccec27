"""A process's /metrics: prometheus-client families, every name `tickwork_`.

Each endpoint gathers, in a `CollectorRegistry` of its own (never the library's global one):

- this process's instruments, `orchestrator.stats.Stats.registry`: tick duration, beat and
  work lateness, LLM requests by provider and outcome, fallbacks;
- this process as it is now, read at scrape time: its worker's running ticks and limit, its
  chain's breakers (`WorkerFigures`), a beat's leadership and last slot (`BeatFigures`), its
  version and model (`InfoFigure`);
- the whole system as the database says, read at scrape time (`DatabaseCounts`): ticks by
  status, skipped ticks by reason, stacks by state, queue depth, running ticks. Two grouped
  queries; nothing scans the ticks table.

`exposition` chooses by role: the database's families where they make sense (the beat and
the HTTP roles, not each of many workers: every worker would repeat the same fleet-wide
figures and cost the database a query per scrape), the worker's where a worker runs (and, as
always, on the dashboard). The names, types, labels and help are the ones users' dashboards
have read since the first /metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import get_args

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, func, select

from orchestrator.beat import Beat
from orchestrator.fleet import version as fleet_version
from orchestrator.runtime import Runtime
from orchestrator.slots import slot_time
from orchestrator.store import Store
from orchestrator.store.reasons import REASON_PREV_QUEUED, REASON_PREV_RUNNING
from schema import tables as t
from schema.models import TERMINAL, ExecutionState, TickStatus
from schema.read import FINAL_COUNTS, SKIPPED_COUNTS

BREAKER_STATES = ("closed", "open", "half_open")
TICK_STATUSES: tuple[str, ...] = get_args(TickStatus)
STACK_STATES: tuple[str, ...] = get_args(ExecutionState)


# -- the database's part ------------------------------------------------------------------


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


def read_now(store: Store) -> DbCounts:
    """`read_counts` in a read transaction of its own, here (a scrape runs off the loop)."""
    with store.read() as conn:
        return read_counts(conn)


def _gauge(name: str, help_text: str, labels: Sequence[str] = (),
           samples: Sequence[tuple[Sequence[str], float]] = ()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=list(labels))
    for values, value in samples:
        family.add_metric(list(values), value)
    return family


class DatabaseCounts(Collector):
    """Ticks, skips and stacks across all processes, read from the database at each scrape."""

    def __init__(self, read: Callable[[], DbCounts]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        db = self._read()
        yield _gauge("tickwork_ticks", "Ticks by status: queued and running now, and every "
                     "tick that reached each final status (counted as it did; retention does "
                     "not lower it).", ["status"],
                     [((s,), db.ticks.get(s, 0)) for s in TICK_STATUSES])
        total = CounterMetricFamily("tickwork_ticks_total", "Ticks that reached each final "
                                    "status, from the database (all processes).",
                                    labels=["status"])
        for s in TICK_STATUSES:
            if s in TERMINAL:
                total.add_metric([s], db.ticks.get(s, 0))
        yield total
        skipped = CounterMetricFamily("tickwork_ticks_skipped_total", "Skipped ticks by "
                                      "reason, from the database.", labels=["reason"])
        for reason, n in sorted(db.skipped.items()):
            skipped.add_metric([reason], n)
        yield skipped
        yield _gauge("tickwork_stacks", "Stacks (not deleted) by execution state.", ["state"],
                     [((s,), db.stacks.get(s, 0)) for s in STACK_STATES])
        yield _gauge("tickwork_queue_depth", "Ticks queued and not yet claimed.",
                     samples=[((), db.ticks.get("queued", 0))])
        yield _gauge("tickwork_ticks_running", "Ticks running now, on any worker.",
                     samples=[((), db.ticks.get("running", 0))])


# -- this process's part ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BreakerRow:
    provider: str
    model: str
    state: str  # closed | open | half_open
    failures: int


def breakers_of(rt: Runtime) -> list[BreakerRow]:
    """The chain's breakers as this process sees them now (a shared breaker: as of its last
    look at Redis; the dashboard refreshes them before a scrape)."""
    rows = []
    for p in rt.chain.providers if rt.chain is not None else []:
        snap = p.breaker.snapshot()
        rows.append(BreakerRow(p.name, p.model, snap.state, snap.failures))
    return rows


class WorkerFigures(Collector):
    """This process's worker and its chain's breakers, read at each scrape."""

    def __init__(self, running: Callable[[], int], concurrency: int,
                 breakers: Callable[[], Sequence[BreakerRow]]) -> None:
        self._running = running
        self._concurrency = concurrency
        self._breakers = breakers

    @classmethod
    def of(cls, rt: Runtime) -> WorkerFigures:
        return cls(lambda: rt.worker.running, rt.settings.max_concurrent_ticks,
                   partial(breakers_of, rt))

    def collect(self) -> Iterator[Metric]:
        yield _gauge("tickwork_worker_running_ticks", "Ticks running in this process's "
                     "worker.", samples=[((), self._running())])
        yield _gauge("tickwork_worker_concurrency_limit", "Most ticks this process's worker "
                     "runs at once.", samples=[((), self._concurrency)])
        breakers = self._breakers()
        yield _gauge("tickwork_llm_breaker_state", "Each chain provider's circuit breaker: 1 "
                     "for its current state.", ["provider", "model", "state"],
                     [((b.provider, b.model, st), int(st == b.state))
                      for b in breakers for st in BREAKER_STATES])
        yield _gauge("tickwork_llm_breaker_failures", "Consecutive failed calls per chain "
                     "provider.", ["provider", "model"],
                     [((b.provider, b.model), b.failures) for b in breakers])


class BeatFigures(Collector):
    """A beat's leadership and progress; nothing while this process runs no beat."""

    def __init__(self, beat: Beat) -> None:
        self._beat = beat

    def collect(self) -> Iterator[Metric]:
        beat = self._beat
        if beat.leadership is None:
            return
        yield _gauge("tickwork_beat_leader", "1 while this process's beat leads the fan-out, "
                     "0 while another beat does.", samples=[((), int(beat.leadership.leading))])
        last = beat.last_slot
        yield _gauge("tickwork_beat_last_slot_timestamp_seconds", "The fire time of the last "
                     "slot this process's beat fanned out (Unix seconds).",
                     samples=[((), slot_time(last, beat.interval))] if last is not None else [])


class InfoFigure(Collector):
    """`tickwork_info`: this process's version and model, always 1."""

    def __init__(self, version: str, llm: str, simulated: bool) -> None:
        self._labels = (version, llm, str(simulated).lower())

    def collect(self) -> Iterator[Metric]:
        yield _gauge("tickwork_info", "This process: its version and model.",
                     ["version", "llm", "simulated"], [(self._labels, 1)])


def exposition(rt: Runtime, *, database: bool, worker: bool,
               extra: Sequence[Collector] = ()) -> CollectorRegistry:
    """The registry one endpoint of `rt`'s process serves: the database's families if
    `database`, the worker's (its gauges, its Stats' instruments, its breakers) if `worker`,
    the beat's while it runs one, `extra`, and `tickwork_info`."""
    registry = CollectorRegistry()
    if database:
        registry.register(DatabaseCounts(partial(read_now, rt.store)))
    if worker:
        registry.register(WorkerFigures.of(rt))
        registry.register(rt.stats.registry)
    registry.register(BeatFigures(rt.beat))
    for collector in extra:
        registry.register(collector)
    registry.register(InfoFigure(fleet_version(), rt.llm_label, rt.llm.simulated))
    return registry
