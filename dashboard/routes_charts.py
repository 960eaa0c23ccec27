"""The data behind the dashboard's charts (`dashboard.series` reads it; `/static/charts.js` draws
it on the System and Stack pages and fetches it again as ticks finish).

    GET /api/system/series?minutes=60                  per minute: beat lateness p50 / p99,
                                                       ticks finished per second, LLM calls by
                                                       provider and outcome
    GET /api/stacks/{id}/series?ticks=50&days=30       the stack's tick durations, and its
                                                       tokens and cost per UTC day

Open to visitors, like every read. Each answer is a few columns over one `t` column (epoch
seconds, oldest first), aggregated by the database on the reader pool. The System series reads
every row of its window, so one answer serves every visitor for `SHARED_S` seconds: any number
of open System pages cost one read per dashboard process that often.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Generic, TypeVar

from fastapi import APIRouter, Path, Query

from dashboard.errors import responses
from dashboard.series import StackSeries, SystemSeries, stack_series, system_series
from orchestrator.runtime import Runtime
from schema.clock import Clock

K = TypeVar("K")
V = TypeVar("V")

MAX_MINUTES = 360
MAX_TICKS = 200
MAX_DAYS = 90
SHARED_S = 2.0

Minutes = Annotated[int, Query(ge=1, le=MAX_MINUTES,
                               description="how many minutes, the current one last")]
Ticks = Annotated[int, Query(ge=1, le=MAX_TICKS,
                             description="how many of the stack's last ticks that ran")]
Days = Annotated[int, Query(ge=1, le=MAX_DAYS, description="how many UTC days, today last")]
StackId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the stack's id")]


class Shared(Generic[K, V]):
    """One answer per key for `ttl_s` seconds, shared by every request that asks meanwhile
    (those arriving while it is read wait for the same read)."""

    def __init__(self, clock: Clock, ttl_s: float) -> None:
        self.clock = clock
        self.ttl_s = ttl_s
        self._answers: dict[K, tuple[float, asyncio.Future[V]]] = {}

    async def get(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        now = self.clock.monotonic()
        held = self._answers.get(key)
        if held is None or not self._fresh(held, now):
            held = (now, asyncio.ensure_future(read()))
            self._answers = {k: v for k, v in self._answers.items()
                             if now - v[0] < self.ttl_s}  # forget the stale
            self._answers[key] = held
        # shielded: a visitor who leaves does not cancel the read the others wait for
        return await asyncio.shield(held[1])

    def _fresh(self, held: tuple[float, asyncio.Future[V]], now: float) -> bool:
        at, answer = held
        if now - at >= self.ttl_s:
            return False
        return not answer.done() or (not answer.cancelled() and answer.exception() is None)


def router(rt: Runtime) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["charts"])
    s = rt.settings
    # The longest a tick can take from its slot to its end: later ones are not looked for.
    horizon_s = s.max_attempts * (s.tick_timeout_s + s.lease_s)
    shared: Shared[int, SystemSeries] = Shared(rt.clock, SHARED_S)

    @api.get("/system/series", responses=responses(422))
    async def system_chart_series(minutes: Minutes = 60) -> SystemSeries:
        """Per minute over the last `minutes` (the current minute last, partial), from every
        worker's rows: beat lateness p50 and p99 (a beat tick's claim − its slot, by the
        minute of the slot), ticks finished per second, and LLM calls by provider and
        outcome (ok, fallback, rate_limited, error; skipped attempts are no calls)."""
        return await shared.get(minutes, lambda: rt.store.query(
            system_series, rt.clock.now(), minutes, horizon_s))

    @api.get("/stacks/{stack_id}/series", responses=responses(404, 422))
    async def stack_chart_series(stack_id: StackId, ticks: Ticks = 50, days: Days = 30
                                 ) -> StackSeries:
        """The durations (finished − claimed) of the stack's last `ticks` ticks that ran to
        an end, and its tokens, LLM calls and cost per UTC day over the last `days` days."""
        return await rt.store.query(stack_series, stack_id, rt.clock.now(), ticks, days)

    return api
