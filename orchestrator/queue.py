"""The tick queue, in the database: fan-out, claim, heartbeat, finalise, reap.

Every function here is one piece of a transaction on a Connection the caller opened with
`Database.write()`, writes its events to the outbox last, and returns what it changed.
The tick row is the queue entry: a tick is enqueued by inserting it, claimed by a
compare-and-set from `queued` to `running` under a lease, and finalised by a compare-and-set
on (status, attempt) — the attempt number is the fencing token a retried tick gets anew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    Integer,
    and_,
    bindparam,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from orchestrator.outbox import emit_many
from orchestrator.spend import Spend
from schema import tables as t
from schema.db import touch
from schema.events import TICK_FINISHED, TICK_QUEUED, TICK_STARTED, TOPIC_QUEUE
from schema.prepared import Prepared
from schema.read import tick_json

REASON_PREV_QUEUED = "previous tick still queued"
REASON_PREV_RUNNING = "previous tick still running"
REASON_PAUSED = "stack paused before the tick started"
REASON_LEASE_RETRY = "lease expired; retrying"
REASON_LEASE_FAILED = "lease expired; no attempts left"


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    stack_id: int
    slot: int | None
    attempt: int
    scheduled_at: float


def _insert(conn: Connection) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(t.ticks)


def _fan_out(dialect_name: str) -> Any:
    active = (select(t.ticks.c.status)
              .where(t.ticks.c.stack_id == t.stacks.c.id,
                     or_(*(t.ticks.c.status == s for s in t.ACTIVE)))
              .limit(1).scalar_subquery())
    status = case((active.is_(None), literal("queued")), else_=literal("skipped"))
    reason = case((active == "queued", literal(REASON_PREV_QUEUED)),
                  (active == "running", literal(REASON_PREV_RUNNING)), else_=None)
    now = bindparam("now", type_=Float)
    source = (
        select(t.stacks.c.id, bindparam("slot", type_=BigInteger),
               bindparam("fire", type_=Float), literal("beat"), status, literal(1), reason, now,
               case((active.is_(None), None), else_=now))
        .where(t.stacks.c.execution_state == "running",
               bindparam("fire_s", type_=BigInteger)
               % func.coalesce(t.stacks.c.interval_s, bindparam("interval", type_=Integer))
               == 0)
        # Lock the stacks read (PostgreSQL): a pause waits for this fan-out to commit, then
        # cancels what it queued. SQLite serialises writers already.
        .with_for_update(read=True, of=t.stacks)
    )
    insert_ = postgresql.insert if dialect_name == "postgresql" else sqlite.insert
    return (insert_(t.ticks)
            .from_select(["stack_id", "slot", "scheduled_at", "trigger", "status", "attempt",
                          "reason", "queued_at", "finished_at"], source)
            .on_conflict_do_nothing()
            .returning(*t.ticks.c))


_FAN_OUT = Prepared(_fan_out)


def fan_out(conn: Connection, slot: int, interval: int, now: float) -> tuple[int, int]:
    """Insert one tick for `slot` for every due running stack, in one statement.

    Insert-if-absent on (stack_id, slot): two beats firing the same slot insert one row.
    A stack whose previous tick is still queued or running gets a `skipped` row instead.
    Returns (queued, skipped).
    """
    fire = slot * interval
    rows = _FAN_OUT.dicts(conn, {"slot": slot, "fire": float(fire), "fire_s": fire,
                                 "interval": interval, "now": now})
    queued = sum(1 for r in rows if r["status"] == "queued")
    emit_many(conn, now, [(TICK_QUEUED if r["status"] == "queued" else TICK_FINISHED,
                           r["stack_id"], r["id"], tick_json(r)) for r in rows])
    if queued:
        touch(conn, TOPIC_QUEUE)
    return queued, len(rows) - queued


def enqueue(conn: Connection, stack_id: int, slot: int | None, trigger: str,
            scheduled_at: float, now: float) -> dict[str, Any] | None:
    """Queue one tick for a stack now (its first tick, or one run by hand).

    Returns the tick, or None when the stack already has a tick for that slot or one queued
    or running (insert-if-absent on both unique constraints).
    """
    stmt = (_insert(conn)
            .values(stack_id=stack_id, slot=slot, scheduled_at=scheduled_at, trigger=trigger,
                    status="queued", attempt=1, queued_at=now)
            .on_conflict_do_nothing()
            .returning(*t.ticks.c))
    row = conn.execute(stmt).mappings().first()
    if row is None:
        return None
    emit_many(conn, now, [(TICK_QUEUED, stack_id, row["id"], tick_json(row))])
    touch(conn, TOPIC_QUEUE)
    return dict(row)


def _claim(dialect_name: str) -> Any:
    pick = (select(t.ticks.c.id)
            .join(t.stacks, t.stacks.c.id == t.ticks.c.stack_id)
            .where(t.ticks.c.status == "queued", t.stacks.c.execution_state == "running")
            .order_by(t.ticks.c.scheduled_at, t.ticks.c.id)
            .limit(bindparam("lim"))
            .with_for_update(skip_locked=True, of=t.ticks)
            .cte("picked"))
    if dialect_name == "postgresql":
        # Evaluated once: as a plain IN-subquery, PostgreSQL may rescan the locking subquery
        # for each row it updates, and the rescans pick other rows (more than `limit`).
        pick = pick.prefix_with("MATERIALIZED")
    return (update(t.ticks)
            .where(t.ticks.c.id.in_(select(pick.c.id)), t.ticks.c.status == "queued")
            .values(status="running", worker_id=bindparam("worker"),
                    lease_expires_at=bindparam("until"),
                    started_at=func.coalesce(t.ticks.c.started_at, bindparam("now")))
            .returning(*t.ticks.c))


_CLAIM = Prepared(_claim)


def claim(conn: Connection, worker_id: str, limit: int, now: float, lease_s: float
          ) -> list[Claimed]:
    """Claim up to `limit` queued ticks of running stacks, oldest slot first, under a lease."""
    if limit <= 0:
        return []
    rows = _CLAIM.dicts(conn, {"lim": limit, "worker": worker_id, "until": now + lease_s,
                               "now": now})
    emit_many(conn, now, [(TICK_STARTED, r["stack_id"], r["id"], tick_json(r)) for r in rows])
    return [Claimed(r["id"], r["stack_id"], r["slot"], r["attempt"], r["scheduled_at"])
            for r in rows]


def heartbeat(conn: Connection, worker_id: str, held: Sequence[tuple[int, int]], now: float,
              lease_s: float) -> set[tuple[int, int]]:
    """Extend the leases of (tick_id, attempt) this worker holds; returns the pairs still held
    (an attempt the reaper requeued is not, even when this worker claimed the next one)."""
    if not held:
        return set()
    ids = [i for i, _ in held]
    still = {(i, a) for i, a in conn.execute(
        update(t.ticks)
        .where(t.ticks.c.id.in_(ids), t.ticks.c.status == "running",
               t.ticks.c.worker_id == worker_id)
        .values(lease_expires_at=now + lease_s)
        .returning(t.ticks.c.id, t.ticks.c.attempt))}
    return {(i, a) for i, a in held if (i, a) in still}


_HOLD = Prepared(
    update(t.ticks)
    .where(t.ticks.c.id == bindparam("tick_id"), t.ticks.c.status == "running",
           t.ticks.c.attempt == bindparam("b_attempt"))
    .values(lease_expires_at=bindparam("until"),
            input_tokens=t.ticks.c.input_tokens + bindparam("tin"),
            output_tokens=t.ticks.c.output_tokens + bindparam("tout"),
            cost_usd=t.ticks.c.cost_usd + bindparam("cost")))


def hold(conn: Connection, tick_id: int, attempt: int, now: float, lease_s: float,
         spend: Spend | None = None) -> bool:
    """The fencing check inside a step's transaction: is this attempt still the running one?
    Extends the lease as it checks, and adds the step's `spend` to the tick."""
    spend = spend or Spend()
    return _HOLD.rowcount(conn, {
        "tick_id": tick_id, "b_attempt": attempt, "until": now + lease_s,
        "tin": spend.input_tokens, "tout": spend.output_tokens, "cost": spend.cost_usd}) == 1


_FINALIZE = Prepared(
    update(t.ticks)
    .where(t.ticks.c.id == bindparam("tick_id"), t.ticks.c.status == "running",
           t.ticks.c.attempt == bindparam("b_attempt"))
    .values(status=bindparam("b_status"), reason=bindparam("b_reason"),
            finished_at=bindparam("now"), lease_expires_at=None)
    .returning(*t.ticks.c))


def finalize(conn: Connection, tick_id: int, attempt: int, status: str, reason: str | None,
             now: float) -> dict[str, Any] | None:
    """Compare-and-set running → a terminal status, for this attempt only. Returns the tick,
    or None when it was already finalised or its lease was lost (nothing is written)."""
    rows = _FINALIZE.dicts(conn, {"tick_id": tick_id, "b_attempt": attempt, "b_status": status,
                                  "b_reason": reason, "now": now})
    if not rows:
        return None
    emit_many(conn, now, [(TICK_FINISHED, rows[0]["stack_id"], tick_id, tick_json(rows[0]))])
    return rows[0]


def release(conn: Connection, worker_id: str, tick_ids: Sequence[int], now: float) -> None:
    """A worker shutting down gives up its leases at once, so the reaper retries them now."""
    if tick_ids:
        conn.execute(update(t.ticks)
                     .where(t.ticks.c.id.in_(tick_ids), t.ticks.c.status == "running",
                            t.ticks.c.worker_id == worker_id)
                     .values(lease_expires_at=now))


def reap(conn: Connection, now: float, max_attempts: int) -> tuple[int, int, int]:
    """Requeue (attempt + 1) or fail running ticks whose lease expired; cancel queued ticks of
    stacks that are no longer running. Returns (requeued, failed, cancelled)."""
    expired = and_(t.ticks.c.status == "running", t.ticks.c.lease_expires_at < now)
    requeued = list(conn.execute(
        update(t.ticks).where(expired, t.ticks.c.attempt < max_attempts)
        .values(status="queued", attempt=t.ticks.c.attempt + 1, worker_id=None,
                lease_expires_at=None, reason=REASON_LEASE_RETRY)
        .returning(*t.ticks.c)).mappings())
    failed = list(conn.execute(
        update(t.ticks).where(expired)
        .values(status="failed", finished_at=now, lease_expires_at=None,
                reason=REASON_LEASE_FAILED)
        .returning(*t.ticks.c)).mappings())
    not_running = exists().where(t.stacks.c.id == t.ticks.c.stack_id,
                                 t.stacks.c.execution_state != "running")
    # A tick just requeued for a stack that is no longer running is cancelled here too; its
    # events follow the order of the changes, so the last one a reader sees is "cancelled".
    cancelled = cancel_rows(conn, now, not_running, REASON_PAUSED)
    emit_many(conn, now,
              [(TICK_QUEUED, r["stack_id"], r["id"], tick_json(r)) for r in requeued]
              + [(TICK_FINISHED, r["stack_id"], r["id"], tick_json(r))
                 for r in failed + cancelled])
    if requeued:
        touch(conn, TOPIC_QUEUE)
    return len(requeued), len(failed), len(cancelled)


def cancel_rows(conn: Connection, now: float, where: Any, reason: str) -> list[Any]:
    """Cancel queued ticks matching `where`; the caller writes their events."""
    return list(conn.execute(
        update(t.ticks).where(t.ticks.c.status == "queued", where)
        .values(status="cancelled", finished_at=now, reason=reason)
        .returning(*t.ticks.c)).mappings())


def cancel_queued(conn: Connection, now: float, where: Any, reason: str = REASON_PAUSED) -> int:
    rows = cancel_rows(conn, now, where, reason)
    emit_many(conn, now, [(TICK_FINISHED, r["stack_id"], r["id"], tick_json(r)) for r in rows])
    return len(rows)


def queue_depth(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(t.ticks)
                             .where(t.ticks.c.status == "queued")).scalar_one())

