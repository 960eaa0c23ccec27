"""Database setup: one `Database` object per process, handed to whoever needs it.

SQLite runs in WAL mode with a busy timeout; write transactions begin IMMEDIATE so two writers
queue on the lock instead of failing on upgrade. PostgreSQL goes through the same code.
Blocking database work runs on a small thread pool (`transact`, `query`) so the event loop
that every tick shares never waits on the database; SQLite gets a single writer thread, which
serialises this process's writes without lock contention.

After a write transaction commits, the topics it touched (``conn.info["topics"]``) are handed
to the commit listeners: this is how the in-process bus learns of new events and queued ticks.

A transaction that fails for a transient reason — a deadlock or serialization failure, a lost
connection, SQLite's lock timing out — is run again from the start (`transact`, `query`), a
few times with backoff; a transaction body can ask `is_retry(conn)` to make itself idempotent
when an earlier try may have committed before its answer was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import Connection, create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.pool import StaticPool

P = ParamSpec("P")
T = TypeVar("T")

MMAP_BYTES = 1 << 30
CACHE_KIB = 64 * 1024

CommitListener = Callable[[frozenset[str]], None]
log = logging.getLogger("tickwork.db")

RETRIES = 6  # tries of a transaction that keeps failing for a transient reason
BACKOFF_S = 0.02  # the first wait; it doubles, with full jitter, up to BACKOFF_CAP_S
BACKOFF_CAP_S = 1.0
_RETRY_KEY = "tickwork.retry"
# SQLSTATEs worth another try: serialization failure, deadlock, lock not available, and the
# server going away (admin shutdown, crash shutdown, cannot connect now).
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03"})


def is_transient(exc: BaseException) -> bool:
    """A database error that the same transaction, run again, may not meet."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
    return sqlstate in TRANSIENT_SQLSTATES


def is_retry(conn: Connection) -> bool:
    """Whether this transaction is a retry of one that failed (and may have committed)."""
    return bool(conn.info.get(_RETRY_KEY))


def normalise_url(url: str) -> str:
    """Accept the URLs people write (postgres://, postgresql://) and pick our drivers."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (absolute), or None for another database or memory."""
    parsed = make_url(normalise_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    name = parsed.database
    if name.startswith("file:"):  # a URI filename: file:path?mode=...
        name = name[len("file:"):].split("?", 1)[0]
    return Path(name).resolve()


def touch(conn: Connection, *topics: str) -> None:
    """Mark the current transaction as touching `topics`; listeners hear of it after commit."""
    conn.info.setdefault("topics", set()).update(topics)


class Database:
    def __init__(self, url: str, *, pool_size: int = 8, busy_timeout_ms: int = 10_000,
                 group_commit_ms: float = 0.0) -> None:
        self.url = normalise_url(url)
        parsed = make_url(self.url)
        self.dialect = parsed.get_backend_name()
        self._listeners: list[CommitListener] = []
        if self.dialect == "sqlite":
            self.engine = self._sqlite_engine(busy_timeout_ms)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="db-write")
        else:
            self.engine = create_engine(
                # No ping at each check-out: a connection the server dropped fails its
                # transaction with a transient error, and `_retrying` runs it again on a
                # fresh one (the pool is invalidated), without a round trip per transaction.
                self.url, pool_size=pool_size, max_overflow=pool_size
            )
            self._writer = ThreadPoolExecutor(pool_size, thread_name_prefix="db-write")
        self._reader = ThreadPoolExecutor(min(pool_size, 4), thread_name_prefix="db-read")
        self._writer_conn: Connection | None = None
        self.writer_tx = self._write_on_writer if self.is_sqlite else self.write
        self.group_commit_s = group_commit_ms / 1000

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    def _sqlite_engine(self, busy_timeout_ms: int) -> Engine:
        parsed = make_url(self.url)
        memory = parsed.database in (None, "", ":memory:")
        kwargs: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": busy_timeout_ms / 1000},
        }
        if memory:
            kwargs["poolclass"] = StaticPool
        engine = create_engine(self.url, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            # Every connection keeps its own page cache, dropped when another one writes:
            # reads through a memory map skip a system call per page, and a larger cache keeps
            # the writer's working set (it is the connection that never loses it).
            cur.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
            cur.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("tickwork_write", False)
            # On the driver's connection: this runs for every transaction.
            conn.connection.dbapi_connection.execute(  # type: ignore[union-attr]
                "BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    # -- transactions -------------------------------------------------------------------

    def add_commit_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def remove_commit_listener(self, listener: CommitListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction; commits on success, rolls back on error."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(tickwork_write=True)
            conn.info.pop("topics", None)
            conn.info.pop(_RETRY_KEY, None)
            with conn.begin():
                yield conn
            topics = conn.info.pop("topics", None)
        self._committed(topics)

    @contextlib.contextmanager
    def _write_on_writer(self) -> Iterator[Connection]:
        """`write` for the SQLite writer thread: its one connection stays checked out (the
        pool's check-out and return cost as much as a small transaction)."""
        conn = self._writer_conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._writer_conn = (self.engine.connect()
                                        .execution_options(tickwork_write=True))
        conn.info.pop("topics", None)
        conn.info.pop(_RETRY_KEY, None)
        try:
            with conn.begin():
                yield conn
        except BaseException:
            if conn.invalidated:
                conn.close()
            raise
        self._committed(conn.info.pop("topics", None))

    def _committed(self, topics: set[str] | None) -> None:
        if topics:
            frozen = frozenset(topics)
            for listener in list(self._listeners):
                listener(frozen)

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # -- off the event loop -------------------------------------------------------------

    @property
    def writer(self) -> ThreadPoolExecutor:
        """The threads write transactions run on (one on SQLite)."""
        return self._writer

    def _retrying(self, tx: Callable[[], contextlib.AbstractContextManager[Connection]],
                  fn: Callable[[Connection], T]) -> T:
        for n in range(RETRIES):
            try:
                with tx() as conn:
                    conn.info[_RETRY_KEY] = n
                    return fn(conn)
            except Exception as exc:
                if n + 1 >= RETRIES or not is_transient(exc):
                    raise
                wait = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_S * 2 ** n))
                log.info("transaction failed for a transient reason (%s); retrying in "
                         "%.0f ms", type(getattr(exc, "orig", None) or exc).__name__,
                         wait * 1000)
                time.sleep(wait)
        raise AssertionError("unreachable")

    def transact_sync(self, fn: Callable[Concatenate[Connection, P], T], *args: P.args,
                      **kwargs: P.kwargs) -> T:
        """`fn(conn, ...)` in one write transaction, here, retried when transient."""
        return self._retrying(self.writer_tx, lambda conn: fn(conn, *args, **kwargs))

    async def transact(self, fn: Callable[Concatenate[Connection, P], T], *args: P.args,
                       **kwargs: P.kwargs) -> T:
        """Run `fn(conn, ...)` in one write transaction on the writer pool (retried when it
        fails for a transient reason)."""
        def work() -> T:
            return self._retrying(self.writer_tx, lambda conn: fn(conn, *args, **kwargs))

        return await asyncio.get_running_loop().run_in_executor(self._writer, work)

    async def query(self, fn: Callable[Concatenate[Connection, P], T], *args: P.args,
                    **kwargs: P.kwargs) -> T:
        """Run `fn(conn, ...)` in one read transaction on the reader pool."""
        def work() -> T:
            return self._retrying(self.read, lambda conn: fn(conn, *args, **kwargs))

        return await asyncio.get_running_loop().run_in_executor(self._reader, work)

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        if self._writer_conn is not None:
            self._writer_conn.close()
        self._reader.shutdown(wait=True)
        self.engine.dispose()
