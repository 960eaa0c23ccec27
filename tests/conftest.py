"""Shared fixtures. `db` runs a test once on SQLite and once on PostgreSQL (its own schema).

Time: `clock` is a FakeClock; nothing here sleeps on the wall clock to wait for the engine.
`wait_for` polls a condition under a deadline, yielding to the event loop between polls.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from orchestrator.config import Settings
from orchestrator.runtime import Runtime
from orchestrator.store import Store, open_store
from schema.clock import FakeClock
from schema.db import Database, normalise_url
from schema.migrate import upgrade
from tests.services import POSTGRES_URL, need

BACKENDS = ["sqlite", "postgres"]


def _pg_schema_url(schema: str) -> str:
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tickwork.db'}"
        return
    need("postgres")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(POSTGRES_URL))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield _pg_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    upgrade(database)
    try:
        yield database
    finally:
        database.close()


def store_of(db: Database) -> Store:
    """The store of a test's database, its leases on the fake clock."""
    return open_store(db, lease_clock="process")


@pytest.fixture
def clock() -> FakeClock:
    # A slot boundary (a multiple of 10 s) plus a little, like a real beat fire.
    return FakeClock(1_800_000_000.0)


def make_settings(db_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": db_url, "tick_interval": 10, "sim_latency_ms": "0",
        "admin_token": "test-token", "lease_s": 30.0, "poll_s": 0.05,
        # Leases on the fake clock; the tests of the database's clock say so.
        "lease_clock": "process",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


@pytest.fixture
def runtime(settings: Settings, clock: FakeClock) -> Iterator[Runtime]:
    """A Runtime on the fake clock, not started: tests fire the beat and drive the worker."""
    rt = Runtime.build(settings, clock, env={})  # no provider keys: the simulated model
    try:
        yield rt
    finally:
        rt.close()


async def wait_for(cond: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0,
                   what: str = "condition") -> None:
    """Wait until `cond()` holds, under a deadline; yields to the loop between checks."""
    deadline = time.monotonic() + timeout
    while True:
        result = cond()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)
