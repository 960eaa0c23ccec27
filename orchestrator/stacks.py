"""Commands on stacks — create, play, pause, delete, run a tick now — for the CLI and the API.

Each is one write transaction with its outbox events. A pause cancels the stack's queued ticks
in the same transaction (a running tick finishes). A stack that becomes running gets a tick
at once, so a new or resumed stack does not wait for the next beat.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from orchestrator import fleet
from orchestrator.errors import Conflict, Invalid, NotFound
from orchestrator.store.outbox import emit_many
from orchestrator.store.queue import cancel_queued, enqueue
from orchestrator.store.reasons import REASON_DELETED, REASON_PAUSED
from orchestrator.store.usage import over_budget
from schema import tables as t
from schema.events import STACK_UPDATED
from schema.models import BudgetUpdate, StackCreate
from schema.read import beat_interval as recorded_beat
from schema.read import stack_patch

__all__ = ["REASON_DELETED"]


def _live(conn: Connection, stack_id: int, *, lock: bool = False) -> dict[str, Any]:
    q = select(t.stacks).where(t.stacks.c.id == stack_id, t.stacks.c.deleted_at.is_(None))
    row = conn.execute(q.with_for_update() if lock else q).mappings().first()
    if row is None:
        raise NotFound(f"no stack with id {stack_id}")
    return dict(row)


def _locked(conn: Connection, stack_id: int) -> dict[str, Any]:
    """The live stack, its row locked first (the lock order: the stack, then its ticks, then
    everything else), so a decision made on its state holds until commit."""
    return _live(conn, stack_id, lock=True)


def _lock_ids(conn: Connection, where: Any) -> list[int]:
    """Lock the live stacks matching `where`, in id order; their ids."""
    return list(conn.execute(select(t.stacks.c.id)
                             .where(where, t.stacks.c.deleted_at.is_(None))
                             .order_by(t.stacks.c.id).with_for_update()).scalars())


@dataclass(frozen=True, slots=True)
class Agents:
    """What a team is checked against: the agents every running worker can run (the fleet in
    the database says), or, while no worker runs, `local`: the agents this process knows."""

    local: Collection[str]
    lease_s: float = 30.0

    def check(self, conn: Connection, team: Sequence[str] | None, now: float) -> None:
        if not team:
            return
        running = fleet.known_agents(conn, now, self.lease_s)
        known = running if running is not None else set(self.local)
        missing = list(dict.fromkeys(n for n in team if n not in known))
        if not missing:
            return
        names = ", ".join(sorted(known)) or "none"
        where = ("the running workers know" if running is not None else "known")
        raise Invalid(f"unknown agent(s) {', '.join(missing)} ({where}: {names}); add an agent "
                      "with TICKWORK_AGENTS=package.module:Class or a tickwork.agents entry "
                      "point, for the workers as well")


def _start_tick(conn: Connection, stack_id: int, now: float) -> None:
    """A stack that becomes running gets a tick at once. It belongs to no beat slot (like a
    tick run by hand), so a pause and play within one slot still resumes at once; the beat's
    next slot finds it queued or running and records a `skipped` row if it is not done."""
    enqueue(conn, stack_id, None, "start", now, now)


def check_interval(interval_s: int | None, beat: int) -> None:
    """A stack's own interval must be a whole number of beats."""
    if interval_s is None or interval_s % beat == 0:
        return
    lower = interval_s // beat * beat
    near = " or ".join(f"{n} s" for n in (lower, lower + beat) if n >= beat)
    raise Invalid(f"a stack's interval must be a multiple of the beat interval, which is "
                  f"{beat} s: {interval_s} s is not ({near} would be)")


def create(conn: Connection, spec: StackCreate, *, beat_interval: int, now: float,
           agents: Agents) -> dict[str, Any]:
    """Create a stack. `beat_interval`: the configured beat, used when no beat has recorded
    the one the system runs at."""
    check_interval(spec.interval_s, recorded_beat(conn, beat_interval))
    agents.check(conn, spec.team, now)
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


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a play or pause did: the stack as it now is, whether anything changed, and a
    sentence saying so (the CLI prints it; the API returns it beside the stack)."""

    row: dict[str, Any]
    changed: bool
    message: str


def _named(row: dict[str, Any]) -> str:
    return f"stack {row['id']} {row['name']!r}"


def pause(conn: Connection, stack_id: int, reason: str | None, now: float) -> Outcome:
    """Pause a stack. An already paused stack keeps its reason unless `reason` is given."""
    row = _locked(conn, stack_id)
    state = row["execution_state"]
    if state in ("completed", "failed"):
        raise Conflict(f"stack {stack_id} is {state}; play it to restart it")
    if state == "paused":
        if reason is None or reason == row["pause_reason"]:
            return Outcome(row, False, f"{_named(row)} was already paused "
                                       f"({row['pause_reason'] or 'no reason given'}); "
                                       "nothing changed")
        _set_state(conn, [stack_id], "paused", reason, now)
        return Outcome(_live(conn, stack_id), True,
                       f"{_named(row)} was already paused; its reason is now {reason!r}")
    pause_many(conn, [stack_id], reason, now)
    row = _live(conn, stack_id)
    return Outcome(row, True, f"{_named(row)} paused ({row['pause_reason']})")


def pause_many(conn: Connection, ids: list[int], reason: str | None, now: float) -> int:
    rows = _set_state(conn, ids, "paused", reason or "paused", now, cancel=REASON_PAUSED)
    return len(rows)


def pause_all(conn: Connection, reason: str | None, now: float) -> int:
    ids = _lock_ids(conn, t.stacks.c.execution_state == "running")
    return pause_many(conn, ids, reason, now)


def _check_playable(conn: Connection, row: dict[str, Any], now: float, agents: Agents) -> None:
    if over_budget(conn, [row["id"]], now):
        raise Conflict(f"stack {row['id']} has spent its daily budget; raise the budget or "
                       "wait for the next UTC day")
    agents.check(conn, orjson.loads(row["team"]) if row["team"] else None, now)


def play(conn: Connection, stack_id: int, *, now: float, agents: Agents) -> Outcome:
    """Set a stack running and queue its tick at once; a running stack stays as it is."""
    row = _locked(conn, stack_id)
    if row["execution_state"] == "running":
        return Outcome(row, False, f"{_named(row)} was already running; nothing changed")
    _check_playable(conn, row, now, agents)
    _set_state(conn, [stack_id], "running", None, now)
    _start_tick(conn, stack_id, now)
    row = _live(conn, stack_id)
    return Outcome(row, True, f"{_named(row)} is running; its next tick is queued")


def play_all(conn: Connection, *, now: float) -> int:
    """Play every stack that is not running, except those that have spent today's budget."""
    ids = _lock_ids(conn, t.stacks.c.execution_state != "running")
    spent = over_budget(conn, ids, now)
    ids = [i for i in ids if i not in spent]
    for row in _set_state(conn, ids, "running", None, now):
        _start_tick(conn, row["id"], now)
    return len(ids)


def set_budget(conn: Connection, stack_id: int, budget: BudgetUpdate, now: float
               ) -> dict[str, Any]:
    """Set (or with None, remove) a stack's daily limits; takes effect at its next step."""
    _locked(conn, stack_id)
    rows = conn.execute(update(t.stacks).where(t.stacks.c.id == stack_id).values(
        budget_tokens_per_day=budget.tokens_per_day, budget_usd_per_day=budget.usd_per_day,
        updated_at=now).returning(*t.stacks.c)).mappings().all()
    emit_many(conn, now, [(STACK_UPDATED, stack_id, None, stack_patch(rows[0]))])
    return _live(conn, stack_id)


def set_team(conn: Connection, stack_id: int, team: list[str] | None, now: float, *,
             agents: Agents) -> dict[str, Any]:
    """Give a stack another team (None: the default one); its next tick runs it."""
    _locked(conn, stack_id)
    agents.check(conn, team, now)
    rows = conn.execute(update(t.stacks).where(t.stacks.c.id == stack_id).values(
        team=orjson.dumps(team).decode() if team else None, updated_at=now,
    ).returning(*t.stacks.c)).mappings().all()
    emit_many(conn, now, [(STACK_UPDATED, stack_id, None, stack_patch(rows[0]))])
    return dict(rows[0])


def delete(conn: Connection, stack_id: int, now: float) -> None:
    _locked(conn, stack_id)
    _set_state(conn, [stack_id], "paused", "deleted", now, cancel=REASON_DELETED,
               deleted_at=now)


def fail(conn: Connection, stack_id: int, reason: str, now: float) -> None:
    """A stack that cannot run (its team names an unknown agent) stops until fixed."""
    _set_state(conn, [stack_id], "failed", reason, now)


def run_now(conn: Connection, stack_id: int, now: float) -> dict[str, Any]:
    row = _locked(conn, stack_id)
    if row["execution_state"] != "running":
        raise Conflict(f"stack {stack_id} is {row['execution_state']}; play it first")
    tick = enqueue(conn, stack_id, None, "manual", now, now)
    if tick is None:
        raise Conflict(f"stack {stack_id} already has a tick queued or running")
    return tick
