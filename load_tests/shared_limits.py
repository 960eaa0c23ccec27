"""CPU per model call of the fleet's limits and breakers (not a test: a benchmark to run by hand).

    .venv/bin/python -m load_tests.shared_limits [--calls 2000] [--concurrency 20]

Runs calls through `build_chain(...)` against a fake SDK client that answers at once with the
rate-limit headers a provider sends, once with the limiters and breakers in this process and
once with them in Redis (`SharedLimits`, on a redis-server of its own), and prints the CPU
time per call (time.process_time, this process only) and the Redis round trips per call
(counted by a wrapper around the client). The difference is what sharing costs a worker.

Scenarios:
- openai: a provider with no configured limit whose headers report plenty left;
- groq-full: Groq at 30 requests a minute, full after its first 30 calls, so every later step
  is refused by Groq's limiter and served by OpenAI;
- groq-granted: Groq with a configured limit no run reaches, so every call is granted by the
  fleet's script (the part that stays one round trip per call).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import orjson

from agents.llm.base import LLMRequest
from agents.llm.chain import Chain, ChainOptions, build_chain
from agents.llm.shared import SharedLimits
from schema.clock import SystemClock

__all__: list[str] = []  # nothing here is collected as a test


_COMPLETION = orjson.dumps({"choices": [{"message": {"content": '{"ok": true}'}}],
                            "usage": {"prompt_tokens": 40, "completion_tokens": 10}})


class _FakeSDK:
    """The part of an SDK client an adapter uses (`post`), answering at once with plenty
    left."""

    def __init__(self) -> None:
        self.calls = 0

    async def post(self, path: str, **_: Any) -> Any:
        self.calls += 1
        return SimpleNamespace(content=_COMPLETION, headers={
            "x-ratelimit-limit-requests": "10000", "x-ratelimit-limit-tokens": "10000000",
            "x-ratelimit-remaining-requests": str(max(0, 9000 - self.calls % 1000)),
            "x-ratelimit-remaining-tokens": "9000000",
            "x-ratelimit-reset-requests": "6ms", "x-ratelimit-reset-tokens": "1ms"})


def _chain(spec: str, options: ChainOptions, shared: SharedLimits | None) -> Chain:
    env = {"GROQ_API_KEY": "bench", "OPENAI_API_KEY": "bench"}
    chain = build_chain(spec, env, SystemClock(), options, shared=shared)
    for member in chain.providers:
        adapter: Any = member.llm
        while hasattr(adapter, "inner"):
            adapter = adapter.inner
        adapter._client = _FakeSDK()
    return chain


@dataclass
class _Result:
    cpu_us_per_call: float
    round_trips_per_call: float


class _Redis:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._dir = tempfile.mkdtemp(prefix="tickwork-bench-")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self._dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self._dir, ignore_errors=True)


def _count_round_trips(shared: SharedLimits) -> list[int]:
    """Count the commands and pipelines the shared limits send (one round trip each)."""
    client: Any = shared._client
    count = [0]
    command, pipeline = client.execute_command, client.pipeline

    async def counted(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return await command(*args, **kwargs)

    def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        execute = pipe.execute

        async def counted_execute(*a: Any, **k: Any) -> Any:
            count[0] += 1
            return await execute(*a, **k)

        pipe.execute = counted_execute
        return pipe

    client.execute_command, client.pipeline = counted, counted_pipeline
    return count


async def _run(spec: str, options: ChainOptions, redis_url: str | None, calls: int,
               concurrency: int, warm: int) -> _Result:
    shared = SharedLimits(redis_url, SystemClock(), prefix=f"bench{time.monotonic_ns()}:") \
        if redis_url else None
    chain = _chain(spec, options, shared)
    count = [0]
    if shared is not None:
        chain.closers.append(shared.aclose)
        count = _count_round_trips(shared)
    request = LLMRequest(messages=[{"role": "user", "content": "plan the week"}],
                         schema_name="Answer", output_schema={"type": "object"}, seed="1",
                         max_tokens=100)
    try:
        async def many(n: int) -> None:
            queue = iter(range(n))

            async def lane() -> None:
                for _ in queue:
                    await chain.llm.complete(request)

            await asyncio.gather(*(lane() for _ in range(concurrency)))

        await many(warm)  # connections open, scripts loaded, Groq's minute full
        before = count[0]
        started = time.process_time()
        await many(calls)
        cpu = time.process_time() - started
        round_trips = count[0] - before
    finally:
        await chain.aclose()
    return _Result(cpu / calls * 1e6, round_trips / calls)


SCENARIOS: dict[str, tuple[str, ChainOptions]] = {
    "openai (no configured limit, plenty left)":
        ("openai:gpt-4o-mini", ChainOptions(max_attempts=1)),
    "groq-full (refused by Groq's minute, served by OpenAI)":
        ("groq:llama-3.3-70b-versatile,openai:gpt-4o-mini", ChainOptions(max_attempts=1)),
    "groq-granted (every call granted by the fleet's script)":
        ("groq:llama-3.3-70b-versatile",
         ChainOptions(max_attempts=1, groq_rpm=10_000_000, groq_tpm=None)),
}
WARM = 50  # calls before measuring: connections open, scripts loaded, Groq's minute full


def _best(spec: str, options: ChainOptions, url: str | None, args: argparse.Namespace
          ) -> _Result:
    results = [asyncio.run(_run(spec, options, url, args.calls, args.concurrency, WARM))
               for _ in range(args.rounds)]
    return min(results, key=lambda r: r.cpu_us_per_call)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many runs")
    args = parser.parse_args(argv)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed")
    server = _Redis()
    try:
        print(f"{args.calls} calls, {args.concurrency} at a time, best of {args.rounds}")
        print(f"{'scenario':57} {'in-process':>11} {'Redis':>11} {'sharing':>9} "
              f"{'round trips/call':>17}")
        for name, (spec, options) in SCENARIOS.items():
            local = _best(spec, options, None, args)
            shared = _best(spec, options, server.url, args)
            print(f"{name:57} {local.cpu_us_per_call:8.0f} µs {shared.cpu_us_per_call:8.0f} µs "
                  f"{shared.cpu_us_per_call - local.cpu_us_per_call:6.0f} µs "
                  f"{shared.round_trips_per_call:17.3f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
