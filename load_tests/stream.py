"""A real event-stream client for the load tests: tickwork's HTTP app served in this process,
`GET /api/events` read by another process.

Each event's latency is its arrival time at the client minus its outbox row's `created_at`,
stamped inside the transaction just before commit — so the figure includes the commit itself
and slightly overstates commit-to-client time. Both processes read the same machine clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import socket
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvicorn
from sqlalchemy import select

from orchestrator.runtime import Runtime
from schema import tables as t


def _reader(url: str, stop_at: float, out: Any, stop: Any = None) -> None:
    """The client process: read the stream until `stop_at` (or `stop` is set); send
    [(id, arrival), ...]."""
    seen: list[tuple[int, float]] = []
    try:
        with httpx.Client(timeout=httpx.Timeout(5.0, read=30.0)) as client, \
                client.stream("GET", url) as response:
            for line in response.iter_lines():
                if line.startswith("id:"):
                    seen.append((int(line[3:].strip()), time.time()))
                if time.time() >= stop_at or (stop is not None and stop.is_set()):
                    break
    finally:
        out.put(seen)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessCPU:
    """The CPU seconds of the process listening on `url`'s port (the simulator the step calls),
    or 0.0 when there is none to be found."""

    def __init__(self, url: str | None) -> None:
        import psutil

        self._proc: psutil.Process | None = None
        port = urlsplit(url).port if url else None
        if port is None:
            return
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port \
                    and conn.pid is not None:
                self._proc = psutil.Process(conn.pid)
                return

    def seconds(self) -> float:
        if self._proc is None:
            return 0.0
        try:
            c = self._proc.cpu_times()
        except Exception:
            return 0.0
        return float(c.user + c.system)

    @property
    def found(self) -> bool:
        return self._proc is not None


@contextlib.asynccontextmanager
async def serving(rt: Runtime) -> AsyncIterator[str]:
    """tickwork's HTTP app on a free loopback port; yields the events URL."""
    from dashboard.api import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(rt), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}/api/events"
    finally:
        server.should_exit = True
        await task


class StreamClient:
    """The reader process, started now and reading until `seconds` from now."""

    def __init__(self, url: str, seconds: float) -> None:
        ctx = mp.get_context("spawn")
        self._results: Any = ctx.Queue()
        self._stop = ctx.Event()
        self._proc = ctx.Process(target=_reader, args=(url, time.time() + seconds,
                                                       self._results, self._stop))
        self._proc.start()

    def stop(self, timeout: float = 15) -> list[tuple[int, float]]:
        """End the reader now (from code without an event loop); what it saw."""
        self._stop.set()
        seen: list[tuple[int, float]] = []
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                seen = self._results.get(timeout=0.5)
                break
            except Exception:  # queue.Empty
                if not self._proc.is_alive():
                    break
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
        return seen

    async def arrivals(self) -> list[tuple[int, float]]:
        """Wait for the reader to finish; (event id, arrival time) in arrival order."""
        seen: list[tuple[int, float]] = []
        while self._proc.is_alive() or not self._results.empty():
            try:
                seen = self._results.get_nowait()
                break
            except Exception:  # queue.Empty, from the other process's queue
                await asyncio.sleep(0.2)
        self._proc.join(timeout=10)
        return seen


def latencies_ms(rt: Runtime, seen: list[tuple[int, float]]) -> list[float]:
    """Arrival − the event's commit stamp, for every event the client saw."""
    if not seen:
        return []
    first, last = min(i for i, _ in seen), max(i for i, _ in seen)
    with rt.db.read() as conn:
        stamped = dict(conn.execute(select(t.events.c.id, t.events.c.created_at)
                                    .where(t.events.c.id.between(first, last))).all())
    return [(arrived - stamped[i]) * 1000 for i, arrived in seen if i in stamped]
