"""The load-test sweep: one engine step per stack count, each in a fresh process.

`--llm inprocess` uses the in-process simulated model (the orchestrator's own cost);
`--llm chain` starts `tickwork sim-llm` on a free loopback port for each step (Groq-like latency)
and runs the step through the real SDK chain against it — the simulator is another process, so
its CPU stays out of the orchestrator's figure. Writes a JSON report, and optionally PNG plots
and a Markdown summary, and judges docs/design.md's performance targets for the steps they apply to.

    scripts/loadtest --stacks 1,10,100,250,500,1000 --duration 300 --repeat 3 \\
        --json r.json --plots plots/ --markdown r.md [--llm chain|inprocess] [--interval 10]

The scale first planned for (1 → 10 → 50 → 100 agents, four agents per stack):

    scripts/loadtest --stacks 1,3,13,25 --duration 60 --json r.json --plots plots/
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from load_tests import plots, report
from load_tests.stream import free_port

console = Console(stderr=True)
ROOT = Path(__file__).resolve().parents[1]
SIM_LATENCY = "1500,3000"  # Groq-like: median 1.5 s, p99 3 s
FIELDS = ("llm", "stacks", "duration_s", "interval_s", "ticks_expected", "ticks_started",
          "ticks_succeeded", "ticks_skipped", "ticks_failed", "lateness_ms",
          "tick_duration_ms", "cpu_ms_per_tick", "propagation_ms", "rss_mb", "llm_calls_per_s",
          # beyond the shape
          "ticks_skipped_busy", "failure_reasons", "cpu_ms_per_tick_without_sdk",
          "sdk_cpu_ms_per_call", "cpu_ms_per_tick_by_thread", "cpu_ms_per_tick_by_interval",
          "fallbacks", "db_rows_per_s", "db_rows", "stream_events", "sim_latency_ms", "slots",
          "rss_anon_mb", "claim_lateness_ms", "llm_calls_by_provider",
          "sdk_cpu_ms_per_call_by_provider", "sim_cpu_ms_per_tick")
FLEET_FIELDS = ("topology", "wakeups", "ticks_per_worker", "ticks_per_worker_per_slot",
                "cpu_ms_per_tick_by_process", "postgres_cpu_ms_per_tick",
                "longest_lock_wait_ms", "llm_attempts_by_provider", "cpu_s_by_process")


@contextlib.contextmanager
def sim_llm(latency: str, log: Path) -> Iterator[str]:
    """A `tickwork sim-llm` process on a free loopback port; yields its base URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("tickwork")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "orchestrator.cli"]
    with log.open("wb") as out:
        proc = subprocess.Popen([*cmd, "sim-llm", "--port", str(port), "--latency-ms", latency],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sim-llm exited ({proc.returncode}): {log.read_text()}")
            try:
                httpx.get(f"{url}/_sim/stats", timeout=1.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError("sim-llm did not come up within 30 s") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_step(args: argparse.Namespace, stacks: int, label: str, progress: Progress,
             tmp: Path) -> dict[str, Any]:
    """One step in a fresh `python -m load_tests.engine` process (embedded), or, with
    `--database`, a fleet of processes (`python -m load_tests.fleet`), with a progress bar."""
    out, err = tmp / f"step-{stacks}.json", tmp / f"step-{stacks}.log"
    cmd = [sys.executable, "-m", "load_tests.fleet" if args.database else "load_tests.engine",
           "--stacks", str(stacks), "--duration", str(args.duration), "--interval",
           str(args.interval), "--latency", args.latency, "--json", str(out)]
    if args.database:
        cmd += ["--database", args.database, "--workers", str(args.workers), "--beats",
                str(args.beats)] + (["--redis", args.redis] if args.redis else [])
    task = progress.add_task(label, total=args.duration, phase="running")
    with contextlib.ExitStack() as stack:
        if args.llm == "chain":
            cmd += ["--sim-url", stack.enter_context(sim_llm(args.latency, tmp / "sim.log"))]
        with err.open("wb") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
        began = time.monotonic()
        while proc.poll() is None:
            elapsed = time.monotonic() - began
            progress.update(task, completed=min(elapsed, args.duration),
                            phase="running" if elapsed < args.duration else "draining")
            time.sleep(0.25)
    progress.update(task, completed=args.duration, phase="done")
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"step {stacks} failed ({proc.returncode}):\n{err.read_text()[-3000:]}")
    figures = json.loads(out.read_text())
    run = {key: figures.get(key) for key in FIELDS + (FLEET_FIELDS if args.database else ())}
    run["llm"] = args.llm
    if not args.database:
        run["topology"] = report.EMBEDDED
    run["started_share"] = report.started_share(run)
    return run


def table(rows: list[dict[str, Any]], title: str) -> Table:
    """The steps' main figures, 100 columns wide at most (the Markdown carries the rest)."""
    out = Table(title=title, box=box.SIMPLE_HEAVY, show_edge=False, pad_edge=False)
    for i, name in enumerate(report.COLUMNS):
        out.add_column(name, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        out.add_row(*report.cells(row))
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/loadtest",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--stacks", default="1,10,100,250,500,1000",
                        help="comma-separated stack counts, one step each")
    parser.add_argument("--duration", type=float, default=60, help="seconds per step")
    parser.add_argument("--llm", choices=("chain", "inprocess"), default="chain")
    parser.add_argument("--interval", type=int, default=10, help="beat interval, seconds")
    parser.add_argument("--repeat", type=int, default=1, help="runs per step (medians quoted)")
    parser.add_argument("--latency", default=SIM_LATENCY, help="simulated MEDIAN,P99 ms")
    parser.add_argument("--json", required=True, help="write the JSON report here")
    parser.add_argument("--plots", help="write PNG plots into this directory")
    parser.add_argument("--markdown", help="write a Markdown summary here")
    parser.add_argument("--database", help="a PostgreSQL server URL: run each step as a fleet "
                        "of processes on a fresh database there (else: one process, SQLite)")
    parser.add_argument("--redis", help="with --database: the fleet's Redis")
    parser.add_argument("--workers", type=int, default=2, help="with --database: workers")
    parser.add_argument("--beats", type=int, default=1, help="with --database: beats")
    args = parser.parse_args(argv)
    if (args.redis or args.workers != 2 or args.beats != 1) and not args.database:
        parser.error("--redis, --workers and --beats need --database (a fleet on PostgreSQL)")
    try:
        args.sizes = [int(n) for n in args.stacks.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--stacks: {args.stacks!r} is not a comma-separated list of numbers")
    if not args.sizes or min(args.sizes) < 1 or args.duration <= 0 or args.repeat < 1:
        parser.error("need at least one stack count ≥ 1, a positive --duration and --repeat ≥ 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = "scripts/loadtest " + shlex.join(sys.argv[1:] if argv is None else argv)
    runs: list[dict[str, Any]] = []
    total = len(args.sizes) * args.repeat
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.completed:>4.0f}/{task.total:.0f} s"),
                        TextColumn("{task.fields[phase]}"), TimeElapsedColumn(),
                        console=console)
    topology = report.setup({"topology": f"{args.beats} beat, {args.workers} workers on "
                                         "PostgreSQL", "wakeups": "redis" if args.redis
                             else "polling"} if args.database else {})
    with progress, tempfile.TemporaryDirectory(prefix="tickwork-sweep-") as tmp:
        step = 0
        for repeat in range(args.repeat):
            for stacks in args.sizes:
                step += 1
                label = (f"step {step}/{total}: {topology} {args.llm}, {stacks} stacks"
                         + (f" (run {repeat + 1}/{args.repeat})" if args.repeat > 1 else ""))
                runs.append(run_step(args, stacks, label, progress, Path(tmp)))
    rows = report.medians(runs)
    result: dict[str, Any] = {
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "version": version("tickwork"), "command": command}
    if args.repeat > 1:
        result["medians"] = rows
    Path(args.json).write_text(json.dumps(result, indent=2))
    # The table fits 100 columns; a terminal (or COLUMNS) may give it more.
    out = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=100)
    title = "load test" + (f" (medians of {args.repeat} runs)" if args.repeat > 1 else "")
    out.print(table(rows, title))
    checks = report.check(rows)
    for c in checks:
        out.print(f"[{'green' if c.passed else 'red'}]{c.line()}[/]", highlight=False)
    if not checks:
        out.print("[dim]no target applies to these steps (chain: fleet+redis at 1000 stacks, "
                  "embedded at 100 and 500; inprocess: embedded at 1000, fleet+redis at "
                  "100)[/]")
    for cap in report.capacity(rows):
        out.print(cap.sentence(), highlight=False)
    out.print(f"[dim]{report.CRITERIA}[/]", highlight=False)
    if args.plots:
        for path in plots.plots(rows, Path(args.plots), os.cpu_count()):
            out.print(f"plot: {path}")
    if args.markdown:
        Path(args.markdown).write_text(report.markdown(result, command))
        out.print(f"summary: {args.markdown}")
    out.print(f"report: {args.json}")
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
