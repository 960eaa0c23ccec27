"""The tick runner: one tick, its agents in turn, each step journaled before the next.

Finished steps of an earlier attempt are replayed from the journal (no model is called for
them). A failed step fails the tick; the last step finalises it, in the step's transaction.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel
from sqlalchemy import Connection, select

from agents.base import Agent, TickContext
from agents.llm.base import LLM
from agents.registry import AgentRegistry, UnknownAgent
from agents.team import run_step
from orchestrator import journal, queue, stacks
from orchestrator.queue import Claimed
from orchestrator.stats import Stats
from schema import tables as t
from schema.clock import Clock
from schema.db import Database

log = logging.getLogger("tickwork.runner")


class LeaseLost(Exception):
    """Another attempt owns the tick now; this one stops without writing."""


class TickRunner:
    def __init__(self, db: Database, registry: AgentRegistry, llm: LLM, clock: Clock,
                 lease_s: float, stats: Stats | None = None) -> None:
        self._db = db
        self._stats = stats or Stats()
        self._registry = registry
        self._llm = llm
        self._clock = clock
        self._lease_s = lease_s

    async def run(self, tick: Claimed, state: journal.Journal | None = None) -> None:
        """Run `tick`; `state` is its journal when the claim already read it."""
        if state is None:
            state = await self._db.query(journal.load, tick.id, tick.stack_id, tick.attempt)
        try:
            team = self._registry.team(state.team)
        except UnknownAgent as exc:
            await self._db.transact(self._fail_stack, tick, str(exc), self._clock.now())
            return
        ctx = TickContext(stack=state.stack, tick_id=tick.id, slot=tick.slot,
                          attempt=tick.attempt, memory=dict(state.memory),
                          recent_messages=state.messages, recent_artifacts=state.artifacts)
        last = len(team) - 1
        for index, agent in enumerate(team):
            if index in state.done:  # journaled by an earlier attempt: replay, don't call
                ctx.outputs[agent.name] = self._replay(agent, state.done[index][1])
                if index == last:
                    await self._finish(tick, "succeeded", None)
                continue
            if not await self._step(tick, ctx, index, agent, last):
                return
        if not team:
            await self._finish(tick, "succeeded", None)

    def _replay(self, agent: Agent, output: str) -> BaseModel:
        return agent.output_type.model_validate_json(output)

    async def _step(self, tick: Claimed, ctx: TickContext, index: int, agent: Agent,
                    last: int) -> bool:
        started = self._clock.now()
        seed = f"{tick.stack_id}:{tick.slot if tick.slot is not None else f't{tick.id}'}:" \
               f"{agent.name}"
        result = await run_step(agent, ctx, self._llm, seed)
        self._stats.step_finished(result.attempts)
        final: tuple[str, str | None] | None = None
        if result.status == "failed":
            final = ("failed", f"step {index + 1} ({agent.name}) failed: {result.error}")
        elif index == last:
            final = ("succeeded", None)
        held = await self._db.transact_grouped(
            journal.commit_step, tick_id=tick.id, stack_id=tick.stack_id, attempt=tick.attempt,
            index=index, result=result, started_at=started, now=self._clock.now(),
            lease_s=self._lease_s, final=final)
        if not held:
            raise LeaseLost(f"tick {tick.id} attempt {tick.attempt} lost its lease")
        if result.output is not None:
            ctx.outputs[agent.name] = result.output
            ctx.memory.update(result.effects.memory)
        return result.status == "succeeded"

    async def _finish(self, tick: Claimed, status: str, reason: str | None) -> None:
        await self._db.transact_grouped(queue.finalize, tick.id, tick.attempt, status, reason,
                                self._clock.now())

    @staticmethod
    def _fail_stack(conn: Connection, tick: Claimed, reason: str, now: float) -> None:
        # Row locks before the outbox lock (see orchestrator.outbox): the stack first.
        conn.execute(select(t.stacks.c.id).where(t.stacks.c.id == tick.stack_id)
                     .with_for_update())
        if queue.finalize(conn, tick.id, tick.attempt, "failed", reason, now) is not None:
            stacks.fail(conn, tick.stack_id, reason, now)

    async def finish(self, tick: Claimed, status: str, reason: str | None) -> None:
        """Finalise from outside the run (a timeout, a crash of the runner itself)."""
        await self._finish(tick, status, reason)
