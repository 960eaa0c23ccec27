"""The HTTP/1.1 server `tickwork sim-llm` runs: lean enough to answer hundreds of requests a
second, each held for a second or more, on a fraction of a core.

It speaks as much HTTP/1.1 as the SDKs' clients (httpx, aiohttp), curl and browsers use:
keep-alive and pipelined requests (answered in order), `Content-Length` and chunked request
bodies, `Expect: 100-continue`, HEAD. Each request is decided on arrival by `SimServer.handle`;
an answer that waits (latency, a hang) is one timer on the simulator's clock
(`Clock.call_later`: the event loop's own timer on the system clock) that writes the reply when
it fires — no task, no coroutine per request. A client that goes away ends its hangs; its other
answers still finish (and are counted in the stats), unsent.

On stop it closes the listening socket and idle connections, lets open requests finish for
`grace_s`, then closes the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import deque
from http import HTTPStatus
from typing import cast

import orjson

from agents.llm.simbodies import Reply
from agents.llm.simserver import Pending, SimServer
from schema.clock import Cancellable

log = logging.getLogger(__name__)
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
BACKLOG = 2048
_PHRASES = {s.value: s.phrase for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _error(status: int, message: str) -> Reply:
    return Reply(status, orjson.dumps({"error": {"message": f"{message} (simulated)",
                                                 "type": "invalid_request_error",
                                                 "code": None}}))


def encode(reply: Reply, keep_alive: bool, head_only: bool = False) -> bytes:
    """The reply as HTTP/1.1 bytes: status line, headers, JSON body."""
    body = reply.body
    lines = [f"HTTP/1.1 {reply.status} {_PHRASES.get(reply.status, '')}\r\n"
             f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in reply.headers.items()]
    if not keep_alive:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("latin-1")
    return head if head_only else head + body


def _header(low_head: bytes, name: bytes) -> bytes | None:
    """The value of header `name` (lower case, with its colon) in a lower-cased head."""
    at = low_head.find(name)
    if at < 0:
        return None
    start = at + len(name)
    end = low_head.find(b"\r\n", start)
    return low_head[start:end if end >= 0 else len(low_head)].strip()


def _dechunk(buf: bytes, at: int) -> tuple[bytes, int] | None:
    """(body, end) of a chunked body starting at `at`, None while incomplete; ValueError if
    malformed. Trailers are skipped."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", at)
        if eol < 0:
            return None
        size = int(buf[at:eol].split(b";", 1)[0].strip(), 16)
        if size < 0:
            raise ValueError("negative chunk size")
        at = eol + 2
        if size == 0:
            while True:  # trailers, then the empty line
                eol = buf.find(b"\r\n", at)
                if eol < 0:
                    return None
                if eol == at:
                    return b"".join(parts), eol + 2
                at = eol + 2
        if len(buf) < at + size + 2:
            return None
        if buf[at + size:at + size + 2] != b"\r\n":
            raise ValueError("chunk without its CRLF")
        parts.append(buf[at:at + size])
        at += size + 2


class _TooLarge(ValueError):
    pass


class _Head:
    """A request's parsed head, kept while its body is still arriving."""

    __slots__ = ("body_at", "chunked", "expects", "keep_alive", "length", "method", "path")

    def __init__(self, method: str, path: str, keep_alive: bool, chunked: bool, body_at: int,
                 length: int, expects: bool) -> None:
        self.method = method
        self.path = path
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.body_at = body_at
        self.length = length
        self.expects = expects


class _Slot:
    """One request on a connection, answered in the order they came."""

    __slots__ = ("data", "head_only", "keep_alive", "pending", "wait")

    def __init__(self, keep_alive: bool, head_only: bool) -> None:
        self.keep_alive = keep_alive
        self.head_only = head_only
        self.data: bytes | None = None
        self.pending: Pending | None = None
        self.wait: Cancellable | None = None


class _State:
    """What the connections share: the simulator, the loop, whether it is stopping."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.idle = asyncio.Event()  # set when no connection has a request open


class _Connection(asyncio.Protocol):
    def __init__(self, state: _State) -> None:
        self._state = state
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._head: _Head | None = None  # parsed, its body not all here yet
        self._continued = False
        self._queue: deque[_Slot] = deque()
        self._closing = False

    # -- the connection -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self._state.connections.add(self)
        if self._state.stopping:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._state.connections.discard(self)
        for slot in self._queue:
            if slot.pending is not None and slot.pending.outcome == "hung":
                self._cancel(slot)  # the client left: the hang is over
        self._queue.clear()
        self._settled()

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        for slot in self._queue:
            self._cancel(slot)
        if self._transport is not None:
            self._transport.abort()

    @staticmethod
    def _cancel(slot: _Slot) -> None:
        if slot.wait is not None:
            slot.wait.cancel()
            slot.wait = None

    def _settled(self) -> None:
        state = self._state
        if state.stopping and not any(c.busy for c in state.connections):
            state.idle.set()

    # -- reading requests -----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        buf = self._buffer + data if self._buffer else data
        while buf and not self._closing:
            head = self._head
            if head is None:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        return self._fail(431, "the request head is too large")
                    break
                try:
                    head = self._head = self._parse_head(buf[:end], end + 4)
                except ValueError as exc:
                    return self._fail(413 if isinstance(exc, _TooLarge) else 400, str(exc))
            if head.chunked:
                try:
                    found = _dechunk(buf, head.body_at)
                except ValueError as exc:
                    return self._fail(400, f"bad chunked body: {exc}")
                if found is None:
                    if len(buf) > MAX_HEAD + MAX_BODY:
                        return self._fail(413, "the request body is too large")
                    self._continue(head.expects)
                    break
                body, used = found
            else:
                used = head.body_at + head.length
                if len(buf) < used:
                    self._continue(head.expects)
                    break
                body = buf[head.body_at:used]
            buf = buf[used:]
            self._head, self._continued = None, False
            self._request(head.method, head.path, body, head.keep_alive)
        self._buffer = buf

    @staticmethod
    def _parse_head(raw: bytes, body_at: int) -> _Head:
        line_end = raw.find(b"\r\n")
        parts = (raw if line_end < 0 else raw[:line_end]).split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise ValueError("not an HTTP/1.x request line")
        method, target, version = parts
        low = raw.lower()
        connection = _header(low, b"\r\nconnection:") or b""
        keep_alive = (b"close" not in connection if version == b"HTTP/1.1"
                      else b"keep-alive" in connection)
        encoding = _header(low, b"\r\ntransfer-encoding:")
        chunked = encoding is not None and encoding.endswith(b"chunked")
        expects = _header(low, b"\r\nexpect:") == b"100-continue"
        length = 0
        if not chunked:
            length_text = _header(low, b"\r\ncontent-length:")
            if length_text and not length_text.isdigit():
                raise ValueError("a content-length that is not a number")
            length = int(length_text) if length_text else 0
            if length > MAX_BODY:
                raise _TooLarge("the request body is too large")
        path = target.split(b"?", 1)[0].decode("latin-1")
        return _Head(method.decode("latin-1"), path, keep_alive, chunked, body_at, length,
                     expects)

    def _continue(self, expects: bool) -> None:
        if expects and not self._continued and self._transport is not None:
            self._continued = True
            self._transport.write(_CONTINUE)

    def _fail(self, status: int, message: str) -> None:
        """A request that cannot be read: answer it (after those before it), then close."""
        self._buffer, self._head, self._closing = b"", None, True
        slot = _Slot(False, False)
        slot.data = encode(_error(status, message), False)
        self._queue.append(slot)
        self._flush()

    # -- answering ------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes, keep_alive: bool) -> None:
        state = self._state
        if state.stopping or not keep_alive:
            keep_alive, self._closing = False, True
        slot = _Slot(keep_alive, method == "HEAD")
        self._queue.append(slot)
        try:
            result = state.sim.handle(method, path, body)
        except Exception:
            log.exception("sim-llm failed on %s %s", method, path)
            result = _error(500, "the simulator failed on this request")
        if isinstance(result, Pending):
            slot.pending = result
            if result.seconds > 0:
                slot.wait = state.sim.clock.call_later(result.seconds,
                                                       lambda: self._finish(slot))
            else:
                self._finish(slot)
        else:
            slot.data = encode(result, keep_alive, slot.head_only)
            self._flush()

    def _finish(self, slot: _Slot) -> None:
        pending, slot.pending, slot.wait = slot.pending, None, None
        assert pending is not None
        try:
            reply = self._state.sim.finish(pending)
        except Exception:
            log.exception("sim-llm failed to finish an answer")
            reply = _error(500, "the simulator failed on this request")
        if self._transport is not None:
            slot.data = encode(reply, slot.keep_alive and not self._state.stopping,
                               slot.head_only)
            self._flush()

    def _flush(self) -> None:
        queue, transport = self._queue, self._transport
        while queue and queue[0].data is not None and transport is not None:
            slot = queue.popleft()
            assert slot.data is not None
            transport.write(slot.data)
            if not slot.keep_alive or self._state.stopping:
                self.close()
                break
        self._settled()


async def serve(sim: SimServer, sock: socket.socket, stop: asyncio.Event,
                grace_s: float = 2.0) -> None:
    """Serve `sim` on the bound socket `sock` until `stop` is set, then shut down gracefully:
    no new connections, idle ones closed, open requests given `grace_s` to finish."""
    loop = asyncio.get_running_loop()
    state = _State(sim)
    server = await loop.create_server(lambda: _Connection(state), sock=sock, backlog=BACKLOG)
    try:
        await stop.wait()
    finally:
        server.close()
        state.stopping = True
        for conn in list(state.connections):
            if not conn.busy:
                conn.close()
        if any(c.busy for c in state.connections):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.idle.wait(), grace_s)
        for conn in list(state.connections):
            conn.abort()
        await server.wait_closed()
