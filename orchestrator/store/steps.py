"""Journaling steps: any number of step commits in one transaction, a few statements in all.

Each `StepWrite` is one agent step of one tick: its row, its LLM attempts, its effects (memory,
messages, artifacts, the stack becoming `completed`), its spend, its events and, for a tick's
last step, the tick's final status. `commit_steps` writes a group of them in one transaction
with one multi-row statement per kind of row (steps, attempts, memories, messages,
artifacts, events), one lease check for all the group's ticks, and one usage upsert per stack
(spend and tick counts together), so a step costs a share of a dozen statements, not a dozen.

Every write keeps its own outcome: a write whose attempt no longer holds its tick (the fencing
check: status running, same attempt) writes nothing and is answered False, as alone. Locks
are taken in the one order (the stacks' rows, in id order, FOR NO KEY UPDATE; then the ticks'
rows, in id order; then the rest), so two groups, or a group and a pause, never deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    Integer,
    String,
    Text,
    bindparam,
    case,
    func,
    insert,
    select,
    true,
    update,
)

from agents.team import StepResult
from orchestrator.store.abc import Claimed, Dialect
from orchestrator.store.counts import COLUMNS as COUNT_COLUMNS
from orchestrator.store.counts import column_of, day_of
from orchestrator.store.hooks import dialect_of
from orchestrator.store.outbox import emit_many
from orchestrator.store.prepared import Prepared
from orchestrator.store.spend import Spend
from orchestrator.store.usage import pause_if_crossed
from schema import tables as t
from schema.db import is_retry
from schema.events import STACK_UPDATED, STEP_FINISHED, TICK_FINISHED, EventKind
from schema.read import stack_patch, tick_json

Event = tuple[EventKind, int | None, int | None, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class StepWrite:
    """One step to journal; with `final` (status, reason), the tick ends with it."""

    tick: Claimed
    index: int
    result: StepResult
    started_at: float
    now: float
    lease_s: float
    final: tuple[str, str | None] | None = None


# -- the statements, each compiled once per dialect -------------------------------------------

_STACKS = Prepared(lambda d: select(t.stacks.c.id, t.stacks.c.budget_tokens_per_day,
                                    t.stacks.c.budget_usd_per_day)
                   .where(d.one_of(t.stacks.c.id, "ids")).order_by(t.stacks.c.id)
                   .with_for_update(key_share=True))
_TICKS = Prepared(lambda d: select(t.ticks.c.id).where(d.one_of(t.ticks.c.id, "ids"))
                  .order_by(t.ticks.c.id).with_for_update(key_share=True))
_DONE = Prepared(lambda d: select(t.steps.c.tick_id, t.steps.c.index, t.steps.c.attempt)
                 .where(d.one_of(t.steps.c.tick_id, "ids")))

HOLD = (("id", BigInteger()), ("attempt", Integer()), ("tin", BigInteger()),
        ("tout", BigInteger()), ("cost", Float()), ("status", String()), ("reason", Text()),
        ("fin", Float()), ("trace", String()), ("span", String()))


def _hold(d: Dialect) -> Any:
    """The fencing check of every write at once: a tick still running under the write's
    attempt gets its lease extended and the step's spend added, and ends when the write is
    its last step. A traced attempt's trace (trace id, root span id) is recorded on the way,
    for a later attempt to link to. Returns the ticks that held."""
    v, k = d.rows("h", HOLD), t.ticks.c
    ending = v.c.status.is_not(None)
    return (update(t.ticks)
            .where(k.id == v.c.id, k.attempt == v.c.attempt, k.status == "running")
            .values(input_tokens=k.input_tokens + v.c.tin,
                    output_tokens=k.output_tokens + v.c.tout, cost_usd=k.cost_usd + v.c.cost,
                    status=func.coalesce(v.c.status, k.status),
                    reason=case((ending, v.c.reason), else_=k.reason),
                    finished_at=func.coalesce(v.c.fin, k.finished_at),
                    trace_id=func.coalesce(v.c.trace, k.trace_id),
                    trace_span_id=func.coalesce(v.c.span, k.trace_span_id),
                    lease_expires_at=case(
                        (ending, None),
                        else_=d.lease_now() + bindparam("lease_s", type_=Float)))
            .returning(*t.ticks.c))


STEP = (("tick_id", BigInteger()), ("index", Integer()), ("agent", String()),
        ("status", String()), ("attempt", Integer()), ("started_at", Float()),
        ("finished_at", Float()), ("prompt", Text()), ("output", Text()),
        ("raw_output", Text()), ("error", Text()))
ATTEMPT = (("step_id", BigInteger()), ("tick_id", BigInteger()), ("seq", Integer()),
           ("provider", String()), ("model", String()), ("status", String()),
           ("latency_ms", Float()), ("input_tokens", Integer()), ("output_tokens", Integer()),
           ("cost_usd", Float()), ("error", Text()), ("retry_after_s", Float()),
           ("started_at", Float()))
MEMORY = (("stack_id", Integer()), ("key", String()), ("value", Text()),
          ("tick_id", BigInteger()), ("updated_at", Float()))
MESSAGE = (("stack_id", Integer()), ("tick_id", BigInteger()), ("agent", String()),
           ("body", Text()), ("created_at", Float()))
ARTIFACT = (("stack_id", Integer()), ("tick_id", BigInteger()), ("agent", String()),
            ("title", String()), ("content", Text()), ("created_at", Float()))
SPEND = ("input_tokens", "output_tokens", "cost_usd", "llm_calls")
USAGE = (("stack_id", Integer()), ("day", Integer()), ("input_tokens", BigInteger()),
         ("output_tokens", BigInteger()), ("cost_usd", Float()), ("llm_calls", Integer()),
         *((c, Integer()) for c in COUNT_COLUMNS))


def _insert(table: Any, name: str, columns: Sequence[tuple[str, Any]],
            returning: Sequence[Any] = ()) -> Prepared:
    def build(d: Dialect) -> Any:
        v = d.rows(name, columns)
        stmt = insert(table).from_select([c for c, _ in columns], select(*v.c))
        return stmt.returning(*returning) if returning else stmt
    return Prepared(build)


_INSERT_STEPS = _insert(t.steps, "s", STEP, (t.steps.c.id, t.steps.c.tick_id,
                                             t.steps.c.index))
_INSERT_ATTEMPTS = _insert(t.llm_attempts, "a", ATTEMPT)
_INSERT_MESSAGES = _insert(t.messages, "m", MESSAGE)
_INSERT_ARTIFACTS = _insert(t.artifacts, "r", ARTIFACT)


def _upsert_memories(d: Dialect) -> Any:
    v = d.rows("mem", MEMORY)
    stmt = d.insert(t.memories).from_select(
        [c for c, _ in MEMORY], select(*v.c).where(true()))  # SQLite: WHERE before ON CONFLICT
    return stmt.on_conflict_do_update(
        index_elements=["stack_id", "key"],
        set_={"value": stmt.excluded.value, "tick_id": stmt.excluded.tick_id,
              "updated_at": stmt.excluded.updated_at})


def _add_usage(d: Dialect) -> Any:
    """Each stack's day: the group's spend and tick counts added; returns the day's totals."""
    v, u = d.rows("u", USAGE), t.stack_usage.c
    stmt = d.insert(t.stack_usage).from_select([c for c, _ in USAGE],
                                               select(*v.c).where(true()))
    added = (*SPEND, *COUNT_COLUMNS)
    return (stmt.on_conflict_do_update(
        index_elements=["stack_id", "day"],
        set_={c: getattr(u, c) + getattr(stmt.excluded, c) for c in added})
        .returning(u.stack_id, u.day, u.input_tokens + u.output_tokens, u.cost_usd))


_UPSERT_MEMORIES = Prepared(_upsert_memories)
_ADD_USAGE = Prepared(_add_usage)
_COMPLETE = Prepared(
    update(t.stacks)
    .where(t.stacks.c.id == bindparam("stack_id"), t.stacks.c.execution_state == "running")
    .values(execution_state="completed", updated_at=bindparam("now"), pause_reason=None)
    .returning(*t.stacks.c))


# -- the group ---------------------------------------------------------------------------------

def commit_steps(conn: Connection, writes: Sequence[StepWrite]) -> list[bool]:
    """Journal `writes` in this transaction; one outcome each: False (nothing written) when
    that attempt no longer holds its tick."""
    if not writes:
        return []
    d = dialect_of(conn)
    budgets = {sid: (tok is not None or usd is not None) for sid, tok, usd in _STACKS.all(
        conn, {"ids": d.ids(sorted({w.tick.stack_id for w in writes}))})}
    outcome = [False] * len(writes)
    todo = list(range(len(writes)))
    if is_retry(conn):  # an earlier try may have committed; only its answer was lost
        done = set(_DONE.all(conn, {"ids": d.ids(sorted({w.tick.id for w in writes}))}))
        for i in todo:
            w = writes[i]
            if (w.tick.id, w.index, w.tick.attempt) in done:
                outcome[i] = True
        todo = [i for i in todo if not outcome[i]]
        if not todo:
            return outcome
    _TICKS.all(conn, {"ids": d.ids(sorted({writes[i].tick.id for i in todo}))})
    spends = {i: Spend.of(writes[i].result.attempts) for i in todo}
    held = hold([writes[i] for i in todo], [spends[i] for i in todo], conn)
    ok = [i for i in todo if (writes[i].tick.id, writes[i].tick.attempt) in held]
    for i in ok:
        outcome[i] = True
    if ok:
        _write(conn, d, [writes[i] for i in ok], [spends[i] for i in ok], held, budgets)
    return outcome


def hold(writes: Sequence[StepWrite], spends: Sequence[Spend], conn: Connection
         ) -> dict[tuple[int, int], dict[str, Any]]:
    """The fencing check of `writes`, their ticks' rows already locked: the ticks (by id and
    attempt) that their attempt still holds, after the update."""
    rows = [_hold_row(w, s) for w, s in zip(writes, spends, strict=True)]
    return {(r["id"], r["attempt"]): r for r in _HOLD.dicts(conn, {
        "lease_s": writes[0].lease_s, "now": writes[0].now,
        **dialect_of(conn).rows_params("h", HOLD, rows)})}


def _hold_row(w: StepWrite, spend: Spend) -> tuple[Any, ...]:
    status, reason = w.final if w.final is not None else (None, None)
    trace, span = w.tick.trace if w.tick.trace is not None else (None, None)
    return (w.tick.id, w.tick.attempt, spend.input_tokens, spend.output_tokens,
            spend.cost_usd, status, reason, w.now if w.final is not None else None, trace, span)


_HOLD = Prepared(_hold)


def _write(conn: Connection, d: Dialect, writes: list[StepWrite], spends: list[Spend],
           held: dict[tuple[int, int], dict[str, Any]], budgets: dict[int, bool]) -> None:
    steps = []
    for w in writes:
        r = w.result
        output = r.output.model_dump(mode="json") if r.output is not None else None
        steps.append((w.tick.id, w.index, r.agent, r.status, w.tick.attempt, w.started_at,
                      w.now, orjson.dumps(r.prompt).decode(),
                      orjson.dumps(output).decode() if output is not None else None,
                      r.raw_output, r.error))
    ids = {(tick, index): sid for sid, tick, index in _INSERT_STEPS.all(
        conn, d.rows_params("s", STEP, steps))}
    attempts, memories, messages, artifacts = [], {}, [], []
    for w in writes:
        tick, stack, fx = w.tick.id, w.tick.stack_id, w.result.effects
        step_id = ids[(tick, w.index)]
        attempts += [(step_id, tick, seq, a.provider, a.model, a.status, a.latency_ms,
                      a.input_tokens, a.output_tokens, a.cost_usd, a.error, a.retry_after_s,
                      a.started_at) for seq, a in enumerate(w.result.attempts)]
        for key, value in fx.memory.items():
            memories[(stack, key)] = (stack, key, value, tick, w.now)
        messages += [(stack, tick, w.result.agent, body, w.now) for body in fx.messages]
        artifacts += [(stack, tick, w.result.agent, title, content, w.now)
                      for title, content in fx.artifacts]
    if attempts:
        _INSERT_ATTEMPTS.run(conn, d.rows_params("a", ATTEMPT, attempts)).close()
    if memories:
        _UPSERT_MEMORIES.run(conn, d.rows_params("mem", MEMORY, list(memories.values()))).close()
    if messages:
        _INSERT_MESSAGES.run(conn, d.rows_params("m", MESSAGE, messages)).close()
    if artifacts:
        _INSERT_ARTIFACTS.run(conn, d.rows_params("r", ARTIFACT, artifacts)).close()
    ended = {w.tick.id: held[(w.tick.id, w.tick.attempt)] for w in writes
             if w.final is not None}
    totals = _add_usage_rows(conn, d, writes, spends, ended)
    after: dict[int, list[Event]] = {}  # events that follow a write's step.finished
    for w, spend in zip(writes, spends, strict=True):
        stack = w.tick.stack_id
        day = (stack, day_of(w.now))
        if spend and budgets.get(stack) and day in totals:
            tokens, usd = totals[day]
            after.setdefault(id(w), []).extend(
                pause_if_crossed(conn, stack, tokens, usd, w.now))
        if w.result.status == "succeeded" and w.result.effects.complete_stack:
            for row in _COMPLETE.dicts(conn, {"stack_id": stack, "now": w.now}):
                after.setdefault(id(w), []).append((STACK_UPDATED, stack, None,
                                                    stack_patch(row)))
    events: list[Event] = []
    for w in writes:
        events.append(_step_event(w))
        events.extend(after.get(id(w), ()))
        if w.tick.id in ended:
            row = ended[w.tick.id]
            events.append((TICK_FINISHED, row["stack_id"], row["id"], tick_json(row)))
    emit_many(conn, writes[-1].now, events)


def _add_usage_rows(conn: Connection, d: Dialect, writes: list[StepWrite],
                    spends: list[Spend], ended: dict[int, dict[str, Any]]
                    ) -> dict[tuple[int, int], tuple[int, float]]:
    """One upsert for the group: per (stack, day), what its steps spent and the ticks that
    ended. Returns each (stack, day)'s totals spent that day (tokens, USD)."""
    per: dict[tuple[int, int], list[Any]] = {}
    for w, s in zip(writes, spends, strict=True):
        row = per.setdefault((w.tick.stack_id, day_of(w.now)), [0, 0, 0.0, 0]
                             + [0] * len(COUNT_COLUMNS))
        if s:
            row[0] += s.input_tokens
            row[1] += s.output_tokens
            row[2] += s.cost_usd
            row[3] += s.calls
        tick = ended.get(w.tick.id)
        column = column_of(tick["status"], tick["reason"]) if tick is not None else None
        if column is not None:
            row[4 + COUNT_COLUMNS.index(column)] += 1
    rows = [(sid, day, *vals) for (sid, day), vals in sorted(per.items()) if any(vals)]
    if not rows:
        return {}
    return {(sid, day): (int(tokens), float(usd)) for sid, day, tokens, usd in
            _ADD_USAGE.all(conn, d.rows_params("u", USAGE, rows))}


def _step_event(w: StepWrite) -> Event:
    r = w.result
    return (STEP_FINISHED, w.tick.stack_id, w.tick.id, {
        "tick_id": w.tick.id, "stack_id": w.tick.stack_id, "index": w.index,
        "agent": r.agent, "status": r.status, "error": r.error,
        "duration_ms": round((w.now - w.started_at) * 1000, 3),
        "attempts": [{"provider": a.provider, "model": a.model, "status": a.status,
                      "latency_ms": a.latency_ms, "input_tokens": a.input_tokens,
                      "output_tokens": a.output_tokens, "cost_usd": a.cost_usd}
                     for a in r.attempts]})
