"""PostgreSQL by hand: a fresh schema of its own, connections held open in threads, and the
question "is this connection waiting for a lock?" asked from outside.

`Held` runs one transaction body on its own connection in a thread and stops before COMMIT
until the test says so: two transactions can be interleaved at exactly the point a race needs,
and `waiting(held)` tells whether one is blocked behind the other (pg_blocking_pids), so
nothing is left to timing.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, text

from orchestrator.store import open_store
from orchestrator.store.hooks import bind
from schema.db import Database, normalise_url
from schema.migrate import upgrade
from tests.services import POSTGRES_URL, need


def schema_url(schema: str) -> str:
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database of its own (dropped after)."""
    need("postgres")
    name = f"tw_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    base, _, _ = POSTGRES_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL schema (the tests here are about PostgreSQL's locks)."""
    need("postgres")
    schema = f"r_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(POSTGRES_URL))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = schema_url(schema)
    db = Database(url)
    try:
        upgrade(db)
    finally:
        db.close()
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


class _RolledBack(Exception):
    pass


class Held:
    """`fn(conn)` in a transaction on a connection of its own, in a thread; it commits only
    after `commit()`. `result` / `error` say how it ended."""

    def __init__(self, url: str, fn: Callable[[Connection], Any], *,
                 lease_clock: str = "process") -> None:
        self._db = Database(url)
        self._store = open_store(self._db, lease_clock=lease_clock)  # type: ignore[arg-type]
        self._fn = fn
        self._go = threading.Event()
        self._rollback = False
        self.pid: int | None = None
        self.ran = threading.Event()  # the body returned (its locks are held until commit)
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._db.write() as conn:
                bind(conn, self._store.dialect)
                self.pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
                self.result = self._fn(conn)
                self.ran.set()
                self._go.wait(30)
                if self._rollback:
                    raise _RolledBack
        except _RolledBack:
            pass
        except BaseException as exc:
            self.error = exc
        finally:
            self.ran.set()
            self.done.set()
            self._db.close()

    def commit(self) -> None:
        self._go.set()

    def rollback(self, timeout: float = 30) -> None:
        self._rollback = True
        self._go.set()
        assert self.done.wait(timeout), "the transaction did not end"

    def finish(self, timeout: float = 30) -> Any:
        self.commit()
        assert self.done.wait(timeout), "the transaction did not end"
        if self.error is not None:
            raise self.error
        return self.result


def waiting(url: str, held: Held, timeout: float = 10) -> bool:
    """Wait until `held`'s connection is blocked behind another's lock; True once it is."""
    engine = create_engine(normalise_url(url))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if held.done.is_set() or held.ran.is_set():
                return False
            if held.pid is not None:
                with engine.connect() as conn:
                    blockers = conn.execute(text("SELECT pg_blocking_pids(:p)"),
                                            {"p": held.pid}).scalar_one()
                if blockers:
                    return True
            time.sleep(0.01)
        return False
    finally:
        engine.dispose()
