"""The store: the tick queue, the step journal, accounting and the outbox, in the database.

`open_store(db)` gives the store for the database's kind (see `abc.Store`): `SQLiteStore` or
`PostgresStore`. The SQL both share lives in `queue`, `journal`, `usage`, `counts`, `outbox`.
"""

from __future__ import annotations

from orchestrator.store.abc import Claimed, Dialect, Journal, Store
from orchestrator.store.postgres import LeaseClock, PostgresStore
from orchestrator.store.sqlite import SQLiteStore
from schema.db import Database

__all__ = ["Claimed", "Dialect", "Journal", "PostgresStore", "SQLiteStore", "Store", "open_store"]


def open_store(db: Database, *, lease_clock: LeaseClock = "database"
               ) -> SQLiteStore | PostgresStore:
    """The store for `db`. `lease_clock`: on PostgreSQL, measure leases on the database's clock
    ("database", the default) or on the process's Clock ("process": tests on a fake clock)."""
    if db.is_sqlite:
        return SQLiteStore(db)
    return PostgresStore(db, lease_clock=lease_clock)
