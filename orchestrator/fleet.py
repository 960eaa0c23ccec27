"""The fleet: every tickwork process registers itself in the database, heartbeats, and
deregisters on exit.

A row says what the process is (role, host, pid, version, when it started), what it is doing
(ticks running, ticks finished) and, for a worker, which agents it can run. A process that dies
without deregistering stops heartbeating; once its heartbeat is older than the lease it is no
longer counted, and the next heartbeat of any process deletes its row. Because the rows live in
the database, any process (a dashboard, the CLI) sees the whole fleet. Heartbeats are
measured on the same clock as leases (the database's, on PostgreSQL).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Connection, delete, insert, select, update

from orchestrator.store.abc import Store
from orchestrator.store.hooks import dialect_of
from schema import tables as t
from schema.clock import Clock

log = logging.getLogger("tickwork.fleet")

WORKER_ROLES = ("up", "worker")


def version() -> str:
    try:
        return importlib.metadata.version("tickwork")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def register(conn: Connection, row: dict[str, Any], now: float) -> None:
    now_ = dialect_of(conn).lease_now()
    conn.execute(delete(t.processes).where(t.processes.c.id == row["id"]))
    conn.execute(insert(t.processes).values(**row, heartbeat_at=now_), {"now": now})


def heartbeat(conn: Connection, process_id: str, now: float, lease_s: float, running: int,
              finished: int) -> bool:
    """Record that the process is alive; drop the rows of processes whose lease ran out.
    False when this process's row is gone (pruned while it could not heartbeat)."""
    now_ = dialect_of(conn).lease_now()
    p = t.processes.c
    alive = conn.execute(update(t.processes).where(p.id == process_id)
                         .values(heartbeat_at=now_, running=running, finished=finished),
                         {"now": now}).rowcount == 1
    conn.execute(delete(t.processes).where(p.heartbeat_at < now_ - lease_s), {"now": now})
    return alive


def deregister(conn: Connection, process_id: str) -> None:
    conn.execute(delete(t.processes).where(t.processes.c.id == process_id))


def live(conn: Connection, now: float, lease_s: float) -> list[dict[str, Any]]:
    """The processes whose heartbeat is within the lease, oldest first, each with `age_s`:
    how long ago it last heartbeat (on the leases' clock)."""
    now_ = dialect_of(conn).lease_now()
    p = t.processes.c
    rows = conn.execute(select(t.processes, (now_ - p.heartbeat_at).label("age_s"))
                        .where(p.heartbeat_at >= now_ - lease_s)
                        .order_by(p.started_at, p.id), {"now": now}).mappings()
    out = []
    for r in rows:
        item = dict(r)
        item["agents"] = orjson.loads(r["agents"]) if r["agents"] else None
        item["info"] = orjson.loads(r["info"]) if r["info"] else {}
        out.append(item)
    return out


def live_workers(conn: Connection, now: float, lease_s: float) -> int:
    """How many live processes run ticks."""
    return sum(1 for p in live(conn, now, lease_s) if p["role"] in WORKER_ROLES)


def known_agents(conn: Connection, now: float, lease_s: float) -> set[str] | None:
    """The agents every live worker can run, or None when no worker is running."""
    known: set[str] | None = None
    for p in live(conn, now, lease_s):
        if p["role"] in WORKER_ROLES and p["agents"] is not None:
            names = set(p["agents"])
            known = names if known is None else known & names
    return known


@dataclass
class Membership:
    """One process's place in the fleet: registered by `start`, heartbeated by `run`,
    removed by `stop`. `counts` says (running, finished) ticks at each heartbeat."""

    store: Store
    clock: Clock
    process_id: str
    role: str
    lease_s: float
    agents: Iterable[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    counts: Callable[[], tuple[int, int]] = lambda: (0, 0)
    started_at: float = 0.0
    workers: int = 1  # live workers in the fleet, as of the last heartbeat

    def row(self) -> dict[str, Any]:
        running, finished = self.counts()
        now = self.clock.now()
        return {"id": self.process_id, "role": self.role, "host": socket.gethostname()[:255],
                "pid": os.getpid(), "version": version(), "started_at": self.started_at or now,
                "running": running, "finished": finished,
                "agents": (orjson.dumps(sorted(self.agents)).decode()
                           if self.agents is not None else None),
                "info": orjson.dumps(self.info).decode()}

    async def start(self) -> None:
        self.started_at = self.started_at or self.clock.now()
        await self.store.transact(register, self.row(), self.clock.now())
        await self._count_workers()

    async def _count_workers(self) -> None:
        self.workers = max(1, await self.store.query(live_workers, self.clock.now(),
                                                     self.lease_s))

    async def heartbeat_once(self) -> None:
        running, finished = self.counts()
        alive = await self.store.transact(heartbeat, self.process_id, self.clock.now(),
                                          self.lease_s, running, finished)
        if not alive:
            log.warning("this process's fleet entry had expired; registering again")
            await self.store.transact(register, self.row(), self.clock.now())
        await self._count_workers()

    async def run(self) -> None:
        while True:
            await self.clock.sleep(self.lease_s / 3)
            try:
                await self.heartbeat_once()
            except Exception as exc:
                log.warning("fleet heartbeat failed (%s); trying again", exc)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.shield(self.store.transact(deregister, self.process_id))
