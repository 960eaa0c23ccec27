"""`tickwork sim-llm`'s own HTTP/1.1 server (agents.llm.simhttp), in process on a free loopback
port: the SDKs through it, the parts of HTTP/1.1 their clients and curl use, answers on the
event loop's timers (system clock) or on an injected clock, and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import groq
import openai
import orjson
import pytest
import uvloop

from agents.llm import simhttp
from agents.llm.simknobs import SimConfig
from agents.llm.simserver import SimServer
from schema.clock import Clock, FakeClock, SystemClock
from schema.outputs import PlannerOutput
from tests.conftest import wait_for
from tests.sim_helpers import MODEL, PATHS, PROVIDERS, RATE_HEADERS, planner

Run = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Runs a test's coroutine on the standard loop, then again on uvloop (what sim-llm uses)."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(main: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as loop:
            loop.run(main)
    return runner


class Served:
    """A lean server on a free loopback port, and the raw connections a test opened to it."""

    def __init__(self, sim: SimServer, port: int, stop: asyncio.Event,
                 task: asyncio.Task[None]) -> None:
        self.sim, self.port, self.stop, self.task = sim, port, stop, task
        self.writers: list[asyncio.StreamWriter] = []

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers.append(writer)
        return reader, writer

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def served(config: SimConfig, clock: Clock | None = None, grace_s: float = 2.0
                 ) -> AsyncIterator[Served]:
    sim = SimServer(config, clock or SystemClock(), seed=1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    stop = asyncio.Event()
    task = asyncio.ensure_future(simhttp.serve(sim, sock, stop, grace_s=grace_s))
    server = Served(sim, sock.getsockname()[1], stop, task)
    try:
        yield server
    finally:
        await server.close()
        stop.set()
        await asyncio.wait_for(task, 10)
        sock.close()


def request(method: str, path: str, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: sim"]
    if method == "POST" and "transfer_encoding" not in headers:
        headers.setdefault("content_type", "application/json")
        headers.setdefault("content_length", str(len(body)))
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chat_body(provider: str = "openai") -> bytes:
    return orjson.dumps({"model": MODEL[provider], "messages": planner()})


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:] if h)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def sdk(provider: str, port: int) -> Any:
    base = f"http://127.0.0.1:{port}"
    if provider == "groq":
        return groq.AsyncGroq(api_key="sim", base_url=base, max_retries=0,
                              http_client=groq.DefaultAioHttpClient())
    return openai.AsyncOpenAI(api_key="sim", base_url=f"{base}/v1", max_retries=0,
                              http_client=openai.DefaultAioHttpClient())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_sdks_get_answers_after_the_latency_drawn(provider: str, run: Run) -> None:
    async def main() -> None:
        async with served(SimConfig(latency_ms="40")) as server, \
                sdk(provider, server.port) as client:
            began = time.monotonic()
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL[provider], messages=planner())
            assert time.monotonic() - began >= 0.04
            completion = raw.parse()
            if inspect.isawaitable(completion):
                completion = await completion
            PlannerOutput.model_validate_json(completion.choices[0].message.content)
            assert all(h in raw.headers for h in RATE_HEADERS)
            calls = await asyncio.gather(*(client.chat.completions.create(
                model=MODEL[provider], messages=planner(f"goal {i}")) for i in range(20)))
            assert len({c.choices[0].message.content for c in calls}) > 1
            assert server.sim.stats_json()[provider]["ok"] == 21

    run(main())


def test_keep_alive_and_pipelined_requests_are_answered_in_order(run: Run) -> None:
    async def main() -> None:
        async with served(SimConfig(latency_ms="50")) as server:
            reader, writer = await server.connect()
            writer.write(request("POST", PATHS["groq"], chat_body("groq"))
                         + request("GET", "/v1/models") + request("HEAD", "/_sim/stats")
                         + request("GET", "/_sim/stats"))
            first = await response(reader)  # the chat waits 50 ms; the rest wait for it
            assert first[0] == 200 and orjson.loads(first[2])["object"] == "chat.completion"
            models = await response(reader)
            assert orjson.loads(models[2])["object"] == "list"
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            assert head.startswith("HTTP/1.1 200") and "content-length: " in head
            stats = await response(reader)  # decided on arrival, sent in turn
            assert orjson.loads(stats[2])["groq"]["requests"] == 0
            writer.write(request("GET", "/_sim/config"))  # the same connection, later
            assert (await response(reader))[0] == 200
            writer.close()

    run(main())


def test_chunked_bodies_and_expect_100_continue(run: Run) -> None:
    async def main() -> None:
        async with served(SimConfig(latency_ms="0")) as server:
            reader, writer = await server.connect()
            body = chat_body()
            writer.write(request("POST", PATHS["openai"], transfer_encoding="chunked",
                                 expect="100-continue", content_type="application/json"))
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            for part in (body[:100], body[100:]):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await asyncio.sleep(0.01)
            writer.write(b"0\r\n\r\n")
            status, _, answer = await response(reader)
            assert status == 200
            PlannerOutput.model_validate_json(
                orjson.loads(answer)["choices"][0]["message"]["content"])
            writer.close()

    run(main())


def test_unknown_paths_methods_and_unreadable_requests(run: Run) -> None:
    async def main() -> None:
        async with served(SimConfig(latency_ms="0")) as server:
            reader, writer = await server.connect()
            writer.write(request("GET", "/v2/nothing"))
            status, _, body = await response(reader)
            assert status == 404 and "simulated" in orjson.loads(body)["error"]["message"]
            writer.write(request("GET", PATHS["openai"]))
            status, headers, _ = await response(reader)
            assert status == 405 and headers["allow"] == "POST"
            writer.write(request("POST", PATHS["openai"], b"{nope"))
            assert (await response(reader))[0] == 400  # the API's 400; the connection stays
            writer.write(b"NONSENSE\r\n\r\n")
            status, headers, _ = await response(reader)
            assert status == 400 and headers["connection"] == "close"
            assert await reader.read() == b""  # closed
            for close in (request("GET", "/_sim/stats", connection="close"),
                          b"GET /_sim/stats HTTP/1.0\r\n\r\n"):
                reader, writer = await server.connect()
                writer.write(close)
                status, headers, _ = await response(reader)
                assert status == 200 and headers["connection"] == "close"
                assert await reader.read() == b""

    run(main())


def test_faults_and_limits_come_through_with_their_headers(run: Run) -> None:
    async def main() -> None:
        config = SimConfig(latency_ms="0", groq={"down": True},
                           openai={"rpm": 1, "rate_limit_rate": 0})
        async with served(config) as server:
            reader, writer = await server.connect()
            writer.write(request("POST", PATHS["groq"], chat_body("groq")))
            assert (await response(reader))[0] == 503
            writer.write(request("POST", PATHS["openai"], chat_body()))
            assert (await response(reader))[0] == 200
            writer.write(request("POST", PATHS["openai"], chat_body()))
            status, headers, _ = await response(reader)
            assert status == 429 and int(headers["retry-after"]) > 0
            assert headers["x-ratelimit-remaining-requests"] == "0"
            stats = server.sim.stats_json()
            assert stats["openai"]["ok"] == 1 and stats["openai"]["rate_limited"] == 1
            assert stats["groq"]["down"] == 1
            writer.close()

    run(main())


def test_time_on_an_injected_clock_and_a_hang_ends_when_the_client_leaves(run: Run) -> None:
    clock = FakeClock()

    async def main() -> None:
        async with served(SimConfig(latency_ms="1000"), clock) as server:
            reader, writer = await server.connect()
            writer.write(request("POST", PATHS["openai"], chat_body()))
            await wait_for(lambda: clock.sleepers == 1, what="the answer to wait on the clock")
            clock.advance(0.999)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.read(1), 0.05)
            assert clock.sleepers == 1
            clock.advance(0.001)
            assert (await response(reader))[0] == 200

            server.sim.config = server.sim.config.updated({"hang_rate": 1, "hang_s": 30})
            writer.write(request("POST", PATHS["openai"], chat_body()))
            await wait_for(lambda: clock.sleepers == 1, what="the request to hang")
            assert server.sim.stats_json()["openai"]["hung"] == 1
            writer.close()
            await wait_for(lambda: clock.sleepers == 0, what="the hang to end with its client")

    run(main())


def test_answers_whose_client_left_still_count_and_short_hangs_end_in_504(run: Run) -> None:
    async def main() -> None:
        async with served(SimConfig(latency_ms="30")) as server:
            _, writer = await server.connect()
            writer.write(request("POST", PATHS["groq"], chat_body("groq")))
            await writer.drain()
            writer.close()
            await wait_for(lambda: server.sim.stats_json()["groq"]["ok"] == 1,
                           what="the answer to be counted")
            server.sim.config = server.sim.config.updated({"hang_rate": 1, "hang_s": 0.05})
            reader, writer = await server.connect()
            writer.write(request("POST", PATHS["groq"], chat_body("groq")))
            assert (await response(reader))[0] == 504
            writer.close()

    run(main())


def test_stop_lets_open_requests_finish_then_cuts_hangs_at_the_grace(run: Run) -> None:
    async def main() -> None:
        async with served(SimConfig(latency_ms="300"), grace_s=0.5) as server:
            idle_reader, _ = await server.connect()
            reader, writer = await server.connect()
            writer.write(request("POST", PATHS["openai"], chat_body()))
            sim = server.sim
            await wait_for(lambda: sim.windows["openai"].requests(sim.clock.now()) == 1,
                           what="the request to arrive")
            assert sim.stats_json()["openai"]["requests"] == 0  # not answered yet
            server.stop.set()
            assert await idle_reader.read() == b""  # idle connections close at once
            status, headers, _ = await response(reader)  # the open one is answered
            assert status == 200 and headers["connection"] == "close"
            await asyncio.wait_for(server.task, 2)
            with pytest.raises(OSError):
                await server.connect()

        config = SimConfig(latency_ms="0", hang_rate=1, hang_s=600)
        async with served(config, grace_s=0.3) as server:
            reader, writer = await server.connect()
            writer.write(request("POST", PATHS["openai"], chat_body()))
            await wait_for(lambda: server.sim.stats_json()["openai"]["hung"] == 1,
                           what="the request to hang")
            began = time.monotonic()
            server.stop.set()
            await asyncio.wait_for(server.task, 5)
            assert 0.25 <= time.monotonic() - began < 2
            assert await reader.read() == b""  # cut off, unanswered

    run(main())
