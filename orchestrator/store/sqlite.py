"""The SQLite store: one process, one writer thread, group commit.

SQLite serialises writers, so this store writes on one thread (its connection kept open);
journaled steps that arrive together share one transaction (`GroupCommit`: one BEGIN, one
COMMIT and one WAL write for all of them). Event ids are SQLite's own row ids: with one writer
they grow in commit order, so every committed event is safe to deliver. Leases use the process's
Clock: everything runs on one machine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    Integer,
    String,
    Table,
    Text,
    bindparam,
    func,
    insert,
    select,
    type_coerce,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.elements import ColumnElement

from orchestrator.store.base import SQLStore
from orchestrator.store.hooks import register_default
from orchestrator.store.prepared import Prepared
from schema import tables as t
from schema.db import Database

EVENT_COLUMNS = (("kind", String()), ("stack_id", Integer()), ("tick_id", BigInteger()),
                 ("data", Text()), ("created_at", Float()))
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

    def rows(self, name: str, columns: Sequence[tuple[str, Any]]) -> Any:
        # json_each over one JSON array of rows, each row an array of its values.
        each = func.json_each(bindparam(name, type_=String)).table_valued("value")
        # Materialized: joined to a table, SQLite indexes it for the join (an automatic
        # index) instead of walking the JSON again for every row of the table.
        return (select(*(type_coerce(func.json_extract(each.c.value, f"$[{i}]"), type_).label(c)
                         for i, (c, type_) in enumerate(columns)))
                .cte(name).prefix_with("MATERIALIZED"))

    def rows_params(self, name: str, columns: Sequence[tuple[str, Any]],
                    rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        return {name: orjson.dumps(rows).decode()}

    def locked_cte(self, pick: Any, name: str) -> Any:
        return pick.cte(name)

    def emit(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        # One statement; ids grow in the order given (one writer: in commit order too).
        _INSERT_EVENTS.run(conn, self.rows_params("ev", EVENT_COLUMNS, [
            (r["kind"], r["stack_id"], r["tick_id"], r["data"], r["created_at"])
            for r in rows])).close()

    def safe_events(self, conn: Connection, after: int, limit: int) -> list[dict[str, Any]]:
        return _EVENTS_AFTER.dicts(conn, {"after": after, "lim": limit})

    def safe_end(self, conn: Connection) -> int:
        return int(_LAST_EVENT.scalar(conn, {}))


DIALECT = SQLiteDialect()


def _insert_events(dialect: SQLiteDialect) -> Any:
    v = dialect.rows("ev", EVENT_COLUMNS)
    return insert(t.events).from_select(["kind", "stack_id", "tick_id", "data", "created_at"],
                                        select(*v.c))


_INSERT_EVENTS = Prepared(_insert_events)  # type: ignore[arg-type]
register_default(DIALECT)


class SQLiteStore(SQLStore):
    def __init__(self, db: Database) -> None:
        super().__init__(db, DIALECT)
