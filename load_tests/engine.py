"""One load-test step: N running stacks in one tickwork process for a given time.

Runs the real runtime (APScheduler beat, fan-out, worker, runner, journal) on a fresh SQLite
file with the in-process simulated model, then reads the figures back from the database:
ticks expected and started per fired slot, lateness (the tick's first LLM request about to go
out − its slot) and claim lateness (the claim − the slot), tick duration,
and the orchestrator's CPU per tick (process CPU over each beat interval divided by the ticks
started in it; the simulated model runs in-process and its small cost is included).

With `--sim-url URL` the real SDK chain is used instead, pointed at a `tickwork sim-llm`
server at URL (another process, so its CPU is not in the figure).

With `--otel` every tick's trace is exported over OTLP/HTTP, to a sink on loopback in a
process of its own (`load_tests.otlp_sink`: it decodes and counts the spans), or with
`--otel URL` to the collector at URL; run with and without it to see what tracing costs a tick.

    python -m load_tests.engine --stacks 100 --duration 60 [--latency 1500,3000] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import Connection, func, insert, select

from agents.llm.base import LLMRequest
from agents.llm.chain import build_chain
from load_tests.stats import median, summary
from load_tests.stream import ProcessCPU, StreamClient, latencies_ms, serving
from orchestrator.config import Settings
from orchestrator.runtime import Runtime, chain_options
from orchestrator.store.queue import REASON_PREV_RUNNING
from schema import tables as t
from schema.clock import SystemClock


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds used so far by each of this process's threads, by thread name (Linux
    /proc; empty elsewhere). Threads of one pool are summed under the pool's prefix."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for thread in threading.enumerate():
        try:
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text()
        except OSError:
            continue
        utime, stime = fields.rsplit(")", 1)[1].split()[11:13]
        name = thread.name.rsplit("_", 1)[0] if "_" in thread.name else thread.name
        out[name] = out.get(name, 0.0) + (int(utime) + int(stime)) / tick
    return out


def _rss_anon_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _seed_stacks(rt: Runtime, n: int) -> None:
    now = rt.clock.now()
    with rt.db.write() as conn:
        conn.execute(insert(t.stacks), [
            {"name": f"load-{i:05d}", "goal": f"load test stack {i}", "execution_state": "running",
             "created_at": now, "updated_at": now} for i in range(n)])


async def _run(stacks: int, duration: float, latency: str, interval: int, db_url: str,
               progress: bool, sim_url: str | None = None, stream: bool = True,
               otel: str | None = None) -> dict[str, Any]:
    settings = Settings(_env_file=None, database_url=db_url, tick_interval=interval,  # type: ignore[call-arg]
                        sim_latency_ms=latency, max_concurrent_ticks=max(1000, 2 * stacks),
                        admin_token=SecretStr("load-test"))
    env = {} if sim_url is None else {  # {}: the in-process simulated model
        "GROQ_API_KEY": "sim", "GROQ_BASE_URL": sim_url,
        "OPENAI_API_KEY": "sim", "OPENAI_BASE_URL": sim_url + "/v1"}
    if otel is not None:  # every tick traced, exported over OTLP/HTTP to there
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otel
    rt = Runtime.build(settings, env=env)
    _seed_stacks(rt, stacks)
    samples: list[tuple[float, float]] = []  # (wall, process cpu) at each fire
    fire = rt.beat.fire

    async def sampled_fire() -> Any:
        samples.append((time.time(), time.process_time()))
        return await fire()

    rt.beat.fire = sampled_fire  # type: ignore[method-assign]
    sdk_by_provider = await _sdk_call_cpu_ms(rt, sim_url) if sim_url else None
    async with contextlib.AsyncExitStack() as serve:
        client = None
        if stream:
            client = StreamClient(await serve.enter_async_context(serving(rt)), duration)
        await rt.start()
        threads_at_start = thread_cpu_s()
        sim = ProcessCPU(sim_url)  # the simulator's CPU, apart from tickwork's
        sim0 = sim.seconds()
        began = time.time()
        while (left := began + duration - time.time()) > 0:
            await asyncio.sleep(min(left, 1.0))
            if progress:
                print(f"\r  {stacks} stacks: {time.time() - began:5.0f}/{duration:.0f} s, "
                      f"{rt.worker.running} ticks running", end="", file=sys.stderr, flush=True)
        rt.stop_beat()
        arrivals = await client.arrivals() if client is not None else []
        drain_from = time.time()
        sim_s = sim.seconds() - sim0
        while rt.worker.running and time.time() - drain_from < 120:
            await asyncio.sleep(0.2)
        end_cpu = time.process_time()
        threads = thread_cpu_s()
        await rt.stop()
    if progress:
        print(file=sys.stderr)
    with rt.db.read() as conn:
        # When work started: the tick's first LLM request about to go out (a skipped attempt
        # sent none), else its first step beginning.
        first_step = func.coalesce(
            select(func.min(t.llm_attempts.c.started_at))
            .where(t.llm_attempts.c.tick_id == t.ticks.c.id,
                   t.llm_attempts.c.status.not_like("skipped%")).scalar_subquery(),
            select(func.min(t.steps.c.started_at))
            .where(t.steps.c.tick_id == t.ticks.c.id).scalar_subquery())
        rows = list(conn.execute(select(
            t.ticks.c.slot, t.ticks.c.status, t.ticks.c.scheduled_at, t.ticks.c.started_at,
            t.ticks.c.finished_at, t.ticks.c.reason, first_step.label("first_step"))
            .where(t.ticks.c.trigger == "beat")))
        # Calls that reached a provider: a skip (open breaker, rate limit) is a trace row, not
        # a call.
        calls = list(conn.execute(select(t.llm_attempts.c.started_at, t.llm_attempts.c.provider)
                                  .where(t.llm_attempts.c.started_at >= began,
                                         t.llm_attempts.c.status.not_like("skipped_%"))))
        fallbacks = _fallbacks(conn)
        written = {table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
                   for table in WRITTEN}
    propagation = summary(latencies_ms(rt, arrivals)) if stream else None
    rt.close()
    slots = sorted({r.slot for r in rows})
    started = [r for r in rows if r.started_at is not None]
    by_slot: dict[int, int] = {}
    for r in started:
        by_slot[r.slot] = by_slot.get(r.slot, 0) + 1
    # CPU per tick for each beat interval: CPU between two fires / ticks started by the first.
    cpu_per_tick = []
    fires = [*samples, (time.time(), end_cpu)]
    for (_, cpu0), (_, cpu1), slot in zip(fires, fires[1:], slots, strict=False):
        if by_slot.get(slot):
            cpu_per_tick.append((cpu1 - cpu0) * 1000 / by_slot[slot])
    claim_lateness = [(r.started_at - r.scheduled_at) * 1000 for r in started]
    lateness = [(r.first_step - r.scheduled_at) * 1000 for r in started
                if r.first_step is not None]
    durations = [(r.finished_at - r.started_at) * 1000 for r in started if r.finished_at]
    count = {s: sum(1 for r in rows if r.status == s) for s in ("succeeded", "skipped", "failed")}
    busy = sum(1 for r in rows if r.status == "skipped" and r.reason == REASON_PREV_RUNNING)
    run_s = max(1e-9, drain_from - began)
    calls_per_tick = len(calls) / max(1, len(started))
    by_provider = Counter(provider for _, provider in calls)
    sdk_ms = (None if sdk_by_provider is None or not calls else
              sum(sdk_by_provider.get(p, 0.0) * n for p, n in by_provider.items()) / len(calls))
    cpu = median(cpu_per_tick)
    return {
        "llm": "inprocess" if sim_url is None else "chain", "stacks": stacks,
        "otel_endpoint": otel,
        "duration_s": duration, "interval_s": interval,
        "sim_latency_ms": latency, "slots": len(slots),
        "ticks_expected": stacks * len(slots), "ticks_started": len(started),
        "ticks_succeeded": count["succeeded"], "ticks_skipped": count["skipped"],
        "ticks_failed": count["failed"],
        # Slots skipped because that stack's previous tick (four model calls at 1.5 s median,
        # 3 s p99) was still running: the one reason a slot's tick may not start.
        "ticks_skipped_busy": busy,
        "failure_reasons": dict(Counter(r.reason for r in rows
                                        if r.status in ("failed", "timed_out")).most_common(5)),
        "started_share": len(started) / (stacks * len(slots)) if slots else 0.0,
        # Lateness: the tick's first LLM request about to go out − the slot (when work really
        # starts); claim lateness: the claim's timestamp − the slot.
        "lateness_ms": summary(lateness), "claim_lateness_ms": summary(claim_lateness),
        "tick_duration_ms": summary(durations),
        "cpu_ms_per_tick": cpu, "cpu_ms_per_tick_by_interval": cpu_per_tick,
        # Where the CPU went, per started tick over the whole run (start-up excluded).
        "cpu_ms_per_tick_by_thread": {
            name: round((cpu - threads_at_start.get(name, 0.0)) * 1000 / max(1, len(started)),
                        3) for name, cpu in sorted(threads.items())},
        "llm_calls_per_s": len(calls) / run_s,
        "llm_calls_by_provider": dict(by_provider),
        "fallbacks": fallbacks,
        "db_rows_per_s": sum(written.values()) / run_s, "db_rows": written,
        "propagation_ms": propagation, "stream_events": len(arrivals),
        # The chain's share: one model call's CPU here, per provider (measured against
        # sim-llm with no latency before the run), weighted by the providers' shares of the
        # step's calls, times the calls per tick, taken off the per-tick figure.
        "sdk_cpu_ms_per_call": sdk_ms, "sdk_cpu_ms_per_call_by_provider": sdk_by_provider,
        "cpu_ms_per_tick_without_sdk": (None if sdk_ms is None or cpu is None else
                                        max(0.0, cpu - calls_per_tick * sdk_ms)),
        "sim_cpu_ms_per_tick": (sim_s * 1000 / max(1, len(started))) if sim.found else None,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # The peak above counts the pages of the database file read through its memory map;
        # this is the process's own memory at the end.
        "rss_anon_mb": _rss_anon_mb(),
    }


WRITTEN = (t.ticks, t.steps, t.llm_attempts, t.events, t.messages, t.artifacts, t.memories)


def _fallbacks(conn: Connection) -> int:
    """Steps served by a provider other than the first one they tried."""
    first: dict[int, str] = {}
    served: dict[int, str] = {}
    for step_id, provider, status in conn.execute(
            select(t.llm_attempts.c.step_id, t.llm_attempts.c.provider,
                   t.llm_attempts.c.status).order_by(t.llm_attempts.c.step_id,
                                                     t.llm_attempts.c.seq)):
        first.setdefault(step_id, provider)
        if status in ("ok", "invalid_output"):
            served[step_id] = provider
    return sum(1 for step, provider in served.items() if provider != first[step])


async def _sdk_call_cpu_ms(rt: Runtime, sim_url: str, calls: int = 400) -> dict[str, float]:
    """`sdk_call_cpu_ms` for the providers of `rt`'s chain."""
    providers = [p.name for p in rt.chain.providers] if rt.chain is not None else []
    return await sdk_call_cpu_ms(rt.settings, providers, sim_url, calls)


async def sdk_call_cpu_ms(settings: Settings, providers: list[str], sim_url: str,
                          calls: int = 400, inflight: int = 50) -> dict[str, float]:
    """CPU of one model call through each provider (the SDK's request and response
    handling), in this process, against sim-llm answering at once, `inflight` calls at a time
    as in a step; the step's latency is put back afterwards. Each provider is called through
    a chain of its own, built like the step's but without rate limits, so calibrating spends
    none of the limits the step runs under."""
    env = {"GROQ_API_KEY": "sim", "GROQ_BASE_URL": sim_url,
           "OPENAI_API_KEY": "sim", "OPENAI_BASE_URL": sim_url + "/v1"}
    options = dataclasses.replace(chain_options(settings), groq_rpm=None, groq_tpm=None,
                                  openai_rpm=None, openai_tpm=None)
    clock = SystemClock()
    out: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=sim_url) as http:
        before = (await http.get("/_sim/config")).json()
        await http.post("/_sim/config", json={"both": {"latency_ms": "0"}})
        try:
            request = LLMRequest(messages=[{"role": "user", "content": "Task: calibrate"}],
                                 schema_name="Plan", seed="calibrate")
            for name in providers:
                chain = build_chain(name, env, clock, options)
                try:
                    # As in a step: many calls in flight at once (and the pool warm first).
                    await asyncio.gather(*(chain.llm.complete(request)
                                           for _ in range(inflight)))
                    cpu = time.process_time()
                    for _ in range(max(1, calls // inflight)):
                        await asyncio.gather(*(chain.llm.complete(request)
                                               for _ in range(inflight)))
                    out[name] = ((time.process_time() - cpu) * 1000
                                 / (max(1, calls // inflight) * inflight))
                finally:
                    await chain.aclose()
        finally:
            await http.post("/_sim/config", json={
                name: {"latency_ms": knobs["latency_ms"]} for name, knobs in before.items()})
    return out


def run_step(stacks: int, duration: float, latency: str = "1500,3000", interval: int = 10,
             progress: bool = True, sim_url: str | None = None, stream: bool = True,
             database: str | None = None, otel: str | None = None) -> dict[str, Any]:
    """One step in one process: on a fresh SQLite file, or with `database` (a PostgreSQL
    server URL) on a fresh database there. `otel`: export every tick's trace to that OTLP
    endpoint, or "sink" for a sink on loopback (its spans counted in `otel_spans`)."""
    if otel == "sink":
        from load_tests.otlp_sink import running_sink, stats
        with running_sink() as url:
            result = run_step(stacks, duration, latency, interval, progress, sim_url, stream,
                              database, url)
            return {**result, "otel_spans": stats(url)["spans"]}
    if database is not None:
        from load_tests.fleet import fresh_database
        with fresh_database(database) as url:
            return asyncio.run(_run(stacks, duration, latency, interval, url, progress,
                                    sim_url, stream, otel))
    with tempfile.TemporaryDirectory(prefix="tickwork-load-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'load.db'}"
        return asyncio.run(_run(stacks, duration, latency, interval, url, progress, sim_url,
                                stream, otel))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", type=int, required=True)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--latency", default="1500,3000", help="simulated MEDIAN[,P99] ms")
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--sim-url", help="use the real SDK chain against tickwork sim-llm here")
    parser.add_argument("--database", help="a PostgreSQL server URL: run on a fresh database "
                        "there instead of a SQLite file")
    parser.add_argument("--no-stream", action="store_true",
                        help="no event-stream client (no propagation figure)")
    parser.add_argument("--otel", nargs="?", const="sink", metavar="URL",
                        help="export every tick's trace over OTLP/HTTP: to a sink on loopback "
                        "(its own process), or to the collector at URL")
    parser.add_argument("--json", help="write the figures here ('-' for stdout)")
    args = parser.parse_args()
    result = run_step(args.stacks, args.duration, args.latency, args.interval,
                      sim_url=args.sim_url, stream=not args.no_stream, database=args.database,
                      otel=args.otel)
    text = json.dumps(result, indent=2)
    if args.json == "-":
        print(text)
    elif args.json:
        Path(args.json).write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
