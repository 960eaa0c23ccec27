"""The PostgreSQL store: many processes, many concurrent writers, no lock they all need.

- **The outbox without a global lock.** An event's id is its transaction's id shifted left by
  20 bits, plus its place in the transaction: `pg_current_xact_id() << 20 | n`. Ids therefore
  grow with transaction ids, not with commit order, and a reader delivers only the events of
  transactions older than every transaction still in progress
  (`pg_snapshot_xmin(pg_current_snapshot())`): those have all committed or rolled back, and
  every transaction that can still write an event has a larger id. A reader that delivered id N
  never later finds a smaller one, so `Last-Event-ID` resumes exactly. The price: an event waits
  for every older write transaction in the cluster to end (milliseconds, when none is left
  open; an idle-in-transaction session anywhere holds delivery back until it ends).
- **The database's clock for leases.** Lease expiries, heartbeats and reaping compare with
  `clock_timestamp()`, so a host whose clock is minutes off neither loses nor steals a lease.
  (`lease_clock="process"` uses the process's Clock instead: tests on a fake clock.)
- **Many writers.** Write transactions run on a pool of threads and connections; a transient
  failure (deadlock, serialization failure, lost connection) is retried by the Database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

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
    cast,
    func,
    insert,
    literal_column,
)
from sqlalchemy import select as select_
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.elements import ColumnElement

from orchestrator.store.base import SQLStore
from orchestrator.store.hooks import register_default
from orchestrator.store.prepared import Prepared
from schema import tables as t
from schema.db import Database

ID_SHIFT = 1 << 20  # events one transaction may write before ids would collide
_COUNTER = "tickwork.events_in_tx"

LeaseClock = Literal["database", "process"]

_XID: ColumnElement[int] = literal_column("(pg_current_xact_id()::text::bigint)", BigInteger)
_HORIZON: ColumnElement[int] = literal_column(
    "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint)", BigInteger)
EVENT_COLUMNS = (("n", BigInteger()), ("kind", String()), ("stack_id", Integer()),
                 ("tick_id", BigInteger()), ("data", Text()), ("created_at", Float()))


def _insert_events(dialect: PostgresDialect) -> Any:
    v = dialect.rows("ev", EVENT_COLUMNS)
    return insert(t.events).from_select(
        ["id", "kind", "stack_id", "tick_id", "data", "created_at"],
        select_(_XID * ID_SHIFT + v.c.n, v.c.kind, v.c.stack_id, v.c.tick_id, v.c.data,
                v.c.created_at))
_SAFE_EVENTS = Prepared(select_(t.events)
                        .where(t.events.c.id > bindparam("after"),
                               t.events.c.id < _HORIZON * ID_SHIFT)
                        .order_by(t.events.c.id).limit(bindparam("lim")))
_SAFE_END = Prepared(select_(func.coalesce(func.max(t.events.c.id), 0))
                     .where(t.events.c.id < _HORIZON * ID_SHIFT))


class PostgresDialect:
    name = "postgresql"

    def __init__(self, lease_clock: LeaseClock = "process") -> None:
        self.lease_clock = lease_clock
        self.key = f"postgresql-{lease_clock}"

    def insert(self, table: Table) -> Any:
        return postgresql.insert(table)

    def lease_now(self) -> ColumnElement[Any]:
        if self.lease_clock == "database":
            return func.extract("epoch", func.clock_timestamp())
        return bindparam("now", type_=Float)

    def one_of(self, column: Any, name: str) -> ColumnElement[bool]:
        return column == func.any(bindparam(name, type_=postgresql.ARRAY(BigInteger)))

    def ids(self, values: Sequence[int]) -> Any:
        return list(values)

    def rows(self, name: str, columns: Sequence[tuple[str, Any]]) -> Any:
        # One JSON array of rows, each an array of its values, unpacked by the server:
        # the client only serialises (orjson), where typed arrays cost it a Python loop and
        # an escape per element.
        each = func.jsonb_array_elements(cast(bindparam(name, type_=Text), JSONB)) \
            .table_valued("value")
        return (select_(*(cast(each.c.value.op("->>")(i), type_).label(c)
                         for i, (c, type_) in enumerate(columns)))
                .cte(name).prefix_with("MATERIALIZED"))

    def rows_params(self, name: str, columns: Sequence[tuple[str, Any]],
                    rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        return {name: orjson.dumps(rows).decode()}

    def locked_cte(self, pick: Any, name: str) -> Any:
        # Evaluated once: as a plain IN-subquery, PostgreSQL may rescan the locking subquery
        # for each row it updates, and the rescans pick other rows (more than the limit).
        return pick.cte(name).prefix_with("MATERIALIZED")

    def emit(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        # Number the transaction's events from 0, in the order written; one statement.
        tx = conn.get_transaction()
        seen = conn.info.get(_COUNTER)
        first = seen[1] if seen is not None and seen[0] is tx else 0
        if first + len(rows) >= ID_SHIFT:
            raise ValueError(f"a transaction may write at most {ID_SHIFT - 1} events")
        conn.info[_COUNTER] = (tx, first + len(rows))
        _INSERT_EVENTS.run(conn, self.rows_params("ev", EVENT_COLUMNS, [
            (first + i, r["kind"], r["stack_id"], r["tick_id"], r["data"], r["created_at"])
            for i, r in enumerate(rows)])).close()

    def safe_events(self, conn: Connection, after: int, limit: int) -> list[dict[str, Any]]:
        return _SAFE_EVENTS.dicts(conn, {"after": after, "lim": limit})

    def safe_end(self, conn: Connection) -> int:
        return int(_SAFE_END.scalar(conn, {}))


_INSERT_EVENTS = Prepared(_insert_events)  # type: ignore[arg-type]


class PostgresStore(SQLStore):
    def __init__(self, db: Database, *, lease_clock: LeaseClock = "database") -> None:
        super().__init__(db, PostgresDialect(lease_clock))


register_default(PostgresDialect())
