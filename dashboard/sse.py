"""The live event stream: one shared server-sent event stream fed from the outbox.

One `EventTailer` per app reads new outbox rows and hands them to every connected client's
`Feed`. It wakes when any process commits events (the bus) and otherwise every `poll_s`
seconds; there is one database read per wake-up, however many clients listen, and no more than
one per `MIN_GAP_S`: under a fleet's stream of commits, wake-ups that arrive together share one
read instead of each paying for its own. A client's feed is bounded: a client that falls that
far behind is dropped, its stream ends, and the browser reconnects and resumes with
`Last-Event-ID`.

A client starts from `Last-Event-ID` (header) or `?after=N`, or else from the current end. It
attaches its feed first, then reads what it missed from the database, then follows its feed,
skipping ids it already sent. Event ids are handed out in commit order (see
`orchestrator.outbox`), so this resumes exactly: no gap, no duplicate.

Each event goes out with `id` = the outbox row id, `event` = its kind, `data` = the row's JSON
text as stored. The stream opens with `retry: 1000` and sends a keep-alive comment every 15 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import SendTimeoutError
from starlette.types import Receive, Scope, Send

from dashboard.errors import responses
from dashboard.params import optional_int
from orchestrator.interfaces import Bus, Subscription
from orchestrator.store.abc import Store
from schema.events import TOPIC_EVENTS
from schema.models import INT64_MAX

log = logging.getLogger("tickwork.dashboard.events")

Row = Mapping[str, Any]

PAGE = 500
MAX_PENDING = 10_000
RETRY_MS = 1000
KEEPALIVE_S = 15.0
SEND_TIMEOUT_S = 30.0
MIN_GAP_S = 0.02  # between two reads of the outbox (at most 20 ms added to an event's way)


class Feed:
    """One client's queue of outbox rows, bounded by `max_pending` rows waiting."""

    def __init__(self, max_pending: int) -> None:
        self._rows: deque[Row] = deque()
        self._ready = asyncio.Event()
        self._max = max_pending
        self.closed = False
        self.dropped = False  # closed because the client fell behind

    def push(self, rows: Sequence[Row]) -> None:
        if self.closed:
            return
        if len(self._rows) >= self._max:
            self.dropped = True
            self.close()
            return
        self._rows.extend(rows)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._rows.clear()
        self._ready.set()

    async def next_batch(self) -> list[Row] | None:
        """The rows pushed since the last call, waiting for some; None once closed."""
        while not self._rows and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        if self.closed:
            return None
        batch = list(self._rows)
        self._rows.clear()
        return batch


class EventTailer:
    def __init__(self, store: Store, bus: Bus, poll_s: float, *, page: int = PAGE,
                 max_pending: int = MAX_PENDING, min_gap_s: float = MIN_GAP_S) -> None:
        self._store = store
        self._bus = bus
        self._poll_s = poll_s
        self._min_gap_s = min_gap_s
        self._page = page
        self._max_pending = max_pending
        self._feeds: set[Feed] = set()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.cursor = 0  # the last outbox id handed to the feeds

    @property
    def clients(self) -> int:
        return len(self._feeds)

    async def start(self) -> None:
        """Begin tailing from the current end of the outbox (idempotent; the app's lifespan
        calls it, and a stream asks for it too when the app runs without one)."""
        self._stopped = False
        await self.ensure_started()

    async def ensure_started(self) -> None:
        async with self._lock:
            if self._task is not None or self._stopped:
                return
            sub = self._bus.subscribe(TOPIC_EVENTS)
            try:
                self.cursor = await self._store.last_event_id()
            except BaseException:
                sub.close()
                raise
            self._task = asyncio.create_task(self._run(sub), name="tickwork-event-tailer")

    async def stop(self) -> None:
        """Stop tailing and end every client's stream."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for feed in list(self._feeds):
            feed.close()
        self._feeds.clear()

    def attach(self) -> Feed:
        feed = Feed(self._max_pending)
        if self._stopped:
            feed.close()
        else:
            self._feeds.add(feed)
        return feed

    def detach(self, feed: Feed) -> None:
        self._feeds.discard(feed)

    async def _run(self, sub: Subscription) -> None:
        failing = False
        loop = asyncio.get_running_loop()
        try:
            while True:
                full = False
                began = loop.time()
                try:
                    rows = await self._store.events_after(self.cursor, self._page)
                except Exception as exc:
                    if not failing:
                        log.warning("reading the event outbox failed (%s); retrying every "
                                    "%g s", exc, self._poll_s)
                    failing, rows = True, []
                else:
                    if failing:
                        log.info("reading the event outbox works again")
                    failing = False
                if rows:
                    self.cursor = rows[-1]["id"]
                    self._fan_out(rows)
                    full = len(rows) >= self._page
                if not full and await sub.wait(self._poll_s):
                    rest = began + self._min_gap_s - loop.time()
                    if rest > 0:  # woken right after a read: let the others arrive too
                        await asyncio.sleep(rest)
        finally:
            sub.close()

    def _fan_out(self, rows: Sequence[Row]) -> None:
        for feed in list(self._feeds):
            feed.push(rows)
            if feed.closed:
                self._feeds.discard(feed)
                if feed.dropped:
                    log.info("dropped an event-stream client %d events behind; it resumes on "
                             "reconnect", self._max_pending)


def _event(row: Row) -> ServerSentEvent:
    return ServerSentEvent(data=row["data"], event=row["kind"], id=str(row["id"]))


def _encode(rows: Sequence[Row]) -> bytes:
    """Many events as one chunk, one write to the client (bytes go out as they are): the
    events of a commit arrive together, and a write per event is the costly part of serving
    them. Stored JSON has no line breaks; anything else takes the library's encoder."""
    parts: list[bytes] = []
    for row in rows:
        data, kind = row["data"], row["kind"]
        if "\n" in data or "\r" in data or "\n" in kind or "\r" in kind:
            parts.append(_event(row).encode())
        else:
            parts.append(f"id: {row['id']}\r\nevent: {kind}\r\ndata: {data}\r\n\r\n".encode())
    return b"".join(parts)


async def event_stream(tailer: EventTailer, store: Store, after: int | None
                       ) -> AsyncGenerator[ServerSentEvent | bytes, None]:
    """The events with id > `after` (or from the current end), then live ones.

    If the database cannot be read, the stream ends; the client retries and resumes."""
    feed: Feed | None = None
    try:
        await tailer.ensure_started()
        feed = tailer.attach()  # first, so nothing committed from here on is missed
        end = await store.last_event_id()
        # An id beyond the end came from another database: start from the end.
        cursor = end if after is None else min(after, end)
        yield ServerSentEvent(comment="tickwork events", retry=RETRY_MS)
        while True:  # what the client missed, from the database
            rows = await store.events_after(cursor, PAGE)
            if rows:
                yield _encode(rows)
                cursor = rows[-1]["id"]
            if len(rows) < PAGE:
                break
        while (batch := await feed.next_batch()) is not None:
            fresh = [row for row in batch if row["id"] > cursor]
            if fresh:
                yield _encode(fresh)
                cursor = fresh[-1]["id"]
    except Exception as exc:
        log.warning("could not read the event outbox (%s); closing a stream", exc)
    finally:
        if feed is not None:
            tailer.detach(feed)


class EventStreamResponse(EventSourceResponse):
    """An SSE response that ends quietly when a client stops reading (send timeout)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            log.info("an event-stream client stopped reading; closed its stream")


def router(store: Store, tailer: EventTailer) -> APIRouter:
    api = APIRouter(prefix="/api", tags=["events"])

    @api.get(
        "/events", response_class=EventStreamResponse,
        responses={200: {"content": {"text/event-stream": {}},
                         "description": "server-sent events: id = outbox id, event = kind, "
                                        "data = JSON"},
                   **responses(422)},
    )
    async def events(
        after: Annotated[int | None, optional_int(0, INT64_MAX), Query(
            ge=0, le=INT64_MAX, description="resume after this event id")] = None,
        last_event_id: Annotated[int | None, optional_int(0, INT64_MAX), Header(
            alias="Last-Event-ID", ge=0, le=INT64_MAX)] = None,
    ) -> EventStreamResponse:
        """One shared stream of every change: stack.updated, tick.queued, tick.started,
        step.finished, tick.finished. `Last-Event-ID` (sent by browsers on reconnect) takes
        precedence over `after`."""
        start = last_event_id if last_event_id is not None else after
        return EventStreamResponse(
            event_stream(tailer, store, start), ping=KEEPALIVE_S, send_timeout=SEND_TIMEOUT_S,
            ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
        )

    return api
