"""Read models: rows to the API's shapes, and the queries the API and CLI share."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, func, select

from schema import tables as t
from schema.models import (
    ArtifactOut,
    AttemptOut,
    Budget,
    MemoryOut,
    MessageOut,
    StackCounts,
    StackOut,
    StepOut,
    TickDetail,
    TickSummary,
    Usage,
    ts,
)

Row = Mapping[Any, Any]


def _ms(later: float | None, earlier: float | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier) * 1000, 3)


def tick_summary(row: Row) -> TickSummary:
    return TickSummary(
        id=row["id"], stack_id=row["stack_id"], slot=row["slot"], trigger=row["trigger"],
        status=row["status"], attempt=row["attempt"], reason=row["reason"],
        queued_at=ts(row["queued_at"]), scheduled_at=ts(row["scheduled_at"]),
        started_at=ts(row["started_at"]), finished_at=ts(row["finished_at"]),
        lateness_ms=_ms(row["started_at"], row["scheduled_at"]),
        duration_ms=_ms(row["finished_at"], row["started_at"]),
        input_tokens=row["input_tokens"], output_tokens=row["output_tokens"],
        cost_usd=round(row["cost_usd"], 8), trace_id=row.get("trace_id"),
    )


@functools.lru_cache(maxsize=4096)  # a fan-out's ticks share their slot's and queue times
def _iso(value: float | None) -> str | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat().replace("+00:00", "Z")


def tick_json(row: Row) -> dict[str, Any]:
    """`tick_summary(row).model_dump(mode="json")`, built directly: every tick event carries
    one, and the model round trip was a tenth of the fan-out's time at 1,000 stacks."""
    started, finished, scheduled = row["started_at"], row["finished_at"], row["scheduled_at"]
    return {
        "id": row["id"], "stack_id": row["stack_id"], "slot": row["slot"],
        "trigger": row["trigger"], "status": row["status"], "attempt": row["attempt"],
        "reason": row["reason"], "queued_at": _iso(row["queued_at"]),
        "scheduled_at": _iso(scheduled), "started_at": _iso(started),
        "finished_at": _iso(finished), "lateness_ms": _ms(started, scheduled),
        "duration_ms": _ms(finished, started), "input_tokens": row["input_tokens"],
        "output_tokens": row["output_tokens"], "cost_usd": round(row["cost_usd"], 8),
        "trace_id": row.get("trace_id"),
    }


def stack_out(row: Row, beat_interval: int, default_team: Sequence[str],
              counts: StackCounts | None = None, last_tick: Row | None = None,
              today: Usage | None = None, total: Usage | None = None) -> StackOut:
    return StackOut(
        id=row["id"], name=row["name"], goal=row["goal"],
        execution_state=row["execution_state"],
        interval_s=row["interval_s"] or beat_interval,
        team=orjson.loads(row["team"]) if row["team"] else list(default_team),
        pause_reason=row["pause_reason"], created_at=ts(row["created_at"]),
        updated_at=ts(row["updated_at"]),
        last_tick=tick_summary(last_tick) if last_tick is not None else None,
        counts=counts or StackCounts(),
        budget=Budget(tokens_per_day=row["budget_tokens_per_day"],
                      usd_per_day=row["budget_usd_per_day"]),
        usage_today=today or Usage(), usage_total=total or Usage(),
    )


FINAL_COUNTS = {"succeeded": "ticks_succeeded", "failed": "ticks_failed",
                "timed_out": "ticks_timed_out", "cancelled": "ticks_cancelled"}
SKIPPED_COUNTS = ("ticks_skipped_queued", "ticks_skipped_running")


def _counts(conn: Connection, stack_ids: Sequence[int] | None) -> dict[int, StackCounts]:
    """Tick counts per stack: the live ones (queued, running) from the ticks, the final ones
    from the per-day counters (`stack_usage`), which outlive retention and need no scan."""
    u = t.stack_usage.c
    sums = [func.sum(getattr(u, c)) for c in (*FINAL_COUNTS.values(), *SKIPPED_COUNTS)]
    q = select(u.stack_id, *sums).group_by(u.stack_id)
    live = (select(t.ticks.c.stack_id, t.ticks.c.status, func.count())
            .where(t.ticks.c.status.in_(t.ACTIVE))
            .group_by(t.ticks.c.stack_id, t.ticks.c.status))
    if stack_ids is not None:
        q = q.where(u.stack_id.in_(stack_ids))
        live = live.where(t.ticks.c.stack_id.in_(stack_ids))
    out: dict[int, StackCounts] = {}
    for stack_id, *ns in conn.execute(q):
        final = dict(zip(FINAL_COUNTS, (int(n or 0) for n in ns), strict=False))
        skipped = sum(int(n or 0) for n in ns[len(FINAL_COUNTS):])
        out[stack_id] = StackCounts(**final, skipped=skipped)
    for stack_id, status, n in conn.execute(live):
        setattr(out.setdefault(stack_id, StackCounts()), status, int(n))
    return out


def _last_ticks(conn: Connection, stack_ids: Sequence[int] | None) -> dict[int, Row]:
    latest = select(func.max(t.ticks.c.id)).group_by(t.ticks.c.stack_id)
    if stack_ids is not None:
        latest = latest.where(t.ticks.c.stack_id.in_(stack_ids))
    rows = conn.execute(select(t.ticks).where(t.ticks.c.id.in_(latest.scalar_subquery())))
    return {r["stack_id"]: r for r in rows.mappings()}


def _usage(conn: Connection, stack_ids: Sequence[int] | None, day: int | None
           ) -> dict[int, Usage]:
    u = t.stack_usage.c
    q = select(u.stack_id, func.sum(u.input_tokens), func.sum(u.output_tokens),
               func.sum(u.cost_usd), func.sum(u.llm_calls)).group_by(u.stack_id)
    if stack_ids is not None:
        q = q.where(u.stack_id.in_(stack_ids))
    if day is not None:
        q = q.where(u.day == day)
    return {sid: Usage(input_tokens=int(i), output_tokens=int(o), cost_usd=round(float(c), 8),
                       llm_calls=int(n)) for sid, i, o, c, n in conn.execute(q)}


BEAT_INTERVAL = "beat_interval"


def beat_interval(conn: Connection, default: int) -> int:
    """The beat interval the system runs at, as its beat recorded it (`default` when no beat
    has run yet): every process and command reads this one fact."""
    value = conn.execute(select(t.meta.c.value)
                         .where(t.meta.c.key == BEAT_INTERVAL)).scalar_one_or_none()
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def list_stacks(conn: Connection, default_interval: int, default_team: Sequence[str],
                ids: Sequence[int] | None = None, now: float | None = None) -> list[StackOut]:
    """The stacks (all, or `ids`); a stack without its own interval shows the beat's
    (`beat_interval`, with `default_interval` when no beat has recorded one)."""
    beat = beat_interval(conn, default_interval)
    q = select(t.stacks).where(t.stacks.c.deleted_at.is_(None)).order_by(t.stacks.c.id)
    if ids is not None:
        q = q.where(t.stacks.c.id.in_(ids))
    rows = list(conn.execute(q).mappings())
    wanted = [r["id"] for r in rows] if ids is not None else None
    counts, last = _counts(conn, wanted), _last_ticks(conn, wanted)
    total = _usage(conn, wanted, None)
    today = _usage(conn, wanted, int(now // 86_400)) if now is not None else {}
    return [stack_out(r, beat, default_team, counts.get(r["id"]), last.get(r["id"]),
                      today.get(r["id"]), total.get(r["id"])) for r in rows]


def get_stack(conn: Connection, stack_id: int, default_interval: int,
              default_team: Sequence[str], now: float | None = None) -> StackOut | None:
    found = list_stacks(conn, default_interval, default_team, ids=[stack_id], now=now)
    return found[0] if found else None


def list_ticks(conn: Connection, stack_id: int, limit: int = 50) -> list[TickSummary]:
    q = (select(t.ticks).where(t.ticks.c.stack_id == stack_id)
         .order_by(t.ticks.c.id.desc()).limit(limit))
    return [tick_summary(r) for r in conn.execute(q).mappings()]


def get_tick(conn: Connection, tick_id: int, default_team: Sequence[str]) -> TickDetail | None:
    row = conn.execute(select(t.ticks).where(t.ticks.c.id == tick_id)).mappings().first()
    if row is None:
        return None
    stack = conn.execute(select(t.stacks.c.name, t.stacks.c.team)
                         .where(t.stacks.c.id == row["stack_id"])).one()
    attempts: dict[int, list[AttemptOut]] = {}
    for a in conn.execute(select(t.llm_attempts).where(t.llm_attempts.c.tick_id == tick_id)
                          .order_by(t.llm_attempts.c.step_id, t.llm_attempts.c.seq)).mappings():
        attempts.setdefault(a["step_id"], []).append(AttemptOut.model_validate(a))
    steps = [
        StepOut(index=s["index"], agent=s["agent"], status=s["status"],
                started_at=ts(s["started_at"]), finished_at=ts(s["finished_at"]),
                duration_ms=_ms(s["finished_at"], s["started_at"]),
                prompt=orjson.loads(s["prompt"]) if s["prompt"] else None,
                output=orjson.loads(s["output"]) if s["output"] else None,
                raw_output=s["raw_output"], error=s["error"], attempts=attempts.get(s["id"], []))
        for s in conn.execute(select(t.steps).where(t.steps.c.tick_id == tick_id)
                              .order_by(t.steps.c.index)).mappings()
    ]
    if row["status"] == "running":  # the step under way has no journal row yet
        team = orjson.loads(stack.team) if stack.team else list(default_team)
        nxt = len(steps)
        if nxt < len(team):
            since = steps[-1].finished_at if steps else ts(row["started_at"])
            steps.append(StepOut(index=nxt, agent=team[nxt], status="running", started_at=since,
                                 finished_at=None, duration_ms=None, prompt=None, output=None,
                                 raw_output=None, error=None, attempts=[]))
    return TickDetail(**tick_summary(row).model_dump(), stack_name=stack.name, steps=steps)


def memory(conn: Connection, stack_id: int) -> list[MemoryOut]:
    q = select(t.memories).where(t.memories.c.stack_id == stack_id).order_by(t.memories.c.key)
    return [MemoryOut(key=r["key"], value=r["value"], updated_at=ts(r["updated_at"]))
            for r in conn.execute(q).mappings()]


def messages(conn: Connection, stack_id: int, limit: int = 50) -> list[MessageOut]:
    q = (select(t.messages).where(t.messages.c.stack_id == stack_id)
         .order_by(t.messages.c.id.desc()).limit(limit))
    return [MessageOut(id=r["id"], tick_id=r["tick_id"], agent=r["agent"], body=r["body"],
                       created_at=ts(r["created_at"])) for r in conn.execute(q).mappings()]


def artifacts(conn: Connection, stack_id: int, limit: int = 20) -> list[ArtifactOut]:
    q = (select(t.artifacts).where(t.artifacts.c.stack_id == stack_id)
         .order_by(t.artifacts.c.id.desc()).limit(limit))
    return [ArtifactOut(id=r["id"], tick_id=r["tick_id"], agent=r["agent"], title=r["title"],
                        content=r["content"], created_at=ts(r["created_at"]))
            for r in conn.execute(q).mappings()]


def stack_patch(row: Row) -> dict[str, Any]:
    """What a stack.updated event carries: the stack's own fields, without the tick counts."""
    return {"id": row["id"], "name": row["name"], "goal": row["goal"],
            "execution_state": row["execution_state"], "pause_reason": row["pause_reason"],
            "interval_s": row["interval_s"],
            "updated_at": datetime.fromtimestamp(row["updated_at"], UTC).isoformat(),
            "deleted": row["deleted_at"] is not None}
