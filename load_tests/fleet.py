"""One load-test step on a fleet: `tickwork beat` ×B, `tickwork worker` ×N and a `tickwork
dashboard` whose event stream another process reads, each its own process, on a fresh
PostgreSQL database (and Redis, with `--redis`).

Figures come from outside the processes: the database (ticks, steps, attempts), the stream
client (each event's arrival minus its commit stamp: worker commit → dashboard client), each
process's
CPU (from /proc, between the first fired slot and the end), the database server's CPU, and a
sampler that asks PostgreSQL every 20 ms which transactions wait for a lock and since
when (`pg_locks.waitstart`; the longest wait seen is reported, a lower bound by the sampling
interval).

    python -m load_tests.fleet --database postgresql://postgres@127.0.0.1:5432/test \\
        --stacks 1000 --duration 300 --workers 2 [--beats 1] [--redis URL] \\
        [--sim-url URL] [--latency 1500,3000] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import Engine, make_url

from load_tests.stats import median, summary
from load_tests.stream import ProcessCPU, StreamClient, free_port
from schema import tables as t
from schema.db import normalise_url

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "load-test"


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new database on the server of `server_url`, dropped afterwards."""
    name = f"tw_load_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


class LockSampler:
    """Asks the server every `every_s` which backends of `database` wait for a lock."""

    def __init__(self, url: str, every_s: float = 0.02) -> None:
        self._engine = create_engine(normalise_url(url), pool_size=1)
        self._every = every_s
        self._stop = threading.Event()
        self.longest_ms = 0.0
        self.waits = 0  # samples that found a backend waiting
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._engine.dispose()

    def _run(self) -> None:
        # pg_locks.waitstart: when each backend began waiting for a lock it has not got.
        sql = text("SELECT extract(epoch FROM clock_timestamp() - l.waitstart) * 1000 "
                   "FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                   "WHERE NOT l.granted AND l.waitstart IS NOT NULL "
                   "AND d.datname = current_database()")
        with self._engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            while not self._stop.wait(self._every):
                waited = [float(ms) for (ms,) in conn.execute(sql)]
                if waited:
                    self.waits += 1
                    self.longest_ms = max(self.longest_ms, *waited)


def _seed(engine: Engine, n: int) -> None:
    now = time.time()
    with engine.begin() as conn:
        conn.execute(insert(t.stacks), [
            {"name": f"load-{i:05d}", "goal": f"load test stack {i}",
             "execution_state": "running", "created_at": now, "updated_at": now}
            for i in range(n)])


def _cpu_s(pid: int) -> float:
    try:
        c = psutil.Process(pid).cpu_times()
        return float(c.user + c.system)
    except psutil.Error:
        return 0.0


def _server_cpu_s() -> float:
    """CPU of every PostgreSQL server process on this machine (all databases)."""
    total = 0.0
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in ("postgres", "postmaster"):
            with contextlib.suppress(psutil.Error):
                c = p.cpu_times()
                total += c.user + c.system
    return total


class Fleet:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def cli(self, *args: str) -> None:
        subprocess.run([sys.executable, "-m", "orchestrator", *args], env=self.env, check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)

    def start(self, role: str, *args: str) -> subprocess.Popen[bytes]:
        n = sum(1 for r, _ in self.procs if r == role)
        log = (self.log_dir / f"{role}{n}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", role, *args],
                                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((role, proc))
        return proc

    def stop(self, role: str | None = None, timeout: float = 60) -> None:
        chosen = [(r, p) for r, p in self.procs if role is None or r == role]
        for _, p in chosen:
            if p.poll() is None:
                p.terminate()
        for _, p in chosen:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()


def run_step(database: str, stacks: int, duration: float, workers: int = 2, beats: int = 1,
             interval: int = 10, latency: str = "1500,3000", redis: str | None = None,
             sim_url: str | None = None, progress: bool = True, stream: bool = True,
             logs: str | None = None, settings: dict[str, str] | None = None
             ) -> dict[str, Any]:
    with fresh_database(database) as url, contextlib.ExitStack() as stack:
        log_dir = Path(stack.enter_context(_tmpdir(logs)))
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("TICKWORK_", "GROQ_", "OPENAI_"))}
        env.update(TICKWORK_DATABASE_URL=url, TICKWORK_ADMIN_TOKEN=TOKEN,
                   TICKWORK_TICK_INTERVAL=str(interval), TICKWORK_SIM_LATENCY_MS=latency,
                   TICKWORK_MAX_CONCURRENT_TICKS=str(max(1000, 2 * stacks)),
                   TICKWORK_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
        env.update(settings or {})
        if redis:
            env["TICKWORK_REDIS_URL"] = redis
        if sim_url:
            env.update(GROQ_API_KEY="sim", GROQ_BASE_URL=sim_url, OPENAI_API_KEY="sim",
                       OPENAI_BASE_URL=sim_url + "/v1")
        sdk_ms = None
        if sim_url:  # the SDK's CPU per call, calibrated here against the same simulator
            from load_tests.engine import sdk_call_cpu_ms
            from orchestrator.config import Settings

            sdk_ms = asyncio.run(sdk_call_cpu_ms(Settings(_env_file=None),  # type: ignore[call-arg]
                                                 ["groq", "openai"], sim_url))
        fleet = Fleet(env, log_dir)
        engine = create_engine(normalise_url(url))
        stack.callback(engine.dispose)
        fleet.cli("db", "upgrade")
        _seed(engine, stacks)
        for _ in range(workers):
            fleet.start("worker")
        _wait_fleet(engine, workers)
        client: StreamClient | None = None
        if stream:
            port = free_port()
            fleet.start("dashboard", "--port", str(port))
            _wait_fleet(engine, workers + 1)
            client = StreamClient(f"http://127.0.0.1:{port}/api/events",
                                  duration + 3 * interval + 60)
        for _ in range(beats):
            fleet.start("beat")
        _wait_fleet(engine, workers + beats + (1 if stream else 0))
        # Measure from the first fired slot on (start-up and the first claims excluded).
        _wait(lambda: _scalar(engine, "SELECT count(*) FROM ticks WHERE trigger = 'beat'") > 0,
              3 * interval + 30, "the first slot")
        pids = {f"{role}{i}": p.pid for i, (role, p) in enumerate(fleet.procs)}
        cpu0 = {name: _cpu_s(pid) for name, pid in pids.items()}
        server0 = _server_cpu_s()
        sim = ProcessCPU(sim_url)  # the simulator's CPU, apart from tickwork's
        sim0 = sim.seconds()
        began = time.time()
        with LockSampler(url) as locks:
            while (left := began + duration - time.time()) > 0:
                time.sleep(min(left, 1.0))
                if progress:
                    print(f"\r  fleet {stacks} stacks: {time.time() - began:5.0f}/"
                          f"{duration:.0f} s", end="", file=sys.stderr, flush=True)
            ended = time.time()
            cpu1 = {name: _cpu_s(pid) for name, pid in pids.items()}
            server1 = _server_cpu_s()
            sim_s = sim.seconds() - sim0
        if progress:
            print(file=sys.stderr)
        seen = client.stop() if client is not None else []
        fleet.stop("beat")
        _wait(lambda: _scalar(engine, "SELECT count(*) FROM ticks WHERE status IN "
                                      "('queued', 'running')") == 0, 120, "the last ticks")
        fleet.stop()
        figures = _figures(engine, began, ended, cpu0, cpu1, server1 - server0, stacks,
                           workers, beats, interval, latency, locks)
        figures["sim_cpu_ms_per_tick"] = (round(sim_s * 1000 / max(1, figures["ticks_started"]),
                                                3) if sim.found else None)
        figures["propagation_ms"] = (summary(_propagation(engine, seen, began, ended))
                                     if stream else None)
        figures["stream_events"] = len(seen)
        figures["wakeups"] = "redis" if redis else "polling"
        _without_sdk(figures, sdk_ms)
        figures["llm"] = "chain" if sim_url else "inprocess"
        return figures


def _propagation(engine: Engine, seen: list[tuple[int, float]], began: float,
                 ended: float) -> list[float]:
    """Arrival at the dashboard's client − the event's commit stamp (written by the process
    that committed it, a worker or the beat), for the events of the measured window."""
    if not seen:
        return []
    with engine.connect() as conn:
        stamped: dict[int, float] = dict(conn.execute(text(
            "SELECT id, created_at FROM events WHERE created_at >= :b AND created_at < :e"),
            {"b": began, "e": ended}).all())
    return [(arrived - stamped[i]) * 1000 for i, arrived in seen if i in stamped]


@contextlib.contextmanager
def _tmpdir(keep: str | None = None) -> Iterator[str]:
    """Where the processes log: `keep` (kept after the step), or a directory that goes with
    it."""
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        yield keep
        return
    import tempfile
    with tempfile.TemporaryDirectory(prefix="tickwork-fleet-") as d:
        yield d


def _scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar_one()


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _wait_fleet(engine: Engine, n: int) -> None:
    _wait(lambda: _scalar(engine, "SELECT count(*) FROM processes") >= n, 60,
          f"{n} processes to register")


def _figures(engine: Engine, began: float, ended: float, cpu0: dict[str, float],
             cpu1: dict[str, float], server_cpu: float, stacks: int, workers: int,
             beats: int, interval: int, latency: str, locks: LockSampler) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(text(
            # first_step: the tick's first LLM request about to go out (a skipped attempt sent
            # none), else its first step beginning: when work started.
            "SELECT t.slot, t.status, t.reason, t.scheduled_at, t.started_at, t.finished_at, "
            "t.worker_id, coalesce((SELECT min(a.started_at) FROM llm_attempts a WHERE "
            "a.tick_id = t.id AND a.status NOT LIKE 'skipped%'), (SELECT min(s.started_at) "
            "FROM steps s WHERE s.tick_id = t.id)) AS first_step FROM ticks t "
            "WHERE t.trigger = 'beat' AND t.scheduled_at >= :b AND t.scheduled_at < :e"),
            {"b": began, "e": ended}).mappings()]
    slots = sorted({r["slot"] for r in rows})
    started = [r for r in rows if r["started_at"] is not None]
    per_worker: dict[str, Counter[int]] = {}
    for r in started:
        per_worker.setdefault(r["worker_id"] or "?", Counter())[r["slot"]] += 1
    cpu = {name: round(cpu1[name] - cpu0[name], 3) for name in cpu0}
    ticks = max(1, len(started))
    expected = stacks * len(slots)
    busy = sum(1 for r in rows if r["status"] == "skipped"
               and r["reason"] == "previous tick still running")
    return {
        "topology": f"{beats} beat, {workers} workers on PostgreSQL", "stacks": stacks,
        "duration_s": round(ended - began, 1), "interval_s": interval,
        "sim_latency_ms": latency, "slots": len(slots), "ticks_expected": expected,
        "ticks_started": len(started), "ticks_skipped_busy": busy,
        "ticks_succeeded": sum(1 for r in rows if r["status"] == "succeeded"),
        "ticks_skipped": sum(1 for r in rows if r["status"] == "skipped"),
        "ticks_failed": sum(1 for r in rows if r["status"] in ("failed", "timed_out")),
        "started_share": len(started) / expected if expected else 0.0,
        "claim_lateness_ms": summary([(r["started_at"] - r["scheduled_at"]) * 1000
                                      for r in started]),
        "lateness_ms": summary([(r["first_step"] - r["scheduled_at"]) * 1000
                                for r in started if r["first_step"] is not None]),
        "tick_duration_ms": summary([(r["finished_at"] - r["started_at"]) * 1000
                                     for r in started if r["finished_at"]]),
        "ticks_per_worker_per_slot": {w: median(list(c.values()))
                                      for w, c in sorted(per_worker.items())},
        "ticks_per_worker": {w: sum(c.values()) for w, c in sorted(per_worker.items())},
        "cpu_s_by_process": cpu,
        "cpu_ms_per_tick": round(sum(cpu.values()) * 1000 / ticks, 3),
        "cpu_ms_per_tick_by_process": {n: round(c * 1000 / ticks, 3) for n, c in cpu.items()},
        "postgres_cpu_ms_per_tick": round(server_cpu * 1000 / ticks, 3),
        "longest_lock_wait_ms": round(locks.longest_ms, 1),
        "lock_wait_samples": locks.waits,
        "llm_attempts_by_provider": _attempts(engine, began, ended),
    }


def _without_sdk(figures: dict[str, Any], sdk_ms: dict[str, float] | None) -> None:
    """The SDK's share of the CPU per tick: its calls per tick (attempts that reached a
    provider, by provider) times each provider's CPU per call, taken off."""
    figures["sdk_cpu_ms_per_call_by_provider"] = sdk_ms
    if not sdk_ms:
        return
    calls = {p: sum(n for status, n in by.items() if not status.startswith("skipped"))
             for p, by in figures["llm_attempts_by_provider"].items()}
    total = sum(calls.values())
    ticks = max(1, figures["ticks_started"])
    if total:
        per_call = sum(sdk_ms.get(p, 0.0) * n for p, n in calls.items()) / total
        figures["sdk_cpu_ms_per_call"] = round(per_call, 3)
        figures["cpu_ms_per_tick_without_sdk"] = round(
            max(0.0, figures["cpu_ms_per_tick"] - per_call * total / ticks), 3)


def _attempts(engine: Engine, began: float, ended: float) -> dict[str, dict[str, int]]:
    """LLM attempts of the window by provider and status (429s are `rate_limited`)."""
    out: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for provider, status, n in conn.execute(text(
                "SELECT provider, status, count(*) FROM llm_attempts WHERE started_at >= :b "
                "AND started_at < :e GROUP BY provider, status"), {"b": began, "e": ended}):
            out.setdefault(provider, {})[status] = int(n)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", required=True, help="a PostgreSQL server URL")
    parser.add_argument("--stacks", type=int, required=True)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--beats", type=int, default=1)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--latency", default="1500,3000")
    parser.add_argument("--redis")
    parser.add_argument("--sim-url")
    parser.add_argument("--no-stream", action="store_true",
                        help="no dashboard and no event-stream client (no propagation figure)")
    parser.add_argument("--json")
    parser.add_argument("--logs", help="keep each process's log in this directory")
    parser.add_argument("--set", action="append", default=[], metavar="TICKWORK_X=VALUE",
                        help="a setting for every role (repeatable), e.g. "
                        "TICKWORK_SPREAD_S=5")
    args = parser.parse_args()
    if any("=" not in item or not item.startswith("TICKWORK_") for item in args.set):
        parser.error("--set takes TICKWORK_NAME=VALUE")
    settings = dict(item.split("=", 1) for item in args.set)
    result = run_step(args.database, args.stacks, args.duration, args.workers, args.beats,
                      args.interval, args.latency, args.redis, args.sim_url,
                      stream=not args.no_stream, logs=args.logs, settings=settings)
    result["settings"] = settings
    out = json.dumps(result, indent=2)
    if args.json and args.json != "-":
        Path(args.json).write_text(out)
    print(out)


if __name__ == "__main__":
    main()
