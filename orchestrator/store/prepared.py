"""Hot-path statements: built with SQLAlchemy once, compiled once per dialect, run on the
driver's cursor.

A small statement run through `Connection.execute` costs ~63 µs of CPU, against ~14 µs run
this way (`python -m load_tests.micro`, on the 2-core machine); a tick runs dozens. `Prepared` keeps
SQLAlchemy as the one place the SQL is written — the same table definitions, the same dialect
rendering — and skips its per-call machinery: the compiled SQL and the order of its parameters
are kept per dialect, bind processors still apply, and rows come back as plain tuples (or
dicts keyed by column name). It runs inside the caller's transaction, on the caller's
connection, so it composes with everything else done through that Connection.

Not for statements with ``IN`` lists, which SQLAlchemy renders per call (write a short
literal list as ``OR``s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.sql.base import Executable

from orchestrator.store.abc import Dialect
from orchestrator.store.hooks import dialect_of


@dataclass(frozen=True, slots=True)
class _Compiled:
    sql: str
    positional: tuple[str, ...] | None  # parameter names in order (qmark), or None (named)
    defaults: dict[str, Any]  # literal values the statement bound itself
    processors: tuple[tuple[str, Callable[[Any], Any]], ...]
    at: tuple[tuple[int, Callable[[Any], Any]], ...]  # positional: (index, processor)


class Prepared:
    """One statement, or a function of the connection's `Dialect` that builds it (for the
    databases' own constructs, such as ``INSERT … ON CONFLICT`` or the clock of leases)."""

    def __init__(self, statement: Executable | Callable[[Dialect], Executable]) -> None:
        self._build = statement if callable(statement) else (lambda _dialect: statement)
        self._compiled: dict[tuple[str, tuple[str, ...]], _Compiled] = {}

    def _compile(self, conn: Connection, dialect: Dialect, keys: tuple[str, ...]) -> _Compiled:
        statement = self._build(dialect)
        # The keys decide an INSERT's columns (the others take their defaults), as they do
        # for Connection.execute.
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=conn.dialect, column_keys=list(keys))
        if compiled.literal_execute_params or compiled.post_compile_params:
            raise ValueError("Prepared statements take no IN lists (write them as ORs)")
        names = tuple(compiled.positiontup) if compiled.positional else None
        processors = tuple((k, fn) for k, fn in compiled._bind_processors.items())
        at = tuple((names.index(k), fn) for k, fn in processors) if names else ()
        done = _Compiled(str(compiled), names, dict(compiled.params), processors, at)
        self._compiled[(dialect.key, keys)] = done
        return done

    def _params(self, c: _Compiled, given: Mapping[str, Any]) -> Any:
        if c.positional is None:
            values = {**c.defaults, **given}
            for name, fn in c.processors:
                if values.get(name) is not None:
                    values[name] = fn(values[name])
            return values
        defaults = c.defaults
        row = [given[n] if n in given else defaults[n] for n in c.positional]
        for i, fn in c.at:
            if row[i] is not None:
                row[i] = fn(row[i])
        return row

    def _cursor(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, _Compiled]:
        keys = tuple(params)
        dialect = dialect_of(conn)
        c = self._compiled.get((dialect.key, keys)) or self._compile(conn, dialect, keys)
        return conn.connection.dbapi_connection.cursor(), c  # type: ignore[union-attr]

    def run(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Execute with one set of parameters; returns the open cursor (rowcount, fetch*)."""
        cursor, c = self._cursor(conn, params)
        cursor.execute(c.sql, self._params(c, params))
        return cursor

    def many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Execute once per parameter set (no RETURNING)."""
        if not rows:
            return
        cursor, c = self._cursor(conn, rows[0])
        cursor.executemany(c.sql, [self._params(c, r) for r in rows])
        cursor.close()

    def rowcount(self, conn: Connection, params: Mapping[str, Any]) -> int:
        cursor = self.run(conn, params)
        n: int = cursor.rowcount
        cursor.close()
        return n

    def one(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """The first row as a tuple, or None."""
        cursor = self.run(conn, params)
        row = cursor.fetchone()
        cursor.fetchall()  # RETURNING on SQLite finishes the statement on the last fetch
        cursor.close()
        return tuple(row) if row is not None else None

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first column of the one row the statement returns."""
        row = self.one(conn, params)
        if row is None:
            raise LookupError("the statement returned no row")
        return row[0]

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        cursor = self.run(conn, params)
        rows = [tuple(r) for r in cursor.fetchall()]
        cursor.close()
        return rows

    def dicts(self, conn: Connection, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every row as a dict keyed by column name."""
        cursor = self.run(conn, params)
        rows = cursor.fetchall()
        names = [d[0] for d in cursor.description] if cursor.description else []
        cursor.close()
        return [dict(zip(names, r, strict=True)) for r in rows]
