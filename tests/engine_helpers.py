"""Helpers for the engine tests: stacks and rows, runtimes on the fake clock, scripted models.

`ScriptedLLM` answers through a script (or the simulated model) and records every call;
`GatedLLM` makes chosen calls wait until the test releases them, so a test can hold a tick in
the middle of a step and act (crash, pause, reap) at that exact point.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from agents.llm.base import Attempt, LLMRequest, LLMResponse
from agents.llm.latency import Latency
from agents.llm.sim import SimulatedLLM
from agents.registry import AgentRegistry
from orchestrator import stacks
from orchestrator.runtime import Runtime
from orchestrator.store import queue
from orchestrator.store.queue import Claimed
from schema import tables as t
from schema.clock import FakeClock
from schema.db import Database
from schema.models import StackCreate
from tests.conftest import make_settings, wait_for

BEAT = 10  # the beat interval every engine test uses


# -- stacks and rows -------------------------------------------------------------------------

def new_stack(db: Database, clock: FakeClock, name: str, *, goal: str = "",
              interval_s: int | None = None, team: list[str] | None = None,
              paused: bool = False) -> int:
    """Create a stack (a running one gets its start tick at once)."""
    spec = StackCreate(name=name, goal=goal, interval_s=interval_s, team=team, paused=paused)
    with db.write() as conn:
        row = stacks.create(conn, spec, beat_interval=BEAT, now=clock.now(),
                            agents=stacks.Agents(team or ()))
    return int(row["id"])


def ticks_of(db: Database, stack_id: int | None = None) -> list[dict[str, Any]]:
    q = select(t.ticks).order_by(t.ticks.c.id)
    if stack_id is not None:
        q = q.where(t.ticks.c.stack_id == stack_id)
    with db.read() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def tick_row(db: Database, tick_id: int) -> dict[str, Any]:
    with db.read() as conn:
        return dict(conn.execute(select(t.ticks).where(t.ticks.c.id == tick_id))
                    .mappings().one())


def stack_row(db: Database, stack_id: int) -> dict[str, Any]:
    with db.read() as conn:
        return dict(conn.execute(select(t.stacks).where(t.stacks.c.id == stack_id))
                    .mappings().one())


def steps_of(db: Database, tick_id: int) -> list[dict[str, Any]]:
    with db.read() as conn:
        return [dict(r) for r in conn.execute(
            select(t.steps).where(t.steps.c.tick_id == tick_id).order_by(t.steps.c.index)
        ).mappings()]


def attempts_of(db: Database, tick_id: int) -> list[dict[str, Any]]:
    with db.read() as conn:
        return [dict(r) for r in conn.execute(
            select(t.llm_attempts).where(t.llm_attempts.c.tick_id == tick_id)
            .order_by(t.llm_attempts.c.step_id, t.llm_attempts.c.seq)).mappings()]


def events_of(db: Database, *, tick_id: int | None = None, stack_id: int | None = None,
              kind: str | None = None) -> list[dict[str, Any]]:
    q = select(t.events).order_by(t.events.c.id)
    if tick_id is not None:
        q = q.where(t.events.c.tick_id == tick_id)
    if stack_id is not None:
        q = q.where(t.events.c.stack_id == stack_id)
    if kind is not None:
        q = q.where(t.events.c.kind == kind)
    with db.read() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def event_kinds(db: Database, tick_id: int) -> Counter[str]:
    return Counter(e["kind"] for e in events_of(db, tick_id=tick_id))


def count_rows(db: Database, table: Any, *where: Any) -> int:
    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where))
                   .scalar_one())


# -- driving the engine ----------------------------------------------------------------------

def settle(db: Database, clock: FakeClock) -> None:
    """Finish every queued tick at once (claim and finalise), so stacks have none active."""
    with db.write() as conn:
        for c in queue.claim(conn, "w-settle", 1000, clock.now(), 30.0):
            queue.finalize(conn, c.id, c.attempt, "succeeded", None, clock.now())


@contextlib.contextmanager
def build_runtime(db_url: str, clock: FakeClock, *, llm: Any = None,
                  registry: AgentRegistry | None = None, **overrides: Any) -> Iterator[Runtime]:
    """A Runtime on the fake clock with the given model and agents; not started."""
    rt = Runtime.build(make_settings(db_url, **overrides), clock, llm=llm, registry=registry,
                       env={})
    try:
        yield rt
    finally:
        rt.close()


async def raw_claim(db: Database, clock: FakeClock, worker_id: str = "w-gone", limit: int = 10,
                    lease_s: float = 30.0) -> list[Claimed]:
    """Claim as a worker that then vanishes: it never runs, heartbeats or finalises."""
    return await db.transact(queue.claim, worker_id, limit, clock.now(), lease_s)


async def run_queued(rt: Runtime, timeout: float = 20.0) -> list[Claimed]:
    """Claim what is queued with the runtime's worker and wait until every tick has ended."""
    claimed = await rt.worker.claim_once()
    await wait_for(lambda: rt.worker.running == 0, timeout, "the claimed ticks to end")
    return claimed


async def reap(rt: Runtime) -> tuple[int, int, int]:
    return await rt.reaper.reap_once()


def seed_of(request: LLMRequest) -> tuple[int, str, str]:
    """(stack_id, slot, agent) from the runner's seed "stack:slot:agent"."""
    stack_id, slot, agent = request.seed.split(":", 2)
    return int(stack_id), slot, agent


# -- models ----------------------------------------------------------------------------------

Script = Callable[[LLMRequest, int], "str | BaseException | None"]


class ScriptedLLM:
    """Answers each call with `script(request, n)` (n counts calls with the same seed, from 0):
    a string is the answer, an exception is raised, None lets the simulated model answer."""

    def __init__(self, clock: FakeClock, script: Script | None = None) -> None:
        self._clock = clock
        self._sim = SimulatedLLM(clock, Latency(0, 0))
        self.script = script
        self.calls: list[LLMRequest] = []

    @property
    def label(self) -> str:
        return "scripted (simulated)"

    @property
    def simulated(self) -> bool:
        return True

    def calls_by_seed(self) -> Counter[str]:
        return Counter(r.seed for r in self.calls)

    def agents_called(self, stack_id: int | None = None) -> list[str]:
        return [seed_of(r)[2] for r in self.calls
                if stack_id is None or seed_of(r)[0] == stack_id]

    async def complete(self, request: LLMRequest) -> LLMResponse:
        n = sum(1 for r in self.calls if r.seed == request.seed)
        self.calls.append(request)
        await self._before(request)
        answer = self.script(request, n) if self.script is not None else None
        if answer is None:
            return await self._sim.complete(request)
        if isinstance(answer, BaseException):
            raise answer
        attempt = Attempt(provider="script", model="scripted", status="ok", latency_ms=0.0,
                          started_at=self._clock.now(), input_tokens=1, output_tokens=1)
        return LLMResponse(text=answer, provider="script", model="scripted",
                           attempts=[attempt])

    async def _before(self, request: LLMRequest) -> None:
        return None


@dataclass
class Gate:
    request: LLMRequest
    opened: asyncio.Future[None]
    task: asyncio.Task[Any] | None


class GatedLLM(ScriptedLLM):
    """Calls matching `holds(request)` wait at a gate until `release` (or forever)."""

    def __init__(self, clock: FakeClock, script: Script | None = None,
                 holds: Callable[[LLMRequest], bool] = lambda r: True) -> None:
        super().__init__(clock, script)
        self.holds = holds
        self.waiting: list[Gate] = []

    async def _before(self, request: LLMRequest) -> None:
        if not self.holds(request):
            return
        gate = Gate(request, asyncio.get_running_loop().create_future(), asyncio.current_task())
        self.waiting.append(gate)
        try:
            await gate.opened
        finally:
            if gate in self.waiting:
                self.waiting.remove(gate)

    def waiting_for(self, agent: str, stack_id: int | None = None) -> bool:
        return any(seed_of(g.request)[2] == agent
                   and (stack_id is None or seed_of(g.request)[0] == stack_id)
                   for g in self.waiting)

    def release(self, gate: Gate | None = None) -> None:
        for g in [gate] if gate is not None else list(self.waiting):
            if not g.opened.done():
                g.opened.set_result(None)


# -- checks and concurrency -----------------------------------------------------------------

def in_threads(*fns: Callable[[], object]) -> list[BaseException]:
    """Run `fns` at the same moment, one thread each; returns what they raised."""
    barrier = threading.Barrier(len(fns))
    errors: list[BaseException] = []

    def go(fn: Callable[[], object]) -> None:
        barrier.wait()
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(fn,)) for fn in fns]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    return errors


def per_stack_slot(db: Database) -> dict[tuple[int, int], int]:
    """How many ticks each (stack, beat slot) has; ticks outside the beat's slots not counted."""
    out: dict[tuple[int, int], int] = {}
    for r in ticks_of(db):
        if r["slot"] is None:
            continue
        key = (r["stack_id"], r["slot"])
        out[key] = out.get(key, 0) + 1
    return out


def no_running_past_lease(db: Database, now: float) -> bool:
    return count_rows(db, t.ticks, t.ticks.c.status == "running",
                      t.ticks.c.lease_expires_at < now) == 0
