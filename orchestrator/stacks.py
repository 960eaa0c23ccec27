"""Commands on stacks — create, play, pause, delete, run a tick now — for the CLI and the API.

Each is one write transaction with its outbox events. A pause cancels the stack's queued ticks
in the same transaction (a running tick finishes). A stack that becomes running gets a tick
at once, so a new or resumed stack does not wait for the next beat.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from orchestrator.errors import Conflict, Invalid, NotFound
from orchestrator.outbox import emit_many
from orchestrator.queue import REASON_PAUSED, cancel_queued, enqueue
from orchestrator.usage import over_budget
from schema import tables as t
from schema.events import STACK_UPDATED
from schema.models import BudgetUpdate, StackCreate
from schema.read import stack_patch

REASON_DELETED = "stack deleted before the tick started"


def _live(conn: Connection, stack_id: int) -> dict[str, Any]:
    row = conn.execute(select(t.stacks).where(t.stacks.c.id == stack_id,
                                              t.stacks.c.deleted_at.is_(None))).mappings().first()
    if row is None:
        raise NotFound(f"no stack with id {stack_id}")
    return dict(row)


def _start_tick(conn: Connection, stack_id: int, now: float) -> None:
    """A stack that becomes running gets a tick at once. It belongs to no beat slot (like a
    tick run by hand), so a pause and play within one slot still resumes at once; the beat's
    next slot finds it queued or running and records a `skipped` row if it is not done."""
    enqueue(conn, stack_id, None, "start", now, now)


def create(conn: Connection, spec: StackCreate, *, beat_interval: int, now: float,
           check_team: Callable[[Iterable[str]], None]) -> dict[str, Any]:
    if spec.interval_s is not None and spec.interval_s % beat_interval:
        raise Invalid(f"interval_s must be a multiple of the beat interval ({beat_interval} s), "
                      f"got {spec.interval_s}")
    if spec.team is not None:
        try:
            check_team(spec.team)
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    if conn.execute(select(t.stacks.c.id).where(t.stacks.c.name == spec.name,
                                                t.stacks.c.deleted_at.is_(None))).first():
        raise Conflict(f"a stack named {spec.name!r} already exists")
    state = "paused" if spec.paused else "running"
    try:
        row = conn.execute(insert(t.stacks).values(
            name=spec.name, goal=spec.goal, execution_state=state, interval_s=spec.interval_s,
            team=orjson.dumps(spec.team).decode() if spec.team else None,
            pause_reason="created paused" if spec.paused else None,
            budget_tokens_per_day=spec.budget_tokens_per_day,
            budget_usd_per_day=spec.budget_usd_per_day,
            created_at=now, updated_at=now,
        ).returning(*t.stacks.c)).mappings().one()
    except IntegrityError:
        raise Conflict(f"a stack named {spec.name!r} already exists") from None
    emit_many(conn, now, [(STACK_UPDATED, row["id"], None, stack_patch(row))])
    if state == "running":
        _start_tick(conn, row["id"], now)
    return dict(row)


def _set_state(conn: Connection, ids: list[int], state: str, reason: str | None, now: float,
               *, cancel: str | None = None, **extra: Any) -> list[dict[str, Any]]:
    """Set the stacks' state; with `cancel`, cancel their queued ticks with that reason.

    Row locks come before the outbox lock (taken by the first event written): the stacks,
    then their queued ticks, then the events. A claim locks a tick, then writes its event;
    cancelling after writing the stack's event would wait for that tick while holding the
    outbox lock the claim waits for — a deadlock on PostgreSQL.
    """
    if not ids:
        return []
    rows = [dict(r) for r in conn.execute(
        update(t.stacks).where(t.stacks.c.id.in_(ids))
        .values(execution_state=state, pause_reason=reason, updated_at=now, **extra)
        .returning(*t.stacks.c)).mappings()]
    if cancel is not None:
        cancel_queued(conn, now, t.ticks.c.stack_id.in_(ids), reason=cancel)
    emit_many(conn, now, [(STACK_UPDATED, r["id"], None, stack_patch(r)) for r in rows])
    return rows


def pause(conn: Connection, stack_id: int, reason: str | None, now: float) -> dict[str, Any]:
    row = _live(conn, stack_id)
    if row["execution_state"] in ("completed", "failed"):
        raise Conflict(f"stack {stack_id} is {row['execution_state']}; play it to restart it")
    pause_many(conn, [stack_id], reason, now)
    return _live(conn, stack_id)


def pause_many(conn: Connection, ids: list[int], reason: str | None, now: float) -> int:
    rows = _set_state(conn, ids, "paused", reason or "paused", now, cancel=REASON_PAUSED)
    return len(rows)


def pause_all(conn: Connection, reason: str | None, now: float) -> int:
    ids = list(conn.execute(select(t.stacks.c.id).where(
        t.stacks.c.execution_state == "running", t.stacks.c.deleted_at.is_(None))).scalars())
    return pause_many(conn, ids, reason, now)


def play(conn: Connection, stack_id: int, *, now: float) -> dict[str, Any]:
    row = _live(conn, stack_id)
    if row["execution_state"] != "running":
        if over_budget(conn, [stack_id], now):
            raise Conflict(f"stack {stack_id} has spent its daily budget; raise the budget or "
                           "wait for the next UTC day")
        _set_state(conn, [stack_id], "running", None, now)
        _start_tick(conn, stack_id, now)
    return _live(conn, stack_id)


def play_all(conn: Connection, *, now: float) -> int:
    """Play every stack that is not running, except those that have spent today's budget."""
    ids = list(conn.execute(select(t.stacks.c.id).where(
        t.stacks.c.execution_state != "running", t.stacks.c.deleted_at.is_(None))).scalars())
    spent = over_budget(conn, ids, now)
    ids = [i for i in ids if i not in spent]
    for row in _set_state(conn, ids, "running", None, now):
        _start_tick(conn, row["id"], now)
    return len(ids)


def set_budget(conn: Connection, stack_id: int, budget: BudgetUpdate, now: float
               ) -> dict[str, Any]:
    """Set (or with None, remove) a stack's daily limits; takes effect at its next step."""
    _live(conn, stack_id)
    rows = conn.execute(update(t.stacks).where(t.stacks.c.id == stack_id).values(
        budget_tokens_per_day=budget.tokens_per_day, budget_usd_per_day=budget.usd_per_day,
        updated_at=now).returning(*t.stacks.c)).mappings().all()
    emit_many(conn, now, [(STACK_UPDATED, stack_id, None, stack_patch(rows[0]))])
    return _live(conn, stack_id)


def delete(conn: Connection, stack_id: int, now: float) -> None:
    _live(conn, stack_id)
    _set_state(conn, [stack_id], "paused", "deleted", now, cancel=REASON_DELETED,
               deleted_at=now)


def fail(conn: Connection, stack_id: int, reason: str, now: float) -> None:
    """A stack that cannot run (its team names an unknown agent) stops until fixed."""
    _set_state(conn, [stack_id], "failed", reason, now)


def run_now(conn: Connection, stack_id: int, now: float) -> dict[str, Any]:
    row = _live(conn, stack_id)
    if row["execution_state"] != "running":
        raise Conflict(f"stack {stack_id} is {row['execution_state']}; play it first")
    tick = enqueue(conn, stack_id, None, "manual", now, now)
    if tick is None:
        raise Conflict(f"stack {stack_id} already has a tick queued or running")
    return tick
