"""Which `Dialect` a connection's SQL runs with.

A store binds its dialect to every connection it opens a transaction on (`bind`); the shared
SQL asks `dialect_of(conn)`. A connection opened without a store (a test, a one-off script)
gets its database's default dialect, registered by the store modules at import.
"""

from __future__ import annotations

from sqlalchemy import Connection

from orchestrator.store.abc import Dialect

_KEY = "tickwork.dialect"
_DEFAULTS: dict[str, Dialect] = {}


def register_default(dialect: Dialect) -> None:
    _DEFAULTS[dialect.name] = dialect


def bind(conn: Connection, dialect: Dialect) -> None:
    conn.info[_KEY] = dialect


def dialect_of(conn: Connection) -> Dialect:
    found: Dialect | None = conn.info.get(_KEY)
    if found is not None:
        return found
    try:
        return _DEFAULTS[conn.dialect.name]
    except KeyError:
        raise LookupError(f"tickwork has no store for {conn.dialect.name!r} databases") from None
