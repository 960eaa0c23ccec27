"""Micro-benchmarks of the engine's hot path on a SQLite file (CPU time, medians of runs).

- one statement run through `Connection.execute` against the same statement on the driver's
  cursor (`schema.prepared`);
- one journaled step (`journal.commit_step`) committed alone and in groups of 2, 4, 8;
- the fan-out of one slot for 1,000 running stacks.

    python -m load_tests.micro [--runs 5] [--json FILE]
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
from orchestrator import journal, queue
from orchestrator.store.prepared import Prepared
from schema import tables as t
from schema.db import Database
from schema.migrate import upgrade

STACKS = 1000


class _Out(BaseModel):
    summary: str
    items: list[str]


def _cpu_us(fn: Callable[[], int]) -> float:
    """CPU µs per item: fn does the work and returns how many items it did."""
    began = time.process_time()
    n = fn()
    return (time.process_time() - began) * 1e6 / n


def _one_run(tmp: Path) -> dict[str, Any]:
    db = Database(f"sqlite:///{tmp / 'micro.db'}")
    upgrade(db)
    now = time.time()
    with db.write() as conn:
        conn.execute(insert(t.stacks), [
            {"name": f"s{i}", "goal": "g", "execution_state": "running", "created_at": now,
             "updated_at": now} for i in range(STACKS)])
    out: dict[str, Any] = {}
    slot = 1

    def fan_out() -> int:
        nonlocal slot
        slot += 1
        with db.write() as conn:
            conn.execute(update(t.ticks).where(t.ticks.c.status == "queued")
                         .values(status="succeeded"))
        with db.write() as conn:
            began = time.process_time()
            queue.fan_out(conn, slot, 10, time.time())
            out.setdefault("fan_out_ms", []).append((time.process_time() - began) * 1000)
        return 1

    for _ in range(3):
        fan_out()
    out["fan_out_ms"] = statistics.median(out["fan_out_ms"])
    with db.write() as conn:
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
        with db.write() as conn:
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
            with db._write_on_writer() as conn:
                for c in claimed[k:k + group]:
                    journal.commit_step(conn, tick_id=c.id, stack_id=c.stack_id, attempt=1,
                                        index=index, result=result, started_at=now,
                                        now=time.time(), lease_s=300)
        return len(claimed)

    for group in (1, 2, 4, 8):
        out[f"step_in_groups_of_{group}_us"] = _cpu_us(functools.partial(steps, group))
    db.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json")
    args = parser.parse_args()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="tickwork-micro-") as tmp:
            runs.append(_one_run(Path(tmp)))
    medians = {k: round(statistics.median(r[k] for r in runs), 1) for k in runs[0]}
    for key, value in medians.items():
        print(f"{key:32s} {value:>9.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": medians, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
