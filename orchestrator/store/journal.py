"""The step journal: what a tick has done so far, and committing one step with its effects.

A step's row, its LLM attempts, its effects (memory, messages, artifacts, the stack becoming
`completed`) and its events commit in one transaction, after a fencing check that this attempt
still holds the tick. A retried tick reads the journal and replays finished steps from it.

A step commit locks its stack's row first (FOR NO KEY UPDATE: a fan-out's FOR KEY SHARE does not
wait for it, a pause's FOR UPDATE does), then its tick (the fencing check), then the rest: the
order every transaction follows, so a play or pause racing a step cannot deadlock with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, func, insert, select, update

from agents.base import ArtifactView, MessageView, StackView
from agents.team import StepResult
from orchestrator.store import usage
from orchestrator.store.abc import Claimed, Dialect, Journal
from orchestrator.store.hooks import dialect_of
from orchestrator.store.outbox import emit_many
from orchestrator.store.prepared import Prepared
from orchestrator.store.queue import finalize, hold
from orchestrator.store.spend import Spend
from schema import tables as t
from schema.db import is_retry
from schema.events import STACK_UPDATED, STEP_FINISHED
from schema.read import stack_patch

__all__ = ["Journal"]


# Built once, run on the driver's cursor (see schema.prepared): a tick runs dozens of these.
HISTORY = 5
_INSERT_STEP = Prepared(insert(t.steps).returning(t.steps.c.id))
_INSERT_ATTEMPT = Prepared(insert(t.llm_attempts))
_INSERT_MESSAGE = Prepared(insert(t.messages))
_INSERT_ARTIFACT = Prepared(insert(t.artifacts))
_COMPLETE = Prepared(update(t.stacks)
                     .where(t.stacks.c.id == bindparam("stack_id"),
                            t.stacks.c.execution_state == "running")
                     .values(execution_state="completed", updated_at=bindparam("now"),
                             pause_reason=None)
                     .returning(*t.stacks.c))


# FOR NO KEY UPDATE on PostgreSQL (SQLite has one writer and no row locks).
_LOCK_STACK = Prepared(select(t.stacks.c.id).where(t.stacks.c.id == bindparam("stack_id"))
                       .with_for_update(key_share=True))
_STEP_DONE = Prepared(select(t.steps.c.id).where(t.steps.c.tick_id == bindparam("tick_id"),
                                                 t.steps.c.index == bindparam("index"),
                                                 t.steps.c.attempt == bindparam("b_attempt")))


def _upsert(dialect: Dialect) -> Any:
    stmt = dialect.insert(t.memories)
    return stmt.on_conflict_do_update(
        index_elements=["stack_id", "key"],
        set_={"value": stmt.excluded.value, "tick_id": stmt.excluded.tick_id,
              "updated_at": stmt.excluded.updated_at})


_UPSERT_MEMORY = Prepared(_upsert)


def load(conn: Connection, tick_id: int, stack_id: int, attempt: int = 2) -> Journal:
    """The stack, its memory and recent history, and the steps this tick has finished (a
    first attempt has none: steps are journaled under the attempt that ran them)."""
    journal = load_many(conn, [Claimed(tick_id, stack_id, None, attempt, 0.0)]).get(tick_id)
    if journal is None:
        raise LookupError(f"stack {stack_id} does not exist")
    return journal


def _recent(table: Any, *cols: Any) -> Prepared:
    """The last HISTORY rows of `table` for each stack of `ids`, newest first."""
    def build(dialect: Dialect) -> Any:
        rank = func.row_number().over(partition_by=table.c.stack_id,
                                      order_by=table.c.id.desc()).label("rank")
        inner = (select(table.c.stack_id, *cols, rank)
                 .where(dialect.one_of(table.c.stack_id, "ids")).subquery())
        return (select(*inner.c).where(inner.c.rank <= HISTORY)
                .order_by(inner.c.stack_id, inner.c.rank))
    return Prepared(build)


_STACKS_OF = Prepared(lambda d: select(t.stacks.c.id, t.stacks.c.name, t.stacks.c.goal,
                                       t.stacks.c.team, t.stacks.c.execution_state)
                      .where(d.one_of(t.stacks.c.id, "ids")))
_MEMORIES_OF = Prepared(lambda d: select(t.memories.c.stack_id, t.memories.c.key,
                                         t.memories.c.value)
                        .where(d.one_of(t.memories.c.stack_id, "ids")))
_MESSAGES_OF = _recent(t.messages, t.messages.c.agent, t.messages.c.body)
_ARTIFACTS_OF = _recent(t.artifacts, t.artifacts.c.title, t.artifacts.c.content)
_DONE_OF = Prepared(lambda d: select(t.steps.c.tick_id, t.steps.c.index, t.steps.c.agent,
                                     t.steps.c.output)
                    .where(d.one_of(t.steps.c.tick_id, "ids"), t.steps.c.status == "succeeded"))


def load_many(conn: Connection, ticks: Iterable[Claimed]) -> dict[int, Journal]:
    """`load` for every claimed tick at once, in the claiming transaction: five statements
    for the whole batch, not four per tick. By tick id; a tick whose stack is gone is left
    out (its runner reads it again, and fails alone)."""
    claimed = list(ticks)
    if not claimed:
        return {}
    dialect = dialect_of(conn)
    ids = {"ids": dialect.ids(sorted({c.stack_id for c in claimed}))}
    stacks = {r[0]: r for r in _STACKS_OF.all(conn, ids)}
    mem: dict[int, dict[str, str]] = {}
    for sid, key, value in _MEMORIES_OF.all(conn, ids):
        mem.setdefault(sid, {})[key] = value
    msgs: dict[int, list[MessageView]] = {}
    for sid, agent, body, _ in _MESSAGES_OF.all(conn, ids):
        msgs.setdefault(sid, []).append(MessageView(agent, body))
    arts: dict[int, list[ArtifactView]] = {}
    for sid, title, content, _ in _ARTIFACTS_OF.all(conn, ids):
        arts.setdefault(sid, []).append(ArtifactView(title, content))
    retried = [c.id for c in claimed if c.attempt > 1]
    done: dict[int, dict[int, tuple[str, str]]] = {}
    if retried:
        for tid, i, a, o in _DONE_OF.all(conn, {"ids": dialect.ids(retried)}):
            done.setdefault(tid, {})[i] = (a, o)
    out: dict[int, Journal] = {}
    for c in claimed:
        row = stacks.get(c.stack_id)
        if row is None:
            continue
        sid, name, goal, team, state = row
        out[c.id] = Journal(StackView(sid, name, goal), orjson.loads(team) if team else None,
                            state, dict(mem.get(sid, {})), list(msgs.get(sid, [])),
                            list(arts.get(sid, [])), done.get(c.id, {}))
    return out


def commit_step(conn: Connection, *, tick_id: int, stack_id: int, attempt: int, index: int,
                result: StepResult, started_at: float, now: float, lease_s: float,
                final: tuple[str, str | None] | None = None) -> bool:
    """Journal one step; with `final` (status, reason), finalise the tick in the same
    transaction. Returns False, writing nothing, when this attempt no longer holds the tick."""
    spend = Spend.of(result.attempts)
    _LOCK_STACK.all(conn, {"stack_id": stack_id})
    if is_retry(conn) and _STEP_DONE.one(conn, {"tick_id": tick_id, "index": index,
                                                "b_attempt": attempt}):
        return True  # an earlier try of this transaction committed; only its answer was lost
    if not hold(conn, tick_id, attempt, now, lease_s, spend):
        return False
    output = result.output.model_dump(mode="json") if result.output is not None else None
    step_id = _INSERT_STEP.scalar(conn, {
        "tick_id": tick_id, "index": index, "agent": result.agent, "status": result.status,
        "attempt": attempt, "started_at": started_at, "finished_at": now,
        "prompt": orjson.dumps(result.prompt).decode(),
        "output": orjson.dumps(output).decode() if output is not None else None,
        "raw_output": result.raw_output, "error": result.error,
    })
    if result.attempts:
        _INSERT_ATTEMPT.many(conn, [
            {"step_id": step_id, "tick_id": tick_id, "seq": seq, "provider": a.provider,
             "model": a.model, "status": a.status, "latency_ms": a.latency_ms,
             "input_tokens": a.input_tokens, "output_tokens": a.output_tokens,
             "cost_usd": a.cost_usd, "error": a.error, "retry_after_s": a.retry_after_s,
             "started_at": a.started_at} for seq, a in enumerate(result.attempts)])
    fx = result.effects
    if fx.memory:
        _UPSERT_MEMORY.many(conn, [{"stack_id": stack_id, "key": k, "value": v, "tick_id": tick_id,
                               "updated_at": now} for k, v in fx.memory.items()])
    if fx.messages:
        _INSERT_MESSAGE.many(conn, [
            {"stack_id": stack_id, "tick_id": tick_id, "agent": result.agent, "body": body,
             "created_at": now} for body in fx.messages])
    if fx.artifacts:
        _INSERT_ARTIFACT.many(conn, [
            {"stack_id": stack_id, "tick_id": tick_id, "agent": result.agent, "title": title,
             "content": content, "created_at": now} for title, content in fx.artifacts])
    events: list[Any] = [(STEP_FINISHED, stack_id, tick_id, {
        "tick_id": tick_id, "stack_id": stack_id, "index": index, "agent": result.agent,
        "status": result.status, "error": result.error,
        "duration_ms": round((now - started_at) * 1000, 3),
        "attempts": [{"provider": a.provider, "model": a.model, "status": a.status,
                      "latency_ms": a.latency_ms, "input_tokens": a.input_tokens,
                      "output_tokens": a.output_tokens, "cost_usd": a.cost_usd}
                     for a in result.attempts]})]
    events.extend(usage.record(conn, stack_id, spend, now))
    if fx.complete_stack:
        for row in _COMPLETE.dicts(conn, {"stack_id": stack_id, "now": now}):
            events.append((STACK_UPDATED, stack_id, None, stack_patch(row)))
    emit_many(conn, now, events)
    if final is not None:
        finalize(conn, tick_id, attempt, final[0], final[1], now)
    return True
