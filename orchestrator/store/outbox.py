"""Writing events to the outbox, inside the transaction that makes the change, and reading
what is safe to deliver.

No lock is taken: concurrent transactions write their events freely. How ids are handed out,
and which events a reader may deliver, is the dialect's business (see `Dialect.emit` and
`Dialect.safe_events`): on SQLite, with one writer, ids grow in commit order; on PostgreSQL an
event's id starts with its transaction's id and a reader delivers only events of transactions
older than every transaction still in progress. Either way a reader that has delivered id N
never later finds an event it should have delivered before N, so `Last-Event-ID` resumes
exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import Connection

from orchestrator.store.hooks import dialect_of
from schema.db import touch
from schema.events import TOPIC_EVENTS, EventKind


def emit_many(conn: Connection, now: float,
              items: Iterable[tuple[EventKind, int | None, int | None, dict[str, Any]]]) -> int:
    """Insert (kind, stack_id, tick_id, data) events; returns how many."""
    rows = [{"kind": kind, "stack_id": stack_id, "tick_id": tick_id,
             "data": orjson.dumps(data).decode(), "created_at": now}
            for kind, stack_id, tick_id, data in items]
    if not rows:
        return 0
    dialect_of(conn).emit(conn, rows)
    touch(conn, TOPIC_EVENTS)
    return len(rows)


def emit(conn: Connection, now: float, kind: EventKind, stack_id: int | None,
         tick_id: int | None, data: dict[str, Any]) -> None:
    emit_many(conn, now, [(kind, stack_id, tick_id, data)])


def events_after(conn: Connection, after_id: int, limit: int = 500) -> list[dict[str, Any]]:
    """Outbox rows after `after_id` that are safe to deliver, oldest first."""
    return dialect_of(conn).safe_events(conn, after_id, limit)


def last_event_id(conn: Connection) -> int:
    """The last event a reader starting now would have delivered."""
    return dialect_of(conn).safe_end(conn)
