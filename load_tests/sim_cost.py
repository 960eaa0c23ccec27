"""The CPU `tickwork sim-llm` spends per request at a fixed request rate, with as many requests
in flight as its latency makes (at 400 a second and Groq-like latency, ~600-1,200).

The simulator runs as its own process on a free loopback port (`load_tests.sweep.sim_llm`); a
cheap aiohttp client in this process sends chat completions shaped like tickwork's (the team's
"It must satisfy this JSON schema:" system message with an agent's schema, then the agent's
own messages, `response_format` json_object, the SDKs' headers), each with different messages,
half to the OpenAI path and half to the Groq path, on a fixed schedule (open loop: a slow answer
does not slow the sending). After `--warmup` seconds it measures `--duration` seconds: the
simulator's CPU time (user + system, psutil, its process and any children) over the window
divided by the answers the client received in it, and the latency the client saw (the
client's own CPU per request is reported too: it shares the box).

    python -m load_tests.sim_cost --rate 400 --duration 30 --latency 1500,3000 \\
        [--runs 3] [--warmup 5] [--json FILE] [--profile FILE]

`--profile FILE` also records the simulator with py-spy over the measured window (collapsed
stacks, `--gil`: only the thread holding the interpreter lock), for finding where its time goes.

Prints JSON: per run and the medians of the runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psutil

from agents.base import ArtifactView, MessageView, StackView, TickContext
from agents.registry import AgentRegistry
from agents.team import FORMAT
from load_tests import sweep

AGENTS = ("planner", "builder", "communicator", "reviewer")
PATHS = {"openai": ("/v1/chat/completions", "gpt-4o-mini"),
         "groq": ("/openai/v1/chat/completions", "llama-3.3-70b-versatile")}
# What the SDKs send besides the body (their x-stainless-* set), so header parsing is priced.
HEADERS = {"Accept": "application/json", "Content-Type": "application/json",
           "User-Agent": "AsyncOpenAI/Python 2.8.0", "Authorization": "Bearer sim",
           "X-Stainless-Lang": "python", "X-Stainless-Package-Version": "2.8.0",
           "X-Stainless-OS": "Linux", "X-Stainless-Arch": "x64",
           "X-Stainless-Runtime": "CPython", "X-Stainless-Runtime-Version": "3.12.3",
           "X-Stainless-Async": "async:asyncio", "x-stainless-retry-count": "0",
           "x-stainless-read-timeout": "30.0"}
GOALS = ["publish a weekly newsletter about tide pools", "write a field guide to urban birds",
         "plan a community garden for the spring", "compare three note-taking apps",
         "draft a beginner's course on sourdough baking"]


class Requests:
    """Bodies shaped like tickwork's agent steps, every one with different messages."""

    def __init__(self) -> None:
        registry = AgentRegistry.default(plugins=False)
        self._agents = [registry.get(name) for name in AGENTS]
        self._format = {a.name: FORMAT.format(schema=orjson.dumps(
            a.output_type.model_json_schema()).decode()) for a in self._agents}

    def body(self, n: int) -> tuple[str, bytes]:
        """(path, JSON body) of the n-th request: stack n % 1000, tick n // 1000."""
        stack, tick = n % 1000 + 1, n // 1000 + 1
        agent = self._agents[n % len(self._agents)]
        ctx = TickContext(
            stack=StackView(stack, f"stack-{stack}", f"{GOALS[stack % len(GOALS)]} (#{stack})"),
            tick_id=n + 1, slot=tick, attempt=1,
            memory={"current_task": f"Outline part {tick} of the plan", "tick": str(tick)},
            recent_messages=[MessageView("communicator", f"Finished part {tick - 1}.")],
            recent_artifacts=[ArtifactView(f"Part {tick - 1}", "…")])
        messages = [{"role": "system", "content": self._format[agent.name]}, *agent.prompt(ctx)]
        path, model = PATHS["openai" if n % 2 else "groq"]
        return path, orjson.dumps({"model": model, "messages": messages, "temperature": 0.7,
                                   "max_tokens": 1024,
                                   "response_format": {"type": "json_object"}})


def _tree(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def _cpu_s(procs: list[psutil.Process]) -> tuple[float, float]:
    """(user, system) CPU seconds of the processes so far."""
    user = system = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        user += times.user
        system += times.system
    return user, system


def _sim_pid(url: str) -> int:
    """The simulator `sweep.sim_llm` started: this process's child listening on its port."""
    port = int(url.rsplit(":", 1)[1])
    for child in psutil.Process().children(recursive=True):
        try:
            if any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
                   for c in child.net_connections("tcp")):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    children = psutil.Process().children()
    if len(children) == 1:
        return children[0].pid
    raise RuntimeError(f"cannot tell which process serves {url}")


def _py_spy(pid: int, seconds: float, out: str) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(exe) if exe.exists() else shutil.which("py-spy") or "py-spy",
                             "record", "--pid", str(pid), "--gil", "--nonblocking",
                             "--format", "raw", "--rate", "1000", "--duration",
                             str(max(1, round(seconds))), "--output", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _drive(url: str, pid: int, rate: float, warmup: float, duration: float,
                 requests: Requests, first: int, profile: str | None = None
                 ) -> dict[str, Any]:
    procs = _tree(pid)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    done: list[tuple[float, float, int]] = []  # (finished at, latency s, status)
    failures: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout,
                                     headers=HEADERS, skip_auto_headers=("User-Agent",)
                                     ) as session:
        async def one(path: str, body: bytes) -> None:
            began = loop.time()
            try:
                async with session.post(path, data=body) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                name = type(exc).__name__
                failures[name] = failures.get(name, 0) + 1
                return
            finished = loop.time()
            done.append((finished, finished - began, status))

        start = loop.time()
        window_start, window_end = start + warmup, start + warmup + duration
        cpu_start = cpu_end = None
        client_start = client_end = 0.0
        spy: subprocess.Popen[bytes] | None = None
        sent = in_flight_max = 0
        while True:
            now = loop.time()
            if cpu_start is None and now >= window_start:
                cpu_start, client_start = (_cpu_s(procs), now), time.process_time()
                spy = _py_spy(pid, duration, profile) if profile else None
            if now >= window_end:
                cpu_end, client_end = (_cpu_s(procs), now), time.process_time()
                break
            if cpu_start is not None:
                in_flight_max = max(in_flight_max, len(tasks))
            due = int((now - start) * rate) + 1
            while sent < due:
                task = loop.create_task(one(*requests.body(first + sent)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(min(1 / rate, 0.005))
        in_flight = len(tasks)
        if tasks:
            await asyncio.wait(set(tasks), timeout=30)
    if spy is not None:
        spy.wait(60)
    assert cpu_start is not None and cpu_end is not None
    window = [(t, lat, s) for t, lat, s in done if cpu_start[1] <= t < cpu_end[1]]
    served = len(window)
    latencies = sorted(lat * 1000 for _, lat, _ in window)
    statuses: dict[str, int] = {}
    for _, _, status in window:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    user_ms = (cpu_end[0][0] - cpu_start[0][0]) * 1000
    system_ms = (cpu_end[0][1] - cpu_start[0][1]) * 1000
    cpu_ms = user_ms + system_ms
    window_s = cpu_end[1] - cpu_start[1]

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) \
            if latencies else None

    return {"sent": sent, "served": served, "window_s": round(window_s, 2),
            "served_per_s": round(served / window_s, 1), "in_flight_at_end": in_flight,
            "statuses": statuses, "failures": failures,
            "in_flight_max": in_flight_max, "sim_cpu_ms": round(cpu_ms, 1),
            "sim_cpu_share": round(cpu_ms / 1000 / window_s, 3),
            "sim_cpu_ms_per_request": round(cpu_ms / served, 4) if served else None,
            "sim_user_ms_per_request": round(user_ms / served, 4) if served else None,
            "sim_system_ms_per_request": round(system_ms / served, 4) if served else None,
            "client_cpu_ms_per_request": round((client_end - client_start) * 1000 / served, 4)
            if served else None,
            "latency_ms_p50": pct(0.50), "latency_ms_p99": pct(0.99)}


def _runs(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    requests = Requests()
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp, \
                sweep.sim_llm(args.latency, Path(tmp) / "sim.log") as url:
            pid = _sim_pid(url)
            profile = f"{args.profile}.{run + 1}" if args.profile and args.runs > 1 \
                else args.profile
            figures = asyncio.run(_drive(url, pid, args.rate, args.warmup, args.duration,
                                         requests, first=run * 1_000_000, profile=profile))
        print(f"run {run + 1}: {figures['sim_cpu_ms_per_request']} ms CPU a request, "
              f"{figures['served_per_s']}/s served, p50 {figures['latency_ms_p50']} ms, "
              f"p99 {figures['latency_ms_p99']} ms", file=sys.stderr)
        yield figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=400, help="requests a second")
    parser.add_argument("--duration", type=float, default=30, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5,
                        help="seconds at the rate before measuring (fills the pipeline)")
    parser.add_argument("--latency", default=sweep.SIM_LATENCY, help="MEDIAN[,P99] ms")
    parser.add_argument("--runs", type=int, default=3, help="the report gives their medians")
    parser.add_argument("--json")
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy's collapsed stacks of the simulator over the window")
    args = parser.parse_args()
    runs = list(_runs(args))

    def median(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return round(statistics.median(values), 4) if values else None

    out = {"rate": args.rate, "duration_s": args.duration, "warmup_s": args.warmup,
           "latency": args.latency, "runs": args.runs,
           "median": {k: median(k) for k in ("sim_cpu_ms_per_request",
                                              "sim_user_ms_per_request",
                                              "sim_system_ms_per_request", "sim_cpu_share",
                                              "served", "served_per_s", "in_flight_max",
                                              "client_cpu_ms_per_request", "latency_ms_p50",
                                              "latency_ms_p99")},
           "each_run": runs}
    text = json.dumps(out, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
