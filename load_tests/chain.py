"""The LLM chain's own costs: the real groq and openai SDKs against sim-llm on loopback.

1. Fallback overhead with groq's breaker open (sim latency 0, groq down): chain A, groq →
   openai with groq's breaker opened first, against chain B, openai alone, same options. Calls
   alternate A/B (order flipped every call) after a warm-up; per-call wall time and process CPU
   (the simulator runs in this process, so CPU includes its share). The skip alone is timed too.
2. 429s avoided by the rate limiter (groq enforces 30 rpm, openai unlimited, latency 0, one
   FakeClock for the simulator and the chains): one call every 0.5 simulated seconds through
   the normal chain (limiter at 30 rpm; no token limit, as the simulator enforces none) and
   through the same providers without it, BreakerLLM(RetryingLLM(adapter), max_attempts=1).

    python -m load_tests.chain [--runs 5] [--calls 200] [--rl-calls 240] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from rich.console import Console
from rich.table import Table

from agents.base import StackView, TickContext
from agents.llm.base import LLM, LLMError, LLMRequest, SkippedOpenBreaker
from agents.llm.breaker import BreakerLLM, CircuitBreaker
from agents.llm.chain import ChainOptions, build_chain
from agents.llm.fallback import FallbackLLM
from agents.llm.groq_adapter import GroqLLM
from agents.llm.openai_adapter import OpenAILLM
from agents.llm.providers import GroqProvider, OpenAIProvider, Provider
from agents.llm.retry import RetryingLLM
from agents.llm.simknobs import SimConfig
from agents.llm.simserver import SimServer, create_sim_app
from agents.planner import Planner
from agents.team import FORMAT
from schema.clock import Clock, FakeClock, SystemClock
from schema.outputs import PlannerOutput

GROQ, OPENAI = "groq:llama-3.3-70b-versatile", "openai:gpt-4o-mini"
WARMUP = 20  # untimed calls per chain per run
SKIP_SAMPLES = 2000
PACE_S = 0.5
GROQ_RPM = 30
DRAIN_TICKS = 400  # at most this many extra ticks for calls still waiting on the fake clock
# The breaker's cool-down outlasts the run; no backoff so that opening it takes no time.
OVERHEAD_OPTIONS = ChainOptions(breaker_cooldown_s=1e9, backoff_base_s=0.0)
LIMITED_OPTIONS = ChainOptions(groq_rpm=GROQ_RPM, groq_tpm=None)
SKIP_THEN_OPENAI = [("groq", "skipped_open_breaker"), ("openai", "ok")]


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # keep the process's own signal handlers
        yield


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """`app` on a free loopback port in this event loop; its base URL. Shuts down cleanly."""
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                    access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=2))
    task = asyncio.ensure_future(server.serve())
    try:
        for _ in range(1000):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            raise RuntimeError(f"uvicorn did not start: {task.exception() if task.done() else ''}")
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


def sdk_env(base: str) -> dict[str, str]:
    return {"GROQ_API_KEY": "sim-key", "GROQ_BASE_URL": base,
            "OPENAI_API_KEY": "sim-key", "OPENAI_BASE_URL": f"{base}/v1"}


def planner_request() -> LLMRequest:
    """The planner's request as agents/team.py builds it."""
    ctx = TickContext(stack=StackView(1, "tides", "publish a newsletter about tide pools"),
                      tick_id=1, slot=180_000_000, attempt=1)
    schema = PlannerOutput.model_json_schema()
    messages = [{"role": "system", "content": FORMAT.format(schema=orjson.dumps(schema).decode())},
                *Planner().prompt(ctx)]
    return LLMRequest(messages=messages, schema_name="PlannerOutput", output_schema=schema,
                      seed="1:180000000:planner")


def med(values: list[Any]) -> Any:
    return statistics.median(values) if values else None


# -- 1. fallback overhead with the breaker open ----------------------------------------------


async def overhead_run(sim: SimServer, base: str, calls: int, request: LLMRequest
                       ) -> dict[str, Any]:
    sim.reset()
    env, clock = sdk_env(base), SystemClock()
    chain_a = build_chain(f"{GROQ},{OPENAI}", env, clock, OVERHEAD_OPTIONS)
    chain_b = build_chain(OPENAI, env, clock, OVERHEAD_OPTIONS)
    groq_member = chain_a.providers[0]
    try:
        for _ in range(50):
            if groq_member.breaker.snapshot().state == "open":
                break
            await chain_a.llm.complete(request)
        if groq_member.breaker.snapshot().state != "open":
            raise RuntimeError("groq's breaker did not open")
        for _ in range(WARMUP):
            await chain_a.llm.complete(request)
            await chain_b.llm.complete(request)
        groq_before = sim.stats_json()["groq"]["requests"]
        wall: dict[str, list[float]] = {"a": [], "b": []}
        cpu: dict[str, list[float]] = {"a": [], "b": []}
        bad_trails = 0
        for i in range(calls):
            for name in ("ab" if i % 2 == 0 else "ba"):
                c0, t0 = time.process_time(), time.perf_counter()
                response = await (chain_a if name == "a" else chain_b).llm.complete(request)
                t1, c1 = time.perf_counter(), time.process_time()
                wall[name].append((t1 - t0) * 1000)
                cpu[name].append((c1 - c0) * 1000)
                steps = [(a.provider, a.status) for a in response.attempts]
                bad_trails += name == "a" and steps != SKIP_THEN_OPENAI
        skips: list[float] = []  # the skip alone: groq's member refusing at once
        for _ in range(SKIP_SAMPLES):
            t0 = time.perf_counter()
            with contextlib.suppress(SkippedOpenBreaker):
                await groq_member.llm.complete(request)
            skips.append((time.perf_counter() - t0) * 1e6)
        groq_timed = sim.stats_json()["groq"]["requests"] - groq_before  # both timed phases
    finally:
        await chain_a.aclose()
        await chain_b.aclose()
    a, b = med(wall["a"]), med(wall["b"])
    return {"a_median_ms": a, "b_median_ms": b, "overhead_ms": a - b, "ratio": a / b,
            "a_cpu_median_ms": med(cpu["a"]), "b_cpu_median_ms": med(cpu["b"]),
            "skip_median_us": med(skips), "a_calls_not_skip_then_openai": bad_trails,
            "groq_requests_while_timed": groq_timed}


async def fallback_overhead(runs: int, calls: int, console: Console) -> dict[str, Any]:
    config = SimConfig.model_validate({"latency_ms": "0", "groq": {"down": True}})
    app = create_sim_app(config, clock=SystemClock(), seed=1)
    request, per_run = planner_request(), list[dict[str, Any]]()
    async with serving(app) as base:
        for n in range(runs):
            r = await overhead_run(app.state.sim, base, calls, request)
            per_run.append(r)
            console.log(f"overhead run {n + 1}/{runs}: A {r['a_median_ms']:.3f} ms, B "
                        f"{r['b_median_ms']:.3f} ms, A − B {r['overhead_ms'] * 1000:.0f} µs")
    keys = [k for k, v in per_run[0].items() if isinstance(v, float)]
    return {"calls_per_chain": calls, "warmup_calls": WARMUP, "sim_latency_ms": 0,
            "options": dataclasses.asdict(OVERHEAD_OPTIONS), "runs": per_run,
            "median": {k: med([r[k] for r in per_run]) for k in keys},
            "all_a_calls_skip_then_openai": not any(r["a_calls_not_skip_then_openai"]
                                                    for r in per_run),
            "no_groq_request_while_timed": not any(r["groq_requests_while_timed"] for r in per_run)}


# -- 2. 429s avoided by the limiter ----------------------------------------------------------


class PacingClock(FakeClock):
    """A FakeClock that knows which tasks sleep on it themselves (a retry's wait), as opposed
    to the timers that bound each attempt."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeping: set[asyncio.Task[Any]] = set()

    async def sleep(self, seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.sleeping.add(task)
        try:
            await super().sleep(seconds)
        finally:
            self.sleeping.discard(task)


async def settled(task: asyncio.Task[Any], clock: PacingClock) -> None:
    """Until the call is done or waits on the fake clock (at most 10 s of real time)."""
    for _ in range(10_000):
        if task.done() or task in clock.sleeping:
            return
        await asyncio.sleep(0.001)
    raise RuntimeError("a call neither finished nor waited on the clock within 10 s")


def unlimited(groq: GroqProvider, openai: OpenAIProvider, clock: Clock) -> LLM:
    """The chain's providers without the rate limiter: Breaker → Retrying(1 attempt) → adapter."""
    options = dataclasses.replace(LIMITED_OPTIONS, max_attempts=1)
    return FallbackLLM(*(
        BreakerLLM(RetryingLLM(adapter, options.retry_policy, clock, random.Random(0)),
                   CircuitBreaker(options.breaker_threshold, options.breaker_cooldown_s, clock),
                   clock)
        for adapter in (GroqLLM(groq.client, GROQ.split(":")[1], clock),
                        OpenAILLM(openai.client, OPENAI.split(":")[1], clock))))


async def paced(llm: LLM, request: LLMRequest, clock: PacingClock, calls: int
                ) -> dict[str, Any]:
    """`calls` calls, one every PACE_S on the fake clock; what served them and every attempt."""
    tasks = []
    for _ in range(calls):
        tasks.append(asyncio.ensure_future(llm.complete(request)))
        await settled(tasks[-1], clock)
        clock.advance(PACE_S)
    for _ in range(DRAIN_TICKS):
        if all(t.done() for t in tasks):
            break
        for t in tasks:
            await settled(t, clock)
        clock.advance(PACE_S)
    attempts: Counter[str] = Counter()
    served: Counter[str] = Counter()
    for t in tasks:
        if not t.done():  # still waiting on the clock after the drain: counted, not awaited
            t.cancel()
            served["unfinished"] += 1
            continue
        exc = t.exception()
        if exc is not None and not isinstance(exc, LLMError):
            raise exc
        served["failed" if exc else t.result().provider] += 1
        attempts.update(f"{a.provider}:{a.status}" for a in (exc or t.result()).attempts)
    return {"served": dict(served), "attempts": dict(sorted(attempts.items()))}


async def variant(sim: SimServer, base: str, clock: PacingClock, calls: int, limiter: bool,
                  request: LLMRequest) -> dict[str, Any]:
    sim.reset()
    clock.advance(3600)  # nothing of the last variant is left in any window
    env = sdk_env(base)
    clients: list[Provider]
    if limiter:
        chain = build_chain(f"{GROQ},{OPENAI}", env, clock, LIMITED_OPTIONS,
                            rng=random.Random(0))
        llm, clients = chain.llm, list(chain.clients)
    else:
        groq, openai = GroqProvider.from_env(env), OpenAIProvider.from_env(env)
        assert groq is not None and openai is not None
        llm, clients = unlimited(groq, openai, clock), [groq, openai]
    try:
        result = await paced(llm, request, clock, calls)
    finally:
        for client in clients:
            await client.aclose()
    groq_stats = sim.stats_json()["groq"]
    return {**result, "groq_429": groq_stats["rate_limited"],
            "groq_requests": groq_stats["requests"]}


async def rate_limit(runs: int, calls: int, console: Console) -> dict[str, Any]:
    config = SimConfig.model_validate({"latency_ms": "0", "groq": {"rpm": GROQ_RPM}})
    clock = PacingClock()
    app = create_sim_app(config, clock=clock, seed=2)
    request, per_run = planner_request(), list[dict[str, Any]]()
    async with serving(app) as base:
        for n in range(runs):
            run = {v: await variant(app.state.sim, base, clock, calls, v == "with", request)
                   for v in ("with", "without")}
            with_, without = run["with"]["groq_429"], run["without"]["groq_429"]
            run["figures"] = {"groq_429_with": with_, "groq_429_without": without,
                              "avoided_share": 1 - with_ / without if without else None,
                              **{f"{p}_served_{v}": run[v]["served"].get(p, 0)
                                 for v in ("with", "without") for p in ("groq", "openai")}}
            per_run.append(run)
            console.log(f"rate-limit run {n + 1}/{runs}: groq 429s with the limiter {with_}, "
                        f"without {without}")
    return {"calls": calls, "pace_s": PACE_S, "groq_enforced_rpm": GROQ_RPM,
            "limited_options": dataclasses.asdict(LIMITED_OPTIONS), "runs": per_run,
            "median": {k: med([r["figures"][k] for r in per_run if r["figures"][k] is not None])
                       for k in per_run[0]["figures"]}}


# -- report ----------------------------------------------------------------------------------


def report(result: dict[str, Any], console: Console) -> None:
    fo, rl = result["fallback_overhead"], result["rate_limit"]
    table = Table(title="LLM chain through the real SDKs against sim-llm (loopback)")
    for n, name in enumerate(["figure", *(f"run {i + 1}" for i in range(len(fo["runs"]))),
                              "median"]):
        table.add_column(name, justify="left" if n == 0 else "right")
    f1, f2 = (fo["runs"], fo["median"]), ([r["figures"] for r in rl["runs"]], rl["median"])

    def row(label: str, runs: list[dict[str, Any]], median: dict[str, Any], show: Any) -> None:
        table.add_row(label, *map(show, runs), show(median))

    row("A: groq (breaker open) → openai, ms", *f1, lambda r: f"{r['a_median_ms']:.3f}")
    row("B: openai alone, ms", *f1, lambda r: f"{r['b_median_ms']:.3f}")
    row("overhead A − B, µs", *f1, lambda r: f"{r['overhead_ms'] * 1000:.0f}")
    row("ratio A / B", *f1, lambda r: f"{r['ratio']:.3f}")
    row("CPU per call A / B, ms", *f1,
        lambda r: f"{r['a_cpu_median_ms']:.3f} / {r['b_cpu_median_ms']:.3f}")
    row("groq breaker skip alone, µs", *f1, lambda r: f"{r['skip_median_us']:.1f}")
    table.add_section()
    for v in ("with", "without"):
        row(f"groq 429s, {v} limiter", *f2, lambda f, v=v: f"{f['groq_429_' + v] or 0:g}")
    row("share of 429s avoided", *f2,
        lambda f: "–" if f["avoided_share"] is None else f"{f['avoided_share']:.1%}")
    for v in ("with", "without"):
        row(f"served groq / openai, {v} limiter", *f2,
            lambda f, v=v: f"{f['groq_served_' + v] or 0:g} / {f['openai_served_' + v] or 0:g}")
    console.print(table)
    m = result["machine"]
    for v in ("with", "without"):
        console.print(f"attempts by status, {v} limiter (run 1): {rl['runs'][0][v]['attempts']}")
    console.print(f"every A call skipped groq (breaker open) then ended on openai: "
                  f"{fo['all_a_calls_skip_then_openai']}; no groq request while timed: "
                  f"{fo['no_groq_request_while_timed']}\n{m['cpus']} CPUs, Python {m['python']}, "
                  f"load average {m['loadavg_before']} → {m['loadavg_after']}\n"
                  f"command: {result['command']}")


async def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    load_before = [round(x, 2) for x in os.getloadavg()]
    overhead = await fallback_overhead(args.runs, args.calls, console)
    limited = await rate_limit(args.runs, args.rl_calls, console)
    return {"fallback_overhead": overhead, "rate_limit": limited,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_before": load_before,
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
            "command": args.command}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200,
                        help="timed calls per chain per run (fallback overhead)")
    parser.add_argument("--rl-calls", type=int, default=240,
                        help="calls per variant per run, one every 0.5 s (rate limit)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if args.runs < 1 or args.calls < 2 or args.rl_calls < 1:
        parser.error("--runs must be at least 1, --calls at least 2, --rl-calls at least 1")
    args.command = shlex.join([os.path.relpath(sys.executable), "-m", "load_tests.chain",
                               *sys.argv[1:]])
    console = Console(width=None if sys.stdout.isatty() else 150)
    result = asyncio.run(measure(args, console))
    report(result, console)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
