"""The server-sent event stream, read over a real socket from a real uvicorn server.

Each test runs on SQLite and PostgreSQL. Deadlines are wall-clock bounds on waiting for a
condition; the engine's own time (the outbox poll) moves only when a test advances the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import uvicorn
from fastapi import FastAPI
from sse_starlette import ServerSentEvent

from dashboard.api import create_app
from dashboard.sse import EventTailer, event_stream
from orchestrator.runtime import Runtime
from orchestrator.store import outbox
from orchestrator.store.outbox import emit
from schema.clock import FakeClock
from schema.db import Database
from tests.conftest import wait_for

ADMIN = {"Authorization": "Bearer test-token"}
DEADLINE_S = 10.0


@dataclass(frozen=True)
class Sse:
    id: str | None
    event: str | None
    data: str | None
    retry: int | None


async def parse(lines: AsyncIterator[str]) -> AsyncIterator[Sse]:
    """The SSE wire format: fields until a blank line; comment lines start with ':'."""
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in lines:
        if not line:
            if fields or data:
                retry = fields.get("retry")
                yield Sse(fields.get("id"), fields.get("event"),
                          "\n".join(data) if data else None, int(retry) if retry else None)
            fields, data = {}, []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value


class Listener:
    """One client of /api/events: frames are read in the background into a queue."""

    def __init__(self, client: httpx.AsyncClient, *, params: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self._client = client
        self._params = params
        self._headers = headers
        self._frames: asyncio.Queue[Sse | None] = asyncio.Queue()
        self._stack = contextlib.AsyncExitStack()
        self.response: httpx.Response | None = None

    async def __aenter__(self) -> Listener:
        self.response = await self._stack.enter_async_context(self._client.stream(
            "GET", "/api/events", params=self._params, headers=self._headers,
            timeout=httpx.Timeout(DEADLINE_S, read=None)))
        assert self.response.status_code == 200
        task = asyncio.create_task(self._pump(self.response))
        self._stack.push_async_callback(self._cancel, task)
        opening = await self.next()
        assert opening is not None and opening.retry == 1000 and opening.data is None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @staticmethod
    async def _cancel(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _pump(self, response: httpx.Response) -> None:
        try:
            async for frame in parse(response.aiter_lines()):
                await self._frames.put(frame)
        except httpx.HTTPError:
            pass  # the server went away: the stream ended
        await self._frames.put(None)

    async def next(self) -> Sse | None:
        """The next frame, or None when the stream ended."""
        async with asyncio.timeout(DEADLINE_S):
            return await self._frames.get()

    async def take(self, n: int) -> list[Sse]:
        got: list[Sse] = []
        while len(got) < n:
            frame = await self.next()
            assert frame is not None, f"the stream ended after {got}"
            got.append(frame)
        return got

    @property
    def pending(self) -> int:
        return self._frames.qsize()


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[tuple[httpx.AsyncClient, uvicorn.Server]]:
    """The app on a real uvicorn server on a free loopback port, and a client for it."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on",
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started or task.done(), what="the server to start")
    if task.done():
        task.result()
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client, server
    finally:
        server.should_exit = True
        async with asyncio.timeout(DEADLINE_S):
            await task


def run(rt: Runtime, scenario: Callable[[httpx.AsyncClient, uvicorn.Server],
                                        Awaitable[None]]) -> None:
    async def main() -> None:
        async with serving(create_app(rt)) as (client, server):
            await scenario(client, server)

    asyncio.run(main())


def wire(rows: list[Any]) -> list[tuple[str, str, str]]:
    """Outbox rows as they must appear on the stream: (id, event, data)."""
    return [(str(r["id"]), r["kind"], r["data"]) for r in rows]


def seen(frames: list[Sse]) -> list[tuple[str | None, str | None, str | None]]:
    return [(f.id, f.event, f.data) for f in frames]


def parse_chunks(chunks: list[Any]) -> list[tuple[str, str, str]]:
    """(id, event, data) of every event in the raw chunks a stream yields."""
    text = b"".join(c if isinstance(c, bytes) else c.encode() for c in chunks).decode()
    out = []
    for block in text.split("\r\n\r\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\r\n") if ": " in line
                      and not line.startswith(":"))
        if "id" in fields:
            out.append((fields["id"], fields["event"], fields["data"]))
    return out


async def outbox_after(rt: Runtime, after: int) -> list[Any]:
    return await rt.store.query(outbox.events_after, after)


async def create(client: httpx.AsyncClient, name: str, **spec: Any) -> dict[str, Any]:
    r = await client.post("/api/stacks", json={"name": name, **spec}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()


def test_events_arrive_after_a_write(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient, _: uvicorn.Server) -> None:
        await create(client, "before")  # written before the client connects: not replayed
        start = await runtime.store.query(outbox.last_event_id)
        async with Listener(client) as events:
            assert events.response is not None
            assert events.response.headers["content-type"].startswith("text/event-stream")
            assert events.response.headers["cache-control"] == "no-store"
            stack = await create(client, "alpha")
            frames = await events.take(2)
            rows = await outbox_after(runtime, start)
            assert seen(frames) == wire(rows)
            assert [f.event for f in frames] == ["stack.updated", "tick.queued"]
            assert orjson.loads(frames[0].data or "")["name"] == "alpha"
            queued = orjson.loads(frames[1].data or "")
            assert (queued["stack_id"], queued["status"]) == (stack["id"], "queued")

            r = await client.post(f"/api/stacks/{stack['id']}/pause", headers=ADMIN,
                                  json={"reason": "lunch"})
            assert r.status_code == 200
            rows = await outbox_after(runtime, int(frames[-1].id or 0))
            more = await events.take(len(rows))
            assert seen(more) == wire(rows)
            assert {"stack.updated", "tick.finished"} <= {f.event for f in more}
            patch = [orjson.loads(f.data or "") for f in more if f.event == "stack.updated"]
            assert patch[-1]["pause_reason"] == "lunch"
            ids = [int(f.id or 0) for f in frames + more]
            assert ids == sorted(set(ids)) and ids[0] > start

    run(runtime, scenario)


def test_reconnecting_with_last_event_id_resumes_exactly(runtime: Runtime,
                                                          clock: FakeClock) -> None:
    async def scenario(client: httpx.AsyncClient, _: uvicorn.Server) -> None:
        async with Listener(client) as events:
            stack = await create(client, "alpha")
            first, _queued = await events.take(2)
        last = first.id or ""  # this client saw one event, then went away

        # Written while no client is connected.
        sid = stack["id"]
        await client.post(f"/api/stacks/{sid}/pause", headers=ADMIN, json={"reason": "x"})
        clock.advance(10)
        await client.post(f"/api/stacks/{sid}/play", headers=ADMIN)
        await create(client, "beta")
        missed = await outbox_after(runtime, int(last))
        assert len(missed) >= 6

        async with Listener(client, headers={"Last-Event-ID": last}) as events:
            assert seen(await events.take(len(missed))) == wire(missed)
            # Then live ones, with nothing repeated.
            await client.post(f"/api/stacks/{sid}/pause", headers=ADMIN)
            live = await outbox_after(runtime, int(missed[-1]["id"]))
            assert seen(await events.take(len(live))) == wire(live)
            assert events.pending == 0

        # ?after=N does the same for a client that keeps its own position; the header,
        # which browsers send on reconnect, wins over it.
        everything = await outbox_after(runtime, int(last))
        async with Listener(client, params={"after": last}) as events:
            assert seen(await events.take(len(everything))) == wire(everything)
        async with Listener(client, params={"after": "0"},
                            headers={"Last-Event-ID": str(missed[-1]["id"])}) as events:
            assert seen(await events.take(len(live))) == wire(live)

        r = await client.get("/api/events", headers={"Last-Event-ID": "not-a-number"})
        assert r.status_code == 422
        assert r.json()["error"] == "invalid request"

    run(runtime, scenario)


def test_an_event_written_by_another_process_arrives_by_polling(
        runtime: Runtime, clock: FakeClock, db_url: str) -> None:
    async def scenario(client: httpx.AsyncClient, _: uvicorn.Server) -> None:
        other = Database(db_url)  # another process's connection: no bus, no wake-up here
        try:
            async with Listener(client) as events:
                with other.write() as conn:
                    emit(conn, clock.now(), "stack.updated", None, None, {"from": "elsewhere"})
                rows = await outbox_after(runtime, 0)

                def arrived() -> bool:
                    clock.advance(runtime.settings.poll_s)  # the tailer's poll comes round
                    return events.pending > 0

                await wait_for(arrived, DEADLINE_S, "the polled event")
                assert seen(await events.take(1)) == wire(rows[-1:])
                assert orjson.loads(rows[-1]["data"]) == {"from": "elsewhere"}
        finally:
            other.close()

    run(runtime, scenario)


def test_a_slow_client_is_dropped_and_the_others_keep_up(runtime: Runtime,
                                                         clock: FakeClock) -> None:
    async def write_one(n: int) -> None:
        def work(conn: Any) -> None:
            emit(conn, clock.now(), "stack.updated", None, None, {"n": n})
        await runtime.db.transact(work)

    async def main() -> None:
        tailer = EventTailer(runtime.store, runtime.bus, runtime.settings.poll_s, max_pending=3)
        await tailer.start()
        try:
            fast, slow = tailer.attach(), tailer.attach()
            got: list[int] = []
            for n in range(6):
                await write_one(n)
                async with asyncio.timeout(DEADLINE_S):
                    batch = await fast.next_batch()
                assert batch is not None
                got += [orjson.loads(r["data"])["n"] for r in batch]
            assert got == list(range(6))
            assert slow.dropped and await slow.next_batch() is None
            assert tailer.clients == 1
        finally:
            await tailer.stop()
        assert await fast.next_batch() is None  # stopping ends every stream

    asyncio.run(main())


def test_commits_that_arrive_together_share_one_read(runtime: Runtime, clock: FakeClock
                                                     ) -> None:
    """Twenty commits in a burst, each waking the tailer: it reads once for the first and
    once for those that arrived within its minimum gap, not twenty times, and the client gets
    all twenty in order."""
    reads = 0
    events_after = runtime.store.events_after

    async def counted(after: int, limit: int) -> list[dict[str, Any]]:
        nonlocal reads
        reads += 1
        return await events_after(after, limit)

    def burst() -> None:
        for n in range(20):
            with runtime.db.write() as conn:
                emit(conn, clock.now(), "stack.updated", None, None, {"n": n})

    async def main() -> None:
        nonlocal reads
        runtime.store.events_after = counted  # type: ignore[method-assign]
        tailer = EventTailer(runtime.store, runtime.bus, runtime.settings.poll_s,
                             min_gap_s=2.0)
        await tailer.start()
        try:
            feed = tailer.attach()
            await wait_for(lambda: reads >= 1, DEADLINE_S)  # its first look
            reads = 0
            await asyncio.to_thread(burst)
            got: list[int] = []
            async with asyncio.timeout(DEADLINE_S):
                while len(got) < 20:
                    batch = await feed.next_batch()
                    assert batch is not None
                    got += [orjson.loads(r["data"])["n"] for r in batch]
            assert got == list(range(20))
            assert reads <= 3
        finally:
            await tailer.stop()

    asyncio.run(main())


def test_a_dropped_stream_ends_after_what_it_had_so_the_client_can_resume(
        runtime: Runtime, clock: FakeClock) -> None:
    async def main() -> None:
        tailer = EventTailer(runtime.store, runtime.bus, runtime.settings.poll_s, max_pending=1)
        await tailer.start()
        start = await runtime.store.query(outbox.last_event_id)
        stream = event_stream(tailer, runtime.store, None)
        try:
            opening = await anext(stream)
            assert isinstance(opening, ServerSentEvent) and opening.retry == 1000
            for n in range(3):  # the client reads nothing meanwhile
                def work(conn: Any, n: int = n) -> None:
                    emit(conn, clock.now(), "stack.updated", None, None, {"n": n})
                await runtime.db.transact(work)
                written = await runtime.store.query(outbox.last_event_id)
                await wait_for(lambda: tailer.cursor >= written,  # noqa: B023
                               what="the tailer to hand the event out")
            sent = [frame async for frame in stream]  # what it had, then the end
            rows = await outbox_after(runtime, start)
            assert parse_chunks(sent) == wire(rows)
        finally:
            await stream.aclose()
            await tailer.stop()

    asyncio.run(main())


def test_shutting_down_ends_open_streams(runtime: Runtime) -> None:
    async def main() -> None:
        app = create_app(runtime)
        tailer: EventTailer = app.state.events
        async with serving(app) as (client, server), Listener(client) as events:
            assert tailer.clients == 1
            server.should_exit = True  # the server stops while the client listens
            assert await events.next() is None
        assert tailer.clients == 0

    asyncio.run(main())
