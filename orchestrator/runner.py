"""The tick runner: one tick, its agents in turn, each step journaled before the next.

Finished steps of an earlier attempt are replayed from the journal (no model is called for
them). A failed step fails the tick; the last step finalises it, in the step's transaction.
Before every LLM call the runner checks that the tick's lease still holds (`LeaseGuard`): a
tick whose lease has run out spends nothing more. Each attempt feeds its trace (`TickTrace`):
its stack, every step as it finishes (before it is journaled), and how it ended.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel
from sqlalchemy import Connection, select

from agents.base import Agent, TickContext
from agents.llm.base import LLM, Attempt, LLMRequest, LLMResponse
from agents.registry import AgentRegistry, UnknownAgent
from agents.team import run_step
from orchestrator import stacks
from orchestrator.stats import Stats
from orchestrator.store import queue
from orchestrator.store.abc import Claimed, Journal, Store
from orchestrator.telemetry import NoopTracing, TickTrace, Tracing
from schema import tables as t
from schema.clock import Clock

log = logging.getLogger("tickwork.runner")


def first_request(attempts: Sequence[Attempt], otherwise: float) -> float:
    """When the first of a step's LLM requests was about to go out (a skipped attempt sent
    none), else `otherwise`."""
    return next((a.started_at for a in attempts if not a.status.startswith("skipped")),
                otherwise)


class LeaseLost(Exception):
    """Another attempt owns the tick now, or this one's lease ran out; it stops without
    writing."""


class TickLease(Protocol):
    def valid(self) -> bool: ...

    def renew(self, since: float) -> None: ...


class _Always:
    def valid(self) -> bool:
        return True

    def renew(self, since: float) -> None:
        return None


class LeaseGuard:
    """The model, for one tick: refuses to call it once the tick's lease has run out."""

    def __init__(self, llm: LLM, lease: TickLease, tick: Claimed) -> None:
        self._llm = llm
        self._lease = lease
        self._tick = tick

    @property
    def label(self) -> str:
        return self._llm.label

    @property
    def simulated(self) -> bool:
        return self._llm.simulated

    async def complete(self, request: LLMRequest) -> LLMResponse:
        if not self._lease.valid():
            raise LeaseLost(f"tick {self._tick.id} attempt {self._tick.attempt}: its lease ran "
                            "out; stopping before the next LLM call")
        return await self._llm.complete(request)


class TickRunner:
    def __init__(self, store: Store, registry: AgentRegistry, llm: LLM, clock: Clock,
                 lease_s: float, stats: Stats | None = None,
                 tracing: Tracing | None = None) -> None:
        self._store = store
        self._tracing: Tracing = tracing or NoopTracing()
        self._stats = stats or Stats()
        self._registry = registry
        self._llm = llm
        self._clock = clock
        self._lease_s = lease_s

    def trace(self, tick: Claimed) -> TickTrace:
        """Begin the trace of this attempt of `tick` (it starts now)."""
        return self._tracing.tick(tick, self._clock.now())

    async def run(self, tick: Claimed, state: Journal | None = None,
                  lease: TickLease | None = None, trace: TickTrace | None = None) -> None:
        """Run `tick`; `state` is its journal when the claim already read it; `lease` says
        whether it may still go on (always, without one). `trace` is this attempt's, begun
        and ended by the caller (the worker); without one, the run traces itself."""
        if trace is not None:
            return await self._run(trace.tick, state, lease or _Always(), trace)
        trace = self.trace(tick)
        try:
            await self._run(trace.tick, state, lease or _Always(), trace)
        except LeaseLost as exc:
            trace.outcome("lease_lost", str(exc))
            raise
        except BaseException as exc:
            trace.outcome("error", repr(exc))
            raise
        finally:
            trace.end(self._clock.now())

    async def _run(self, tick: Claimed, state: Journal | None, lease: TickLease,
                   trace: TickTrace) -> None:
        if state is None:
            state = await self._store.load(tick)
        trace.stack(state.stack.name)
        try:
            team = self._registry.team(state.team)
        except UnknownAgent as exc:
            await self._store.transact(self._fail_stack, tick, str(exc), self._clock.now())
            trace.outcome("failed", str(exc))
            return
        ctx = TickContext(stack=state.stack, tick_id=tick.id, slot=tick.slot,
                          attempt=tick.attempt, memory=dict(state.memory),
                          recent_messages=state.messages, recent_artifacts=state.artifacts)
        llm = LeaseGuard(self._llm, lease, tick)
        last = len(team) - 1
        for index, agent in enumerate(team):
            if index in state.done:  # journaled by an earlier attempt: replay, don't call
                ctx.outputs[agent.name] = self._replay(agent, state.done[index][1])
                trace.replayed(index, agent.name, self._clock.now())
                if index == last:
                    await self._finish(tick, "succeeded", None, trace)
                continue
            if not await self._step(tick, ctx, index, agent, last, llm, lease, trace):
                return
        if not team:
            await self._finish(tick, "succeeded", None, trace)

    def _replay(self, agent: Agent, output: str) -> BaseModel:
        return agent.output_type.model_validate_json(output)

    async def _step(self, tick: Claimed, ctx: TickContext, index: int, agent: Agent,
                    last: int, llm: LLM, lease: TickLease, trace: TickTrace) -> bool:
        started = self._clock.now()
        seed = f"{tick.stack_id}:{tick.slot if tick.slot is not None else f't{tick.id}'}:" \
               f"{agent.name}"
        result = await run_step(agent, ctx, llm, seed)
        finished = self._clock.now()
        trace.step(index, result, started, finished)
        self._stats.step_finished(result.attempts)
        if index == 0:  # work started when its first LLM request was about to go out
            self._stats.work_started(tick, first_request(result.attempts, started))
        final: tuple[str, str | None] | None = None
        if result.status == "failed":
            final = ("failed", f"step {index + 1} ({agent.name}) failed: {result.error}")
        elif index == last:
            final = ("succeeded", None)
        since = self._clock.monotonic()
        held = await self._store.commit_step(tick, index, result, started, finished,
                                             self._lease_s, final)
        if not held:
            raise LeaseLost(f"tick {tick.id} attempt {tick.attempt} lost its lease")
        lease.renew(since)
        if final is not None:
            trace.outcome(*final)
        if result.output is not None:
            ctx.outputs[agent.name] = result.output
            ctx.memory.update(result.effects.memory)
        return result.status == "succeeded"

    async def _finish(self, tick: Claimed, status: str, reason: str | None,
                      trace: TickTrace) -> None:
        await self._store.finalize(tick, status, reason, self._clock.now())
        trace.outcome(status, reason)

    @staticmethod
    def _fail_stack(conn: Connection, tick: Claimed, reason: str, now: float) -> None:
        # The lock order: the stack's row first, then its tick.
        conn.execute(select(t.stacks.c.id).where(t.stacks.c.id == tick.stack_id)
                     .with_for_update())
        if queue.finalize(conn, tick.id, tick.attempt, "failed", reason, now) is not None:
            stacks.fail(conn, tick.stack_id, reason, now)

    async def finish(self, tick: Claimed, status: str, reason: str | None) -> None:
        """Finalise from outside the run (a timeout, a crash of the runner itself)."""
        await self._store.finalize(tick, status, reason, self._clock.now())
