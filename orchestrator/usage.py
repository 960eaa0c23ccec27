"""Accounting and budgets: what LLM attempts cost, summed per tick and per stack and day.

A step's spend is added to its tick and to the stack's row for the current UTC day in the
step's own transaction. A stack whose spend today reaches its daily budget (tokens or USD) is
paused with the reason `budget` in that same transaction; its running tick finishes, like any
pause. Playing it again the same day is refused until the budget is raised.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, bindparam, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from agents.llm.base import Attempt
from orchestrator.queue import cancel_rows
from schema import tables as t
from schema.events import STACK_UPDATED, TICK_FINISHED, EventKind
from schema.read import stack_patch, tick_json

BUDGET = "budget"
REASON_BUDGET_CANCELLED = "stack paused by its budget before the tick started"
DAY_S = 86_400


def day_of(now: float) -> int:
    return int(now // DAY_S)


@dataclass(frozen=True, slots=True)
class Spend:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0

    @classmethod
    def of(cls, attempts: Iterable[Attempt]) -> Spend:
        tin = tout = calls = 0
        cost = 0.0
        for a in attempts:
            if a.status.startswith("skipped_"):
                continue  # never reached the provider
            calls += 1
            tin += a.input_tokens
            tout += a.output_tokens
            cost += a.cost_usd
        return cls(tin, tout, cost, calls)

    def __bool__(self) -> bool:
        return self.calls > 0


Event = tuple[EventKind, int | None, int | None, dict[str, Any]]


_TICK_SPEND = (update(t.ticks).where(t.ticks.c.id == bindparam("tick_id")).values(
    input_tokens=t.ticks.c.input_tokens + bindparam("tin"),
    output_tokens=t.ticks.c.output_tokens + bindparam("tout"),
    cost_usd=t.ticks.c.cost_usd + bindparam("cost")))


@functools.cache
def _add_usage(dialect_name: str) -> Any:
    """Upsert today's spend, returning the day's tokens and USD (built once per dialect: a
    statement built per call costs more CPU than running it)."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    u = t.stack_usage.c
    ins = dialect.insert(t.stack_usage).values(
        stack_id=bindparam("b_stack"), day=bindparam("b_day"), input_tokens=bindparam("tin"),
        output_tokens=bindparam("tout"), cost_usd=bindparam("cost"),
        llm_calls=bindparam("calls"))
    return ins.on_conflict_do_update(
        index_elements=["stack_id", "day"],
        set_={"input_tokens": u.input_tokens + ins.excluded.input_tokens,
              "output_tokens": u.output_tokens + ins.excluded.output_tokens,
              "cost_usd": u.cost_usd + ins.excluded.cost_usd,
              "llm_calls": u.llm_calls + ins.excluded.llm_calls},
    ).returning(u.input_tokens + u.output_tokens, u.cost_usd)


def record(conn: Connection, stack_id: int, tick_id: int, spend: Spend, now: float
           ) -> list[Event]:
    """Add `spend` to the tick and to the stack's day; pause the stack if that crosses its
    budget. Returns the events to write (the caller writes its outbox events last)."""
    if not spend:
        return []
    amounts = {"tin": spend.input_tokens, "tout": spend.output_tokens, "cost": spend.cost_usd}
    conn.execute(_TICK_SPEND, {"tick_id": tick_id, **amounts})
    tokens, usd = conn.execute(_add_usage(conn.dialect.name), {
        "b_stack": stack_id, "b_day": day_of(now), "calls": spend.calls, **amounts}).one()
    row = conn.execute(_PAUSE_IF_CROSSED, {"stack_id": stack_id, "tokens": tokens, "usd": usd,
                                           "now": now}).mappings().first()
    if row is None:
        return []
    cancelled = cancel_rows(conn, now, t.ticks.c.stack_id == stack_id, REASON_BUDGET_CANCELLED)
    return [(STACK_UPDATED, stack_id, None, stack_patch(row)),
            *((TICK_FINISHED, r["stack_id"], r["id"], tick_json(r)) for r in cancelled)]


def _crossed(tokens: Any, usd: Any) -> Any:
    s = t.stacks.c
    return or_(and_(s.budget_tokens_per_day.is_not(None), s.budget_tokens_per_day <= tokens),
               and_(s.budget_usd_per_day.is_not(None), s.budget_usd_per_day <= usd))


_PAUSE_IF_CROSSED = (
    update(t.stacks)
    .where(t.stacks.c.id == bindparam("stack_id"), t.stacks.c.execution_state == "running",
           _crossed(bindparam("tokens"), bindparam("usd")))
    .values(execution_state="paused", pause_reason=BUDGET, updated_at=bindparam("now"))
    .returning(*t.stacks.c))


def over_budget(conn: Connection, stack_ids: Sequence[int], now: float) -> set[int]:
    """The stacks among `stack_ids` whose spend today has reached their budget."""
    if not stack_ids:
        return set()
    u, s = t.stack_usage.c, t.stacks.c
    q = (select(s.id).join(t.stack_usage, and_(u.stack_id == s.id, u.day == day_of(now)))
         .where(s.id.in_(stack_ids), _crossed(u.input_tokens + u.output_tokens, u.cost_usd)))
    return set(conn.execute(q).scalars())
