"""Tick counts per stack and UTC day, kept as ticks reach a final status.

Each stack's row for the day (`stack_usage`, which also holds its spend) is incremented in the
transaction that finishes, skips or cancels a tick, so reading how many ticks a stack (or the
whole system) ever had is a sum over a few rows per stack, however many ticks there are, and
survives the retention that deletes old ticks. Only that stack's row is locked, so no two
stacks' transactions wait on each other.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, bindparam

from orchestrator.store.abc import Dialect
from orchestrator.store.prepared import Prepared
from orchestrator.store.reasons import REASON_PREV_RUNNING
from schema import tables as t

DAY_S = 86_400

# A final status (and, for a skip, why) -> its column in stack_usage.
COLUMNS = ("ticks_succeeded", "ticks_failed", "ticks_timed_out", "ticks_cancelled",
           "ticks_skipped_queued", "ticks_skipped_running")


def day_of(now: float) -> int:
    return int(now // DAY_S)


def column_of(status: str, reason: str | None) -> str | None:
    if status == "skipped":
        return "ticks_skipped_running" if reason == REASON_PREV_RUNNING \
            else "ticks_skipped_queued"
    name = f"ticks_{status}"
    return name if name in COLUMNS else None


def _add_counts(dialect: Dialect) -> Any:
    u = t.stack_usage.c
    ins = dialect.insert(t.stack_usage).values(
        stack_id=bindparam("b_stack"), day=bindparam("b_day"),
        **{c: bindparam(f"n_{c}") for c in COLUMNS})
    return ins.on_conflict_do_update(
        index_elements=["stack_id", "day"],
        set_={c: getattr(u, c) + getattr(ins.excluded, c) for c in COLUMNS})


_ADD_COUNTS = Prepared(_add_counts)


def count_ticks(conn: Connection, rows: Iterable[Mapping[Any, Any]], now: float) -> None:
    """Count ticks that reached their final status at `now` (rows with stack_id, status and
    reason), one upsert per stack."""
    per_stack: dict[int, Counter[str]] = {}
    for r in rows:
        column = column_of(r["status"], r["reason"])
        if column is not None:
            per_stack.setdefault(r["stack_id"], Counter())[column] += 1
    if not per_stack:
        return
    day = day_of(now)
    _ADD_COUNTS.many(conn, [
        {"b_stack": sid, "b_day": day, **{f"n_{c}": n[c] for c in COLUMNS}}
        for sid, n in sorted(per_stack.items())])
