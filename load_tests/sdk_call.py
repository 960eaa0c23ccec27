"""The CPU one SDK call costs this process: the real groq and openai clients, on their default
httpx transport and on their aiohttp transport (what tickwork uses), against `tickwork sim-llm`
in another process on loopback (latency 0), `--inflight` calls at once.

Each run makes `--calls` chat completions per (SDK, transport) after a warm-up, and reports
this process's CPU time per call (user + system); the simulator's CPU is its own process's and
not counted. Medians of `--runs` runs, the order of the four clients rotated between runs.

    python -m load_tests.sdk_call [--runs 5] [--calls 2000] [--inflight 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import groq
import httpx
import httpx2
import openai

from load_tests.sweep import sim_llm

MESSAGES = [{"role": "system", "content": "Answer with JSON."},
            {"role": "user", "content": "Plan the next step of the essay."}]


def _clients(url: str, inflight: int) -> dict[str, Callable[[], Any]]:
    """(SDK, transport) -> a function building that client."""
    limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
    limits2 = httpx2.Limits(max_connections=inflight, max_keepalive_connections=inflight)
    common: dict[str, Any] = {"api_key": "sim", "max_retries": 0, "timeout": 30.0}
    return {
        "groq httpx": lambda: groq.AsyncGroq(base_url=url, **common, http_client=groq
                                             .DefaultAsyncHttpxClient(limits=limits)),
        "groq aiohttp": lambda: groq.AsyncGroq(base_url=url, **common, http_client=groq
                                               .DefaultAioHttpClient(limits=limits)),
        "openai httpx": lambda: openai.AsyncOpenAI(base_url=f"{url}/v1", **common,
                                                   http_client=openai.DefaultAsyncHttpxClient(
                                                       limits=limits2)),
        "openai aiohttp": lambda: openai.AsyncOpenAI(base_url=f"{url}/v1", **common,
                                                     http_client=openai.DefaultAioHttpClient(
                                                         limits=limits2)),
    }


async def _measure(make: Callable[[], Any], model: str, calls: int, inflight: int
                   ) -> float:
    client = make()
    try:
        gate = asyncio.Semaphore(inflight)

        async def one() -> None:
            async with gate:
                await client.chat.completions.create(model=model, messages=MESSAGES)

        await asyncio.gather(*(one() for _ in range(min(calls, inflight))))  # warm the pool
        began = time.process_time()
        await asyncio.gather(*(one() for _ in range(calls)))
        return (time.process_time() - began) * 1000 / calls
    finally:
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, sim_llm("0", Path(tmp) / "sim.log") as url:
        clients = _clients(url, args.inflight)
        names = list(clients)
        results: dict[str, list[float]] = {n: [] for n in names}
        for run in range(args.runs):
            order = names[run % len(names):] + names[:run % len(names)]
            for name in order:
                model = "llama-3.3-70b-versatile" if name.startswith("groq") else "gpt-4o-mini"
                ms = asyncio.run(_measure(clients[name], model, args.calls, args.inflight))
                results[name].append(ms)
                print(f"run {run + 1}: {name}: {ms:.3f} ms CPU a call", file=sys.stderr)
    out = {"calls": args.calls, "inflight": args.inflight, "runs": args.runs,
           "cpu_ms_per_call": {n: round(statistics.median(v), 3) for n, v in results.items()},
           "runs_ms": {n: [round(x, 3) for x in v] for n, v in results.items()}}
    text = json.dumps(out, indent=2)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
