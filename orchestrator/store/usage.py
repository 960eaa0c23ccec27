"""Accounting and budgets: what LLM attempts cost, summed per tick and per stack and day.

A step's spend is added to its tick and to the stack's row for the current UTC day in the
step's own transaction. A stack whose spend today reaches its daily budget (tokens or USD) is
paused with the reason `budget` in that same transaction; its running tick finishes, like any
pause. Playing it again the same day is refused until the budget is raised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, bindparam, or_, select, update

from orchestrator.store.abc import Dialect
from orchestrator.store.counts import day_of
from orchestrator.store.prepared import Prepared
from orchestrator.store.queue import cancel_rows
from orchestrator.store.reasons import REASON_BUDGET_CANCELLED
from orchestrator.store.spend import Spend
from schema import tables as t
from schema.events import STACK_UPDATED, TICK_FINISHED, EventKind
from schema.read import stack_patch, tick_json

BUDGET = "budget"
__all__ = ["day_of"]


Event = tuple[EventKind, int | None, int | None, dict[str, Any]]


def _add_usage(dialect: Dialect) -> Any:
    """Upsert today's spend, returning the day's tokens and USD (built once per dialect: a
    statement built per call costs more CPU than running it)."""
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


_ADD_USAGE = Prepared(_add_usage)


def record(conn: Connection, stack_id: int, spend: Spend, now: float) -> list[Event]:
    """Add `spend` to the stack's day (the tick's share is added by the fencing check, see
    queue.hold); pause the stack if that crosses its budget. Returns the events to write (the
    caller writes its outbox events last)."""
    if not spend:
        return []
    tokens, usd = _ADD_USAGE.one(conn, {  # type: ignore[misc]
        "b_stack": stack_id, "b_day": day_of(now), "calls": spend.calls,
        "tin": spend.input_tokens, "tout": spend.output_tokens, "cost": spend.cost_usd})
    return pause_if_crossed(conn, stack_id, tokens, usd, now)


def pause_if_crossed(conn: Connection, stack_id: int, tokens: int, usd: float, now: float
                     ) -> list[Event]:
    """Pause a running stack whose spend today (`tokens`, `usd`) reached its budget, and
    cancel its queued ticks; returns the events to write."""
    rows = _PAUSE_IF_CROSSED.dicts(conn, {"stack_id": stack_id, "tokens": tokens, "usd": usd,
                                          "now": now})
    if not rows:
        return []
    row = rows[0]
    cancelled = cancel_rows(conn, now, t.ticks.c.stack_id == stack_id, REASON_BUDGET_CANCELLED)
    return [(STACK_UPDATED, stack_id, None, stack_patch(row)),
            *((TICK_FINISHED, r["stack_id"], r["id"], tick_json(r)) for r in cancelled)]


def _crossed(tokens: Any, usd: Any) -> Any:
    s = t.stacks.c
    return or_(and_(s.budget_tokens_per_day.is_not(None), s.budget_tokens_per_day <= tokens),
               and_(s.budget_usd_per_day.is_not(None), s.budget_usd_per_day <= usd))


_PAUSE_IF_CROSSED = Prepared(
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
