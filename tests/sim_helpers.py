"""Shared by the simulator and chain tests: serving an app on loopback, the requests the
built-in agents send, and reading the simulator's headers."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import uvicorn
from pydantic import BaseModel

from agents.base import StackView, TickContext
from agents.registry import AgentRegistry
from agents.team import FORMAT
from tests.conftest import wait_for

PATHS = {"openai": "/v1/chat/completions", "groq": "/openai/v1/chat/completions"}
MODEL = {"openai": "gpt-4o-mini", "groq": "llama-3.3-70b-versatile"}
PROVIDERS = ["groq", "openai"]
RATE_HEADERS = ["x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def parse_duration(text: str) -> float:
    """A rate-limit header's duration ("2m59.56s", "7.66s", "120ms") in seconds, as a client
    reads it; raises if it is not in that format."""
    found = _DURATION.match(text)
    assert found and text, f"not a duration: {text!r}"
    hours, minutes, secs, millis = found.groups()
    return (int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
            + int(millis or 0) / 1000)


def context(goal: str = "publish a weekly newsletter about tide pools") -> TickContext:
    return TickContext(stack=StackView(1, "tides", goal), tick_id=1, slot=180_000_000,
                       attempt=1)


def agent_messages(name: str, goal: str = "publish a weekly newsletter about tide pools"
                   ) -> tuple[list[dict[str, str]], type[BaseModel]]:
    """The messages a built-in agent's step sends (the team's FORMAT first), and its model."""
    agent = AgentRegistry.default(plugins=False).get(name)
    schema = orjson.dumps(agent.output_type.model_json_schema()).decode()
    messages = [{"role": "system", "content": FORMAT.format(schema=schema)},
                *agent.prompt(context(goal))]
    return messages, agent.output_type


def planner(goal: str = "publish a weekly newsletter about tide pools") -> list[dict[str, str]]:
    return agent_messages("planner", goal)[0]


@contextlib.asynccontextmanager
async def asgi(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield client


async def chat(client: httpx.AsyncClient, provider: str, messages: list[dict[str, str]],
               **extra: Any) -> httpx.Response:
    return await client.post(PATHS[provider], json={"model": MODEL[provider],
                                                    "messages": messages, **extra})


def content_of(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def run(coro: Any) -> Any:
    return asyncio.run(coro)




class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the test process keeps its own."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Serve `app` on a free loopback port in this event loop; yields (base URL, server)."""
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                    access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=2))
    task = asyncio.ensure_future(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), what="uvicorn to start")
        assert server.started, task.result()
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await task


def sdk_env(base: str) -> dict[str, str]:
    """The SDK variables that point both providers at a simulator at `base`."""
    return {"GROQ_API_KEY": "sim-key", "GROQ_BASE_URL": base,
            "OPENAI_API_KEY": "sim-key", "OPENAI_BASE_URL": f"{base}/v1"}
