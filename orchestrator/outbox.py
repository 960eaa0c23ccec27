"""Writing events to the outbox, inside the transaction that makes the change.

On PostgreSQL a transaction-scoped advisory lock is taken before the insert, so event ids are
handed out in commit order: a reader that has seen id N can never later find an id below N
(`Last-Event-ID` resumes exactly). SQLite serialises writers anyway.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import Connection, insert, text

from schema import tables as t
from schema.db import touch
from schema.events import TOPIC_EVENTS, EventKind
from schema.prepared import Prepared

_OUTBOX_LOCK = 0x7469636B  # "tick"
_LOCK = Prepared(text("SELECT pg_advisory_xact_lock(:k)"))
_INSERT = Prepared(insert(t.events))


def emit_many(conn: Connection, now: float,
              items: Iterable[tuple[EventKind, int | None, int | None, dict[str, Any]]]) -> int:
    """Insert (kind, stack_id, tick_id, data) events; returns how many."""
    rows = [{"kind": kind, "stack_id": stack_id, "tick_id": tick_id,
             "data": orjson.dumps(data).decode(), "created_at": now}
            for kind, stack_id, tick_id, data in items]
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        _LOCK.all(conn, {"k": _OUTBOX_LOCK})
    _INSERT.many(conn, rows)
    touch(conn, TOPIC_EVENTS)
    return len(rows)


def emit(conn: Connection, now: float, kind: EventKind, stack_id: int | None,
         tick_id: int | None, data: dict[str, Any]) -> None:
    emit_many(conn, now, [(kind, stack_id, tick_id, data)])
