"""Commit-to-client event propagation, measured by a real event-stream client.

tickwork runs in this process (Runtime on the real clock, in-process simulated model, SQLite,
1 s beat) and serves its HTTP app with uvicorn on loopback. A separate process reads
`GET /api/events` with httpx and records when each event id arrived (see load_tests.stream).

    python -m load_tests.propagation --stacks 10,100 --duration 60 --runs 3 [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert

from load_tests.stats import summary
from load_tests.stream import StreamClient, latencies_ms, serving
from orchestrator.config import Settings
from orchestrator.runtime import Runtime
from schema import tables as t

console = Console(stderr=True)


async def _one(stacks: int, duration: float, warmup: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tickwork-prop-") as tmp:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, database_url=f"sqlite:///{Path(tmp) / 'p.db'}", tick_interval=1,
            sim_latency_ms="100,300", admin_token=SecretStr("prop"), poll_s=1.0)
        rt = Runtime.build(settings, env={})
        now = time.time()
        with rt.db.write() as conn:
            conn.execute(insert(t.stacks), [
                {"name": f"p{i:04d}", "goal": "propagation", "execution_state": "running",
                 "created_at": now, "updated_at": now} for i in range(stacks)])
        async with serving(rt) as url:
            await rt.start()
            await asyncio.sleep(warmup)
            seen = await StreamClient(url, duration).arrivals()
            await rt.stop()
        latencies = latencies_ms(rt, seen)
        rt.close()
    span = (seen[-1][1] - seen[0][1]) if len(seen) > 1 else 0.0
    return {"stacks": stacks, "duration_s": duration, "events": len(latencies),
            "events_per_s": len(latencies) / span if span else 0.0,
            "propagation_ms": summary(latencies)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", default="10,100")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    sizes = [int(n) for n in args.stacks.split(",") if n.strip()]
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in sizes}
    for r in range(args.runs):
        for n in sizes:
            console.print(f"run {r + 1}/{args.runs}: {n} stacks for {args.duration:g} s")
            runs[n].append(asyncio.run(_one(n, args.duration, args.warmup)))
    table = Table("stacks", "events/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
                  title="commit → event-stream client (medians of runs)")
    medians = {}
    for n, rs in runs.items():
        med = {k: statistics.median(x["propagation_ms"][k] for x in rs)
               for k in ("p50", "p95", "p99", "max")}
        rate = statistics.median(x["events_per_s"] for x in rs)
        medians[n] = {"propagation_ms": med, "events_per_s": rate}
        table.add_row(str(n), f"{rate:.0f}", *(f"{med[k]:.1f}" for k in ("p50", "p95", "p99",
                                                                          "max")))
    Console().print(table)
    report = {"runs": runs, "medians": medians, "command": " ".join(sys.argv),
              "machine": {"cpus": mp.cpu_count(), "python": platform.python_version()}}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
