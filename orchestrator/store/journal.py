"""The step journal: what a tick has done so far.

A tick starts from its stack, the stack's memory and recent history, and the steps an earlier
attempt of it finished; a retried tick replays those from here and calls no model for them.
Steps are written by `steps.commit_steps` (a group of them in one transaction), each with its
LLM attempts, its effects and its events, after a fencing check that its attempt still holds
the tick.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import Connection, func, select

from agents.base import ArtifactView, MessageView, StackView
from agents.team import StepResult
from orchestrator.store.abc import Claimed, Dialect, Journal
from orchestrator.store.hooks import dialect_of
from orchestrator.store.prepared import Prepared
from orchestrator.store.steps import StepWrite, commit_steps
from schema import tables as t

__all__ = ["Journal"]


HISTORY = 5


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
    """Journal one step (see `steps.commit_steps`, which journals a group in one
    transaction); with `final` (status, reason), finalise the tick in the same transaction.
    Returns False, writing nothing, when this attempt no longer holds the tick."""
    tick = Claimed(tick_id, stack_id, None, attempt, 0.0)
    return commit_steps(conn, [StepWrite(tick, index, result, started_at, now, lease_s,
                                         final)])[0]
