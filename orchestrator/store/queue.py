"""The tick queue, in the database: fan-out, claim, heartbeat, release, finalise, reap.

Every function here is one piece of a transaction on a Connection a store opened, writes its
events to the outbox last, and returns what it changed. The tick row is the queue entry: a tick
is enqueued by inserting it, claimed by a compare-and-set from `queued` to `running` under a
lease, and finalised by a compare-and-set on (status, attempt) — the attempt number is the
fencing token each claim after a retry or a release gets anew.

Locks are taken in one order everywhere: the stack's row, then its ticks, then the rest. The
fan-out takes FOR KEY SHARE on the stacks it reads (a pause, FOR UPDATE, waits for it and then
cancels what it queued; a step commit, FOR NO KEY UPDATE, does not); a claim and the reaper skip
tick rows another transaction holds; a heartbeat locks its ticks in id order.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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

from orchestrator.store.abc import Claimed, Dialect
from orchestrator.store.counts import count_ticks
from orchestrator.store.hooks import dialect_of
from orchestrator.store.outbox import emit_many
from orchestrator.store.prepared import Prepared
from orchestrator.store.reasons import (
    REASON_LEASE_FAILED,
    REASON_LEASE_RETRY,
    REASON_PAUSED,
    REASON_PREV_QUEUED,
    REASON_PREV_RUNNING,
    REASON_RELEASED,
)
from orchestrator.store.spend import Spend
from schema import tables as t
from schema.db import touch
from schema.events import TICK_FINISHED, TICK_QUEUED, TICK_STARTED, TOPIC_QUEUE
from schema.read import tick_json

__all__ = ["REASON_PAUSED", "REASON_PREV_RUNNING", "Claimed"]


def _fan_out(dialect: Dialect) -> Any:
    active = (select(t.ticks.c.status)
              .where(t.ticks.c.stack_id == t.stacks.c.id,
                     or_(*(t.ticks.c.status == s for s in t.ACTIVE)))
              .limit(1).scalar_subquery())
    status = case((active.is_(None), literal("queued")), else_=literal("skipped"))
    reason = case((active == "queued", literal(REASON_PREV_QUEUED)),
                  (active == "running", literal(REASON_PREV_RUNNING)), else_=None)
    now = bindparam("now", type_=Float)
    # The stack's phase within the slot (TICKWORK_SPREAD_S): Fibonacci hashing of its id, so
    # consecutive stacks fall far apart and any run of them covers the spread evenly.
    phase = (t.stacks.c.id * 40503 % 65536) / 65536.0 * bindparam("spread", type_=Float)
    source = (
        select(t.stacks.c.id, bindparam("slot", type_=BigInteger),
               bindparam("fire", type_=Float) + phase, literal("beat"), status, literal(1),
               reason, now,
               case((active.is_(None), None), else_=now))
        .where(t.stacks.c.execution_state == "running",
               bindparam("fire_s", type_=BigInteger)
               % func.coalesce(t.stacks.c.interval_s, bindparam("interval", type_=Integer))
               == 0)
        # PostgreSQL: a pause (FOR UPDATE on the stack) waits for this fan-out to commit and
        # then cancels what it queued; a step commit (FOR NO KEY UPDATE) does not wait.
        .with_for_update(read=True, key_share=True, of=t.stacks)
    )
    return (dialect.insert(t.ticks)
            .from_select(["stack_id", "slot", "scheduled_at", "trigger", "status", "attempt",
                          "reason", "queued_at", "finished_at"], source)
            .on_conflict_do_nothing()
            .returning(*t.ticks.c))


_FAN_OUT = Prepared(_fan_out)


def fan_out(conn: Connection, slot: int, interval: int, now: float, spread_s: float = 0.0
            ) -> tuple[int, int]:
    """Insert one tick for `slot` for every due running stack, in one statement.

    Insert-if-absent on (stack_id, slot): two beats firing the same slot insert one row.
    A stack whose previous tick is still queued or running gets a `skipped` row instead.
    With `spread_s`, each stack's tick is scheduled at its own phase in [0, spread_s) after
    the slot (a worker starts it no sooner). Returns (queued, skipped).
    """
    fire = slot * interval
    rows = _FAN_OUT.dicts(conn, {"slot": slot, "fire": float(fire), "fire_s": fire,
                                 "interval": interval, "now": now, "spread": float(spread_s)})
    queued = sum(1 for r in rows if r["status"] == "queued")
    if queued < len(rows):
        count_ticks(conn, [r for r in rows if r["status"] == "skipped"], now)
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
    stmt = (dialect_of(conn).insert(t.ticks)
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


def _claim(dialect: Dialect) -> Any:
    pick = (select(t.ticks.c.id)
            .join(t.stacks, t.stacks.c.id == t.ticks.c.stack_id)
            .where(t.ticks.c.status == "queued", t.stacks.c.execution_state == "running")
            .order_by(t.ticks.c.scheduled_at, t.ticks.c.id)
            .limit(bindparam("lim"))
            .with_for_update(skip_locked=True, of=t.ticks))
    picked = dialect.locked_cte(pick, "picked")
    return (update(t.ticks)
            .where(t.ticks.c.id.in_(select(picked.c.id)), t.ticks.c.status == "queued")
            .values(status="running", worker_id=bindparam("worker"),
                    lease_expires_at=dialect.lease_now() + bindparam("lease_s", type_=Float),
                    started_at=func.coalesce(t.ticks.c.started_at, bindparam("now")))
            .returning(*t.ticks.c))


_CLAIM = Prepared(_claim)


def claim(conn: Connection, worker_id: str, limit: int, now: float, lease_s: float
          ) -> list[Claimed]:
    """Claim up to `limit` queued ticks of running stacks, oldest slot first, under a lease.
    Each comes with the trace its row records (an earlier attempt's), for the next to link."""
    if limit <= 0:
        return []
    rows = _CLAIM.dicts(conn, {"lim": limit, "worker": worker_id, "lease_s": lease_s,
                               "now": now})
    emit_many(conn, now, [(TICK_STARTED, r["stack_id"], r["id"], tick_json(r)) for r in rows])
    return [Claimed(r["id"], r["stack_id"], r["slot"], r["attempt"], r["scheduled_at"],
                    r["trigger"], r["cost_usd"],
                    (r["trace_id"], r["trace_span_id"]) if r["trace_id"] else None)
            for r in rows]


def _count(*where: Any) -> Any:
    return select(func.count()).select_from(t.ticks).where(*where).scalar_subquery()


_BALANCE = Prepared(select(
    _count(t.ticks.c.status == "queued"),
    _count(t.ticks.c.status == "running"),
    _count(t.ticks.c.status == "queued",
           t.ticks.c.queued_at < bindparam("overdue_before", type_=Float)),
    _count(t.ticks.c.status == "running", t.ticks.c.worker_id == bindparam("worker"))))


def balance(conn: Connection, worker_id: str, overdue_before: float
            ) -> tuple[int, int, int, int]:
    """Ticks (queued, running, queued since before `overdue_before`, running on this
    worker), for a fair claim."""
    row = _BALANCE.one(conn, {"overdue_before": overdue_before, "worker": worker_id})
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def heartbeat(conn: Connection, worker_id: str, held: Sequence[tuple[int, int]], now: float,
              lease_s: float) -> set[tuple[int, int]]:
    """Extend the leases of (tick_id, attempt) this worker holds; returns the pairs still held
    (an attempt the reaper requeued is not, even when this worker claimed the next one)."""
    if not held:
        return set()
    mine = (select(t.ticks.c.id)
            .where(t.ticks.c.id.in_([i for i, _ in held]), t.ticks.c.status == "running",
                   t.ticks.c.worker_id == worker_id)
            .order_by(t.ticks.c.id).with_for_update())
    still = {(i, a) for i, a in conn.execute(
        update(t.ticks).where(t.ticks.c.id.in_(mine.scalar_subquery()))
        .values(lease_expires_at=dialect_of(conn).lease_now() + lease_s)
        .returning(t.ticks.c.id, t.ticks.c.attempt), {"now": now})}
    return {(i, a) for i, a in held if (i, a) in still}


def _hold(dialect: Dialect) -> Any:
    return (update(t.ticks)
            .where(t.ticks.c.id == bindparam("tick_id"), t.ticks.c.status == "running",
                   t.ticks.c.attempt == bindparam("b_attempt"))
            .values(lease_expires_at=dialect.lease_now() + bindparam("lease_s", type_=Float),
                    input_tokens=t.ticks.c.input_tokens + bindparam("tin"),
                    output_tokens=t.ticks.c.output_tokens + bindparam("tout"),
                    cost_usd=t.ticks.c.cost_usd + bindparam("cost")))


_HOLD = Prepared(_hold)


def hold(conn: Connection, tick_id: int, attempt: int, now: float, lease_s: float,
         spend: Spend | None = None) -> bool:
    """The fencing check inside a step's transaction: is this attempt still the running one?
    Extends the lease as it checks, and adds the step's `spend` to the tick."""
    spend = spend or Spend()
    return _HOLD.rowcount(conn, {
        "tick_id": tick_id, "b_attempt": attempt, "now": now, "lease_s": lease_s,
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
    count_ticks(conn, rows, now)
    emit_many(conn, now, [(TICK_FINISHED, rows[0]["stack_id"], tick_id, tick_json(rows[0]))])
    return rows[0]


def release(conn: Connection, worker_id: str, ticks: Iterable[tuple[int, int]], now: float
            ) -> int:
    """A worker stopping gives its running ticks back to the queue at once. The attempt number
    moves on (it fences off anything the old attempt might still write) but no attempt is
    used up: `released` counts the hand-backs, and the reaper allows for them. The next claim
    resumes each from its journal."""
    pairs = list(ticks)
    if not pairs:
        return 0
    k = t.ticks.c
    rows = list(conn.execute(
        update(t.ticks)
        .where(or_(*(and_(k.id == i, k.attempt == a) for i, a in pairs)), k.status == "running",
               k.worker_id == worker_id)
        .values(status="queued", attempt=k.attempt + 1, released=k.released + 1,
                worker_id=None, lease_expires_at=None, reason=REASON_RELEASED)
        .returning(*t.ticks.c)).mappings())
    emit_many(conn, now, [(TICK_QUEUED, r["stack_id"], r["id"], tick_json(r)) for r in rows])
    if rows:
        touch(conn, TOPIC_QUEUE)
    return len(rows)


def _expired(conn: Connection) -> Any:
    k = t.ticks.c
    return and_(k.status == "running", k.lease_expires_at < dialect_of(conn).lease_now())


def reap(conn: Connection, now: float, max_attempts: int) -> tuple[int, int, int]:
    """Requeue (attempt + 1) or fail running ticks whose lease expired; cancel queued ticks of
    stacks that are no longer running. Returns (requeued, failed, cancelled). Ticks another
    transaction holds (a heartbeat, a step commit) are alive and skipped."""
    k = t.ticks.c
    used = k.attempt - k.released  # attempts used up; a released tick did not use one

    def expired(more: Any) -> Any:
        return (select(k.id).where(_expired(conn), more).order_by(k.id)
                .with_for_update(skip_locked=True).scalar_subquery())

    params = {"now": now}
    requeued = list(conn.execute(
        update(t.ticks).where(k.id.in_(expired(used < max_attempts)))
        .values(status="queued", attempt=k.attempt + 1, worker_id=None,
                lease_expires_at=None, reason=REASON_LEASE_RETRY)
        .returning(*t.ticks.c), params).mappings())
    failed = list(conn.execute(
        update(t.ticks).where(k.id.in_(expired(used >= max_attempts)))
        .values(status="failed", finished_at=now, lease_expires_at=None,
                reason=REASON_LEASE_FAILED)
        .returning(*t.ticks.c), params).mappings())
    not_running = exists().where(t.stacks.c.id == k.stack_id,
                                 t.stacks.c.execution_state != "running")
    # A tick just requeued for a stack that is no longer running is cancelled here too; its
    # events follow the order of the changes, so the last one a reader sees is "cancelled".
    cancelled = cancel_rows(conn, now, not_running, REASON_PAUSED)
    count_ticks(conn, failed, now)
    emit_many(conn, now,
              [(TICK_QUEUED, r["stack_id"], r["id"], tick_json(r)) for r in requeued]
              + [(TICK_FINISHED, r["stack_id"], r["id"], tick_json(r))
                 for r in failed + cancelled])
    if requeued:
        touch(conn, TOPIC_QUEUE)
    return len(requeued), len(failed), len(cancelled)


def cancel_rows(conn: Connection, now: float, where: Any, reason: str) -> list[Any]:
    """Cancel queued ticks matching `where` (and count them); the caller writes their
    events."""
    rows = list(conn.execute(
        update(t.ticks).where(t.ticks.c.status == "queued", where)
        .values(status="cancelled", finished_at=now, reason=reason)
        .returning(*t.ticks.c)).mappings())
    count_ticks(conn, rows, now)
    return rows


def cancel_queued(conn: Connection, now: float, where: Any, reason: str = REASON_PAUSED) -> int:
    rows = cancel_rows(conn, now, where, reason)
    emit_many(conn, now, [(TICK_FINISHED, r["stack_id"], r["id"], tick_json(r)) for r in rows])
    return len(rows)


def queue_depth(conn: Connection) -> int:
    return int(conn.execute(select(func.count()).select_from(t.ticks)
                             .where(t.ticks.c.status == "queued")).scalar_one())
