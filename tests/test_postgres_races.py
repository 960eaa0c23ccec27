"""Races on PostgreSQL, interleaved by hand: each test holds one transaction open at the exact
point that matters, starts the other, checks from outside whether it waits for a lock, then
lets the first commit. Nothing is left to timing.

- play racing a step commit: the step commit locks the stack first, so whichever comes
  second waits, and neither deadlocks (it used to: play took the outbox lock, then waited on the
  tick row the step had updated, while the step waited for the outbox lock);
- pause racing the fan-out: a pause waits for a fan-out that read its stack and then cancels
  what it queued, and a fan-out after a pause queues nothing for the stack;
- pause racing a claim: a claimed tick keeps running; a tick the pause cancelled is not claimed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, select

from agents.base import Effects
from agents.llm.base import Attempt
from agents.team import StepResult
from orchestrator import stacks
from orchestrator.stacks import Agents
from orchestrator.store import journal, queue, steps
from orchestrator.store.abc import Claimed
from schema import tables as t
from schema.db import Database
from schema.models import StackCreate
from schema.outputs import PlannerOutput
from tests.pg_helpers import Held, pg_url, waiting

__all__ = ["pg_url"]  # fixture

NOW = 1_800_000_000.0
SLOT = 180_000_001  # a slot after NOW, on a 10 s beat


def _setup(url: str) -> tuple[int, Claimed]:
    """A running one-agent stack whose start tick a worker has claimed and is running."""
    db = Database(url)
    try:
        with db.write() as conn:
            sid = stacks.create(conn, StackCreate(name="racer", team=["planner"]),
                                beat_interval=10, now=NOW, agents=Agents(["planner"]))["id"]
            (tick,) = queue.claim(conn, "w1", 10, NOW, 30.0)
        return int(sid), tick
    finally:
        db.close()


def _result(complete: bool) -> StepResult:
    return StepResult(agent="planner", status="succeeded", prompt=[],
                      output=PlannerOutput(task="race", rationale="by hand"),
                      attempts=[Attempt("sim", "simulated", "ok", 1.0, NOW, 10, 20)],
                      effects=Effects(complete_stack=complete))


def _commit_step(tick: Claimed, complete: bool = False) -> Any:
    """The step's transaction; with `complete`, the step also writes its stack's row (the
    goal is met), after its tick's."""
    def body(conn: Connection) -> bool:
        return journal.commit_step(conn, tick_id=tick.id, stack_id=tick.stack_id,
                                   attempt=tick.attempt, index=0, result=_result(complete),
                                   started_at=NOW, now=NOW + 1, lease_s=30.0,
                                   final=("succeeded", None))
    return body


def _play(sid: int) -> Any:
    return lambda conn: stacks.play(conn, sid, now=NOW + 1, agents=Agents(["planner"]))


def _rows(url: str, table: Any, *where: Any) -> list[dict[str, Any]]:
    db = Database(url)
    try:
        with db.read() as conn:
            return [dict(r) for r in conn.execute(select(table).where(*where)).mappings()]
    finally:
        db.close()


@pytest.fixture
def paused_hold(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event,
                                                                    threading.Event]]:
    """A step commit that stops right after its fencing check (the tick row updated, its
    events not yet written) until the test lets it go on."""
    reached, resume = threading.Event(), threading.Event()
    real = steps.hold

    def hold(*args: Any, **kwargs: Any) -> Any:
        held = real(*args, **kwargs)
        reached.set()
        resume.wait(30)
        return held

    monkeypatch.setattr(steps, "hold", hold)
    yield reached, resume
    resume.set()


def test_play_racing_a_step_commit_waits_instead_of_deadlocking(
        pg_url: str, paused_hold: tuple[threading.Event, threading.Event]) -> None:
    sid, tick = _setup(pg_url)
    Held(pg_url, lambda conn: stacks.pause(conn, sid, "lunch", NOW)).finish()
    reached, resume = paused_hold
    step = Held(pg_url, _commit_step(tick, complete=True))
    assert reached.wait(10), "the step commit reached its fencing check"
    play = Held(pg_url, _play(sid))
    assert waiting(pg_url, play), "play waits for the step commit (the stack's row)"
    resume.set()
    assert step.finish() is True
    assert play.finish().changed is True
    (row,) = _rows(pg_url, t.ticks, t.ticks.c.id == tick.id)
    assert (row["status"], row["attempt"]) == ("succeeded", 1)
    assert _rows(pg_url, t.stacks, t.stacks.c.id == sid)[0]["execution_state"] == "running"
    queued = _rows(pg_url, t.ticks, t.ticks.c.stack_id == sid, t.ticks.c.status == "queued")
    assert [q["trigger"] for q in queued] == ["start"]  # played after the tick had ended


def test_a_step_commit_after_play_waits_for_it(pg_url: str) -> None:
    sid, tick = _setup(pg_url)
    Held(pg_url, lambda conn: stacks.pause(conn, sid, "lunch", NOW)).finish()
    play = Held(pg_url, _play(sid))
    assert play.ran.wait(10)
    step = Held(pg_url, _commit_step(tick))
    assert waiting(pg_url, step), "the step commit waits for play (the stack's row)"
    assert play.finish().changed is True
    assert step.finish() is True
    (row,) = _rows(pg_url, t.ticks, t.ticks.c.id == tick.id)
    assert row["status"] == "succeeded"  # the running tick finished, as a pause allows
    # play found the tick still running: no second tick for the stack
    assert not _rows(pg_url, t.ticks, t.ticks.c.stack_id == sid, t.ticks.c.status == "queued")


def _fresh_stack(url: str) -> int:
    """A running stack with no tick active (its start tick has run)."""
    sid, tick = _setup(url)
    Held(url, lambda conn: queue.finalize(conn, tick.id, tick.attempt, "succeeded", None,
                                          NOW)).finish()
    return sid


def test_a_pause_waits_for_the_fan_out_then_cancels_what_it_queued(pg_url: str) -> None:
    sid = _fresh_stack(pg_url)
    fan = Held(pg_url, lambda conn: queue.fan_out(conn, SLOT, 10, NOW + 10))
    assert fan.ran.wait(10) and fan.result == (1, 0)
    pause = Held(pg_url, lambda conn: stacks.pause(conn, sid, None, NOW + 10))
    assert waiting(pg_url, pause), "the pause waits for the fan-out that read the stack"
    fan.finish()
    pause.finish()
    (tick,) = _rows(pg_url, t.ticks, t.ticks.c.stack_id == sid, t.ticks.c.slot == SLOT)
    assert tick["status"] == "cancelled"


def test_a_fan_out_after_a_pause_queues_nothing_for_the_stack(pg_url: str) -> None:
    sid = _fresh_stack(pg_url)
    pause = Held(pg_url, lambda conn: stacks.pause(conn, sid, None, NOW + 10))
    assert pause.ran.wait(10)
    fan = Held(pg_url, lambda conn: queue.fan_out(conn, SLOT, 10, NOW + 10))
    assert waiting(pg_url, fan), "the fan-out waits for the pause"
    pause.finish()
    assert fan.finish() == (0, 0)
    assert not _rows(pg_url, t.ticks, t.ticks.c.stack_id == sid, t.ticks.c.slot == SLOT)


def test_a_tick_claimed_before_the_pause_commits_keeps_running(pg_url: str) -> None:
    sid = _fresh_stack(pg_url)
    Held(pg_url, lambda conn: queue.fan_out(conn, SLOT, 10, NOW + 10)).finish()
    claim = Held(pg_url, lambda conn: queue.claim(conn, "w2", 10, NOW + 10, 30.0))
    assert claim.ran.wait(10) and len(claim.result) == 1
    pause = Held(pg_url, lambda conn: stacks.pause(conn, sid, None, NOW + 10))
    assert waiting(pg_url, pause), "the pause waits for the claimed tick's row"
    claim.finish()
    pause.finish()
    (tick,) = _rows(pg_url, t.ticks, t.ticks.c.stack_id == sid, t.ticks.c.slot == SLOT)
    assert (tick["status"], tick["worker_id"]) == ("running", "w2")  # it finishes
    assert _rows(pg_url, t.stacks, t.stacks.c.id == sid)[0]["execution_state"] == "paused"


def test_a_tick_the_pause_cancelled_is_not_claimed(pg_url: str) -> None:
    sid = _fresh_stack(pg_url)
    Held(pg_url, lambda conn: queue.fan_out(conn, SLOT, 10, NOW + 10)).finish()
    pause = Held(pg_url, lambda conn: stacks.pause(conn, sid, None, NOW + 10))
    assert pause.ran.wait(10)
    claim = Held(pg_url, lambda conn: queue.claim(conn, "w2", 10, NOW + 10, 30.0))
    assert claim.ran.wait(10), "the claim skips the locked tick instead of waiting"
    assert claim.result == []
    claim.finish()
    pause.finish()
    (tick,) = _rows(pg_url, t.ticks, t.ticks.c.stack_id == sid, t.ticks.c.slot == SLOT)
    assert tick["status"] == "cancelled"
