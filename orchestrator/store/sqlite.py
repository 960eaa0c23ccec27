"""The SQLite store: one process, one writer thread, group commit.

SQLite serialises writers, so this store writes on one thread (its connection kept open) and
lets journaled steps that arrive together share one transaction (`GroupCommit`: one BEGIN, one
COMMIT and one WAL write for all of them). Event ids are SQLite's own row ids: with one writer
they grow in commit order, so every committed event is safe to deliver. Leases use the process's
Clock: everything runs on one machine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson
from sqlalchemy import Connection, Float, String, Table, bindparam, func, insert, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.elements import ColumnElement

from orchestrator.store.base import SQLStore
from orchestrator.store.groupcommit import GroupCommit
from orchestrator.store.hooks import register_default
from orchestrator.store.prepared import Prepared
from schema import tables as t
from schema.db import Database

P = ParamSpec("P")
T = TypeVar("T")

_INSERT_EVENTS = Prepared(insert(t.events))
_EVENTS_AFTER = Prepared(select(t.events).where(t.events.c.id > bindparam("after"))
                         .order_by(t.events.c.id).limit(bindparam("lim")))
_LAST_EVENT = Prepared(select(func.coalesce(func.max(t.events.c.id), 0)))


class SQLiteDialect:
    key = "sqlite"
    name = "sqlite"

    def insert(self, table: Table) -> Any:
        return sqlite.insert(table)

    def lease_now(self) -> ColumnElement[Any]:
        return bindparam("now", type_=Float)

    def one_of(self, column: Any, name: str) -> ColumnElement[bool]:
        each = func.json_each(bindparam(name, type_=String)).table_valued("value")
        return column.in_(select(each.c.value))

    def ids(self, values: Sequence[int]) -> Any:
        return orjson.dumps(list(values)).decode()

    def locked_cte(self, pick: Any, name: str) -> Any:
        return pick.cte(name)

    def emit(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        _INSERT_EVENTS.many(conn, rows)

    def safe_events(self, conn: Connection, after: int, limit: int) -> list[dict[str, Any]]:
        return _EVENTS_AFTER.dicts(conn, {"after": after, "lim": limit})

    def safe_end(self, conn: Connection) -> int:
        return int(_LAST_EVENT.scalar(conn, {}))


DIALECT = SQLiteDialect()
register_default(DIALECT)


class SQLiteStore(SQLStore):
    def __init__(self, db: Database) -> None:
        super().__init__(db, DIALECT)
        # A group that fails runs again write by write, each retried when the failure was
        # transient (SQLite's lock timing out).
        self._group = GroupCommit(db.writer_tx, db.writer, db.group_commit_s,
                                  alone=db.transact_sync)

    async def transact_grouped(self, fn: Callable[Concatenate[Connection, P], T],
                               *args: P.args, **kwargs: P.kwargs) -> T:
        """`transact`, but it may share one transaction with the other grouped writes of the
        next `group_commit_ms` (group commit: one BEGIN/COMMIT and one thread hand-off for all
        of them). Each `fn` still sees the effects of those before it, as if run in turn; if
        one raises, the group rolls back and each runs again in its own transaction, so one
        failure touches no other."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        bound = self._bound(fn)
        self._group.add(lambda conn: bound(conn, *args, **kwargs), future, loop)
        return await future
