"""Micro-benchmarks of the engine's hot path (CPU time, medians of runs), on a SQLite file or,
with `--database`, a fresh PostgreSQL database (whose server CPU per item is reported too):

- one statement run through `Connection.execute` against the same statement on the driver's
  cursor (`orchestrator.store.prepared`);
- journaled steps (`steps.commit_steps`) committed alone and in groups of 8, 32 and 128 (one
  transaction a group);
- the fan-out of one slot for 1,000 running stacks.

    python -m load_tests.micro [--runs 5] [--database postgresql://…] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import bindparam, insert, select, update

from agents.base import Effects
from agents.llm.base import Attempt
from agents.team import StepResult
from orchestrator.store import open_store, queue
from orchestrator.store.abc import Claimed
from orchestrator.store.prepared import Prepared
from orchestrator.store.steps import StepWrite, commit_steps
from schema import tables as t
from schema.db import Database
from schema.migrate import upgrade

STACKS = 1000


class _Out(BaseModel):
    summary: str
    items: list[str]


class _Server:
    """The CPU of the PostgreSQL backends serving this process (0 on SQLite)."""

    def __init__(self, db: Database) -> None:
        self.pids: list[int] = []
        if not db.is_sqlite:
            with db.engine.connect() as conn:  # the pool keeps this one (and the writer's)
                self.pids = [conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()]

    def cpu_s(self) -> float:
        import psutil

        total = 0.0
        for pid in self.pids:
            c = psutil.Process(pid).cpu_times()
            total += c.user + c.system
        return total


def _cpu_us(fn: Callable[[], int], server: _Server | None = None,
            out: dict[str, Any] | None = None, key: str = "") -> float:
    """CPU µs per item: fn does the work and returns how many items it did."""
    began, server0 = time.process_time(), server.cpu_s() if server else 0.0
    n = fn()
    if server is not None and out is not None and server.pids:
        out[f"{key}_server_us"] = (server.cpu_s() - server0) * 1e6 / n
    return (time.process_time() - began) * 1e6 / n


def _one_run(tmp: Path, database: str | None) -> dict[str, Any]:
    db = Database(database or f"sqlite:///{tmp / 'micro.db'}", pool_size=1)
    upgrade(db)
    store = open_store(db)
    now = time.time()
    with store.write() as conn:
        conn.execute(insert(t.stacks), [
            {"name": f"s{i}", "goal": "g", "execution_state": "running", "created_at": now,
             "updated_at": now} for i in range(STACKS)])
    out: dict[str, Any] = {}
    slot = 1

    def fan_out() -> int:
        nonlocal slot
        slot += 1
        with store.write() as conn:
            conn.execute(update(t.ticks).where(t.ticks.c.status == "queued")
                         .values(status="succeeded"))
        with store.write() as conn:
            began = time.process_time()
            queue.fan_out(conn, slot, 10, time.time())
            out.setdefault("fan_out_ms", []).append((time.process_time() - began) * 1000)
        return 1

    for _ in range(3):
        fan_out()
    out["fan_out_ms"] = statistics.median(out["fan_out_ms"])
    with store.write() as conn:
        claimed = queue.claim(conn, "micro", STACKS, now, 300)
    with db.write() as conn:
        conn.execute(insert(t.messages), [
            {"stack_id": c.stack_id, "tick_id": c.id, "agent": "a", "body": "hello " * 20,
             "created_at": now} for c in claimed for _ in range(5)])

    recent = (select(t.messages.c.agent, t.messages.c.body)
              .where(t.messages.c.stack_id == bindparam("stack_id"))
              .order_by(t.messages.c.id.desc()).limit(5))
    prepared_recent = Prepared(recent)

    def statements(prepared: bool) -> int:
        with store.write() as conn:
            for c in claimed:
                if prepared:
                    prepared_recent.all(conn, {"stack_id": c.stack_id})
                else:
                    list(conn.execute(recent, {"stack_id": c.stack_id}))
        return len(claimed)

    out["statement_sqlalchemy_us"] = _cpu_us(lambda: statements(False))
    out["statement_prepared_us"] = _cpu_us(lambda: statements(True))
    result = StepResult(
        "builder", "succeeded", [{"role": "system", "content": "x" * 400},
                                 {"role": "user", "content": "y" * 300}],
        output=_Out(summary="a plan " * 5, items=["one", "two"]),
        attempts=[Attempt("sim", "simulated", "ok", 1500.0, now, 300, 80, 0.0)],
        effects=Effects(memory={"k": "v"}, messages=["hello there"]))
    index = 0

    def steps(group: int) -> int:
        nonlocal index
        index += 1
        for k in range(0, len(claimed), group):
            with store.write() as conn:
                commit_steps(conn, [StepWrite(Claimed(c.id, c.stack_id, c.slot, 1, now), index,
                                              result, now, time.time(), 300)
                                    for c in claimed[k:k + group]])
        return len(claimed)

    server = _Server(db)
    for group in (1, 8, 32, 128):
        key = f"step_in_groups_of_{group}"
        out[f"{key}_us"] = _cpu_us(functools.partial(steps, group), server, out, key)
    db.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database", help="a PostgreSQL server URL: a fresh database there")
    parser.add_argument("--json")
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="tickwork-micro-") as tmp:
            if args.database:
                from load_tests.fleet import fresh_database
                with fresh_database(args.database) as url:
                    runs.append(_one_run(Path(tmp), url))
            else:
                runs.append(_one_run(Path(tmp), None))
    medians = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
    for key, value in medians.items():
        print(f"{key:32s} {value:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": medians, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
