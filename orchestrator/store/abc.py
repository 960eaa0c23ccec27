"""The store's interfaces, in one place.

`Store` is what the engine (beat, worker, runner, reaper, event tailer) talks to: the tick queue
(fan-out, claim, heartbeat, release, reap), the step journal (read, commit a step, finalise)
and the outbox (read what is safe to deliver). Every operation is one transaction. There is
one implementation per database, each in its own module: `sqlite.SQLiteStore` (one writer
thread, group commit) and `postgres.PostgresStore` (many concurrent writers, the database's
clock for leases, an outbox ordered by transaction ids, transient errors retried).

`Dialect` is what the shared SQL (`queue`, `journal`, `usage`, `outbox`, `fleet`) asks of the
database it runs on: its INSERT … ON CONFLICT construct, the clock leases are measured on, and
how an event gets its id. A store binds its dialect to each connection it opens; a connection
opened without a store gets its database's default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from sqlalchemy import Connection, Table
from sqlalchemy.sql.elements import ColumnElement

from agents.base import ArtifactView, MessageView, StackView
from schema.db import Database

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Claimed:
    """A tick a worker claimed: what it needs to run it. `attempt` is the fencing token: a
    retried tick gets a new one, and a stale attempt can write nothing.

    For its trace: `trigger`, what earlier attempts spent (`cost_usd`), and `trace`, the
    (trace id, root span id) its row records — at claim, an earlier attempt's; a traced
    attempt runs with its own, which its step commits write."""

    id: int
    stack_id: int
    slot: int | None
    attempt: int
    scheduled_at: float
    trigger: str = "beat"
    cost_usd: float = 0.0
    trace: tuple[str, str] | None = None


@dataclass(slots=True)
class Journal:
    """What a tick starts from: its stack, memory and recent history, and the steps an earlier
    attempt finished (index -> (agent, output JSON))."""

    stack: StackView
    team: list[str] | None
    execution_state: str
    memory: dict[str, str]
    messages: list[MessageView]
    artifacts: list[ArtifactView]
    done: dict[int, tuple[str, str]] = field(default_factory=dict)


Event = tuple[str, int | None, int | None, dict[str, Any]]  # (kind, stack, tick, data)


class Dialect(Protocol):
    """The SQL hooks of one database (and one way of running it)."""

    @property
    def key(self) -> str:
        """What statements compiled for this dialect are cached under."""

    @property
    def name(self) -> str:
        """SQLAlchemy's name of the dialect ("sqlite", "postgresql")."""

    def insert(self, table: Table) -> Any:
        """The dialect's INSERT construct, with ON CONFLICT."""

    def lease_now(self) -> ColumnElement[Any]:
        """"Now" for leases and heartbeats: the `now` bind parameter (the process's Clock), or
        the database's own clock, so hosts whose clocks disagree agree on every lease."""

    def one_of(self, column: Any, name: str) -> ColumnElement[bool]:
        """`column` is one of the ids bound as `name` (passed through `ids`): one statement
        for any number of ids, compiled once (an IN list is rendered per call)."""

    def ids(self, values: Sequence[int]) -> Any:
        """The bound value of a `one_of` parameter."""

    def rows(self, name: str, columns: Sequence[tuple[str, Any]]) -> Any:
        """A table-valued source of many rows bound as one parameter set named `name`
        (`rows_params`): one statement, compiled once, for any number of rows. Its columns
        are `.c.<column>`, of the SQLAlchemy types given; rows come out in the order bound."""

    def rows_params(self, name: str, columns: Sequence[tuple[str, Any]],
                    rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        """The bound values of a `rows` source: `rows` are tuples in the order of `columns`."""

    def locked_cte(self, pick: Any, name: str) -> Any:
        """The CTE of a locking pick (`SELECT … FOR UPDATE SKIP LOCKED LIMIT n`), evaluated
        once."""

    def emit(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert outbox rows (kind, stack_id, tick_id, data, created_at) in the order given;
        their ids grow in the order readers will deliver them."""

    def safe_events(self, conn: Connection, after: int, limit: int) -> list[dict[str, Any]]:
        """Outbox rows after `after`, oldest first, that no transaction still in progress can
        precede: a reader that delivers them never later finds an event before them."""

    def safe_end(self, conn: Connection) -> int:
        """The id of the last event `safe_events` would deliver now (0 when none)."""


class Store(Protocol):
    db: Database
    dialect: Dialect

    # -- running transactions ---------------------------------------------------------------

    async def transact(self, fn: Callable[Concatenate[Connection, P], T], *args: P.args,
                       **kwargs: P.kwargs) -> T:
        """`fn(conn, ...)` in one write transaction, retried when it fails for a transient
        reason (a deadlock, a serialization failure, a lost connection)."""

    async def query(self, fn: Callable[Concatenate[Connection, P], T], *args: P.args,
                    **kwargs: P.kwargs) -> T:
        """`fn(conn, ...)` in one read transaction."""

    def write(self) -> AbstractContextManager[Connection]:
        """One write transaction, synchronously (the CLI)."""

    def read(self) -> AbstractContextManager[Connection]:
        """One read transaction, synchronously."""

    # -- the queue --------------------------------------------------------------------------

    async def fan_out(self, slot: int, interval: int, now: float) -> tuple[int, int]:
        """One tick per due running stack for `slot`; (queued, skipped)."""

    async def claim(self, worker_id: str, limit: int, now: float, lease_s: float,
                    workers: int = 1) -> tuple[list[Claimed], dict[int, Journal]]:
        """Claim up to `limit` queued ticks under a lease, with their journals; with several
        live `workers`, no more than this worker's fair share."""

    async def heartbeat(self, worker_id: str, held: Sequence[tuple[int, int]], now: float,
                        lease_s: float) -> set[tuple[int, int]]:
        """Extend the leases of (tick, attempt) still held; returns those."""

    async def release(self, worker_id: str, ticks: Iterable[tuple[int, int]], now: float
                      ) -> int:
        """Hand running ticks back to the queue at once, without using an attempt."""

    async def reap(self, now: float, max_attempts: int) -> tuple[int, int, int]:
        """Requeue or fail ticks whose lease expired; cancel queued ticks of stopped stacks."""

    # -- the journal --------------------------------------------------------------------------

    async def load(self, tick: Claimed) -> Journal:
        """The journal of one tick (when the claim could not read it)."""

    async def commit_step(self, tick: Claimed, index: int, result: Any, started_at: float,
                          now: float, lease_s: float, final: tuple[str, str | None] | None
                          ) -> bool:
        """Journal one step with its effects (and, with `final`, finalise the tick) in one
        transaction, which steps arriving together share (group commit); False, writing
        nothing, when this attempt no longer holds the tick."""

    async def finalize(self, tick: Claimed, status: str, reason: str | None, now: float
                       ) -> dict[str, Any] | None:
        """Compare-and-set the running attempt to a final status."""

    # -- the outbox ---------------------------------------------------------------------------

    async def events_after(self, after: int, limit: int) -> list[dict[str, Any]]:
        """Events safe to deliver after `after`, oldest first (see `Dialect.safe_events`)."""

    async def last_event_id(self) -> int:
        """Where a reader that wants only new events starts."""

    def close(self) -> None: ...
