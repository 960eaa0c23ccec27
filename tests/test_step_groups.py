"""Journaled steps that arrive together share one transaction (group commit), on both
databases, and each keeps its own outcome: a step whose attempt lost its tick writes nothing
while the rest of its group commits; every step's row, attempts, effects, spend and events are
as if it had been written alone."""

from __future__ import annotations

import asyncio
from typing import Any

from agents.base import Effects
from agents.llm.base import Attempt
from agents.planner import PlannerOutput
from agents.team import StepResult
from orchestrator.store import open_store, queue
from orchestrator.store.abc import Claimed
from schema import tables as t
from schema.clock import FakeClock
from schema.db import Database
from tests.engine_helpers import (
    attempts_of,
    count_rows,
    events_of,
    new_stack,
    raw_claim,
    settle,
    steps_of,
    tick_row,
)

LEASE_S = 30.0


def _step(clock: FakeClock, n: int) -> StepResult:
    spent = Attempt("sim", "simulated", "ok", 5.0, clock.now(), input_tokens=10 + n,
                    output_tokens=2)
    return StepResult("planner", "succeeded", [{"role": "user", "content": f"ask {n}"}],
                      output=PlannerOutput(task=f"task {n}"), attempts=[spent],
                      effects=Effects(memory={"current_task": f"task {n}"},
                                      messages=[f"hello {n}"],
                                      artifacts=[(f"plan {n}", "body")]))


def _ticks(db: Database, clock: FakeClock, n: int) -> list[Claimed]:
    for i in range(n):
        new_stack(db, clock, f"s{i}")
    return asyncio.run(raw_claim(db, clock, limit=n, lease_s=LEASE_S))


def test_steps_arriving_together_share_a_transaction_and_keep_their_outcomes(
        db: Database, clock: FakeClock) -> None:
    claimed = _ticks(db, clock, 6)
    stale = claimed[0]
    with db.write() as conn:  # the first tick was handed on: its attempt 1 is stale
        queue.release(conn, "w-gone", [(stale.id, stale.attempt)], clock.now())
    commits: list[frozenset[str]] = []
    db.add_commit_listener(commits.append)
    store = open_store(db)

    async def commit_all() -> list[bool]:
        return await asyncio.gather(*(
            store.commit_step(c, 0, _step(clock, i), clock.now(), clock.now(), LEASE_S,
                              ("succeeded", None) if i % 2 else None)
            for i, c in enumerate(claimed)))

    outcomes = asyncio.run(commit_all())
    store.close()
    assert outcomes == [False, True, True, True, True, True]
    assert len(commits) < len(claimed) - 1  # shared transactions, not one each
    assert steps_of(db, stale.id) == [] and events_of(db, tick_id=stale.id, kind="step.finished") \
        == []
    for i, c in enumerate(claimed[1:], start=1):
        (step,) = steps_of(db, c.id)
        assert (step["agent"], step["status"], step["attempt"]) == ("planner", "succeeded", 1)
        assert [a["input_tokens"] for a in attempts_of(db, c.id)] == [10 + i]
        tick = tick_row(db, c.id)
        assert tick["input_tokens"] == 10 + i
        assert tick["status"] == ("succeeded" if i % 2 else "running")
        kinds = [e["kind"] for e in events_of(db, tick_id=c.id)
                 if e["kind"] in ("step.finished", "tick.finished")]
        assert kinds == (["step.finished", "tick.finished"] if i % 2 else ["step.finished"])
    assert count_rows(db, t.messages) == 5 and count_rows(db, t.artifacts) == 5
    with db.read() as conn:
        memory = dict(conn.execute(t.memories.select().with_only_columns(
            t.memories.c.stack_id, t.memories.c.value)).all())
        usage = {r["stack_id"]: r for r in conn.execute(t.stack_usage.select()).mappings()}
    assert sorted(memory.values()) == [f"task {i}" for i in range(1, 6)]
    ended = [c.stack_id for i, c in enumerate(claimed) if i % 2]
    for c in claimed[1:]:
        row: Any = usage[c.stack_id]
        assert row["llm_calls"] == 1
        assert row["ticks_succeeded"] == (1 if c.stack_id in ended else 0)


def test_a_retried_group_writes_each_step_once(db: Database, clock: FakeClock) -> None:
    """A group whose commit was lost after it committed runs again; it finds its steps and
    writes none of them twice."""
    from orchestrator.store.steps import StepWrite, commit_steps

    claimed = _ticks(db, clock, 3)
    writes = [StepWrite(c, 0, _step(clock, i), clock.now(), clock.now(), LEASE_S)
              for i, c in enumerate(claimed)]
    with db.write() as conn:
        assert commit_steps(conn, writes) == [True, True, True]
    with db.write() as conn:
        conn.info["tickwork.retry"] = 1  # as the database marks a transaction run again
        assert commit_steps(conn, writes) == [True, True, True]
    assert count_rows(db, t.steps) == 3 and count_rows(db, t.llm_attempts) == 3
    assert all(tick_row(db, c.id)["input_tokens"] == 10 + i for i, c in enumerate(claimed))
    settle(db, clock)
