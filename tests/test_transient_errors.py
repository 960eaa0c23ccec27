"""Transient database errors: a transaction that fails for a transient reason runs again (and
knows it is a retry); a permanent error is not retried; a database that stays away leaves a
tick to the reaper, never fails it; a retried step commit is journaled once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError, OperationalError

import schema.db
from agents.llm.base import Attempt
from agents.team import StepResult
from orchestrator.store import journal, steps
from schema import tables as t
from schema.clock import FakeClock
from schema.db import Database, is_retry
from schema.outputs import PlannerOutput
from tests.conftest import store_of
from tests.engine_helpers import (
    ScriptedLLM,
    build_runtime,
    events_of,
    new_stack,
    raw_claim,
    reap,
    run_queued,
    steps_of,
    tick_row,
    ticks_of,
)

LEASE_S = 30.0


def lost_connection() -> OperationalError:
    return OperationalError("stmt", {}, Exception("server closed the connection"))


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(schema.db, "BACKOFF_S", 0.001)
    monkeypatch.setattr(schema.db, "BACKOFF_CAP_S", 0.002)


class Body:
    """A transaction body that raises `errors` in turn, then writes a row and answers."""

    def __init__(self, *errors: BaseException, always: BaseException | None = None) -> None:
        self.errors = list(errors)
        self.always = always
        self.retries: list[bool] = []

    def __call__(self, conn: Connection, key: str) -> str:
        self.retries.append(is_retry(conn))
        conn.execute(t.meta.insert().values(key=key, value=str(len(self.retries)),
                                            updated_at=0.0))
        if self.always is not None:
            raise self.always
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def meta(db: Database, key: str) -> list[str]:
    with db.read() as conn:
        return list(conn.execute(select(t.meta.c.value).where(t.meta.c.key == key)).scalars())


def test_a_transient_failure_is_retried_and_the_retry_knows_it(db: Database) -> None:
    body = Body(lost_connection())
    assert asyncio.run(db.transact(body, "k")) == "done"
    assert body.retries == [False, True]
    assert meta(db, "k") == ["2"]  # the failed try rolled back: only the retry's write


def test_a_failure_that_persists_gives_up_after_the_retries(db: Database) -> None:
    body = Body(always=lost_connection())
    with pytest.raises(OperationalError, match="server closed the connection"):
        asyncio.run(db.transact(body, "k"))
    assert body.retries == [False] + [True] * (schema.db.RETRIES - 1)
    assert meta(db, "k") == []


@pytest.mark.parametrize("error", [IntegrityError("stmt", {}, Exception("duplicate key")),
                                   ValueError("a bug")], ids=["integrity", "value"])
def test_a_permanent_error_is_not_retried(db: Database, error: Exception) -> None:
    body = Body(always=error)
    with pytest.raises(type(error)):
        asyncio.run(db.transact(body, "k"))
    assert body.retries == [False]
    assert meta(db, "k") == []


def test_a_step_commit_that_keeps_failing_leaves_the_tick_to_the_reaper(
        db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = ScriptedLLM(clock)
    with build_runtime(db_url, clock, llm=llm, lease_s=LEASE_S) as rt:
        sid = new_stack(rt.db, clock, "a")
        tries: list[int] = []

        async def database_away(*args: Any, **kwargs: Any) -> bool:
            tries.append(1)
            raise lost_connection()

        real = rt.store.commit_step
        monkeypatch.setattr(rt.store, "commit_step", database_away)
        (claimed,) = asyncio.run(run_queued(rt))
        assert tries == [1]  # the planner's step could not be journaled
        row = tick_row(rt.db, claimed.id)
        assert (row["status"], row["attempt"], row["finished_at"]) == ("running", 1, None)
        assert not (row["reason"] or "").startswith("runner error")
        assert steps_of(rt.db, claimed.id) == []
        assert "tick.finished" not in {e["kind"] for e in events_of(rt.db, tick_id=claimed.id)}

        clock.advance(LEASE_S - 1)
        assert asyncio.run(reap(rt)) == (0, 0, 0)  # its lease still holds
        clock.advance(2)
        assert asyncio.run(reap(rt)) == (1, 0, 0)
        assert tick_row(rt.db, claimed.id)["attempt"] == 2

        monkeypatch.setattr(rt.store, "commit_step", real)
        (retry,) = asyncio.run(run_queued(rt))
        assert (retry.id, retry.attempt) == (claimed.id, 2)
        (row,) = ticks_of(rt.db, sid)
        assert (row["status"], row["attempt"]) == ("succeeded", 2)
        assert [s["attempt"] for s in steps_of(rt.db, row["id"])] == [2, 2, 2, 2]


def test_a_retried_step_commit_is_journaled_once(db: Database, clock: FakeClock) -> None:
    new_stack(db, clock, "a")
    (c,) = asyncio.run(raw_claim(db, clock))
    store = store_of(db)
    spent = Attempt("sim", "simulated", "ok", 1.0, clock.now(), input_tokens=7,
                    output_tokens=5)
    step = StepResult("planner", "succeeded", [], output=PlannerOutput(task="x"),
                      attempts=[spent])
    step.effects.messages.append("hello")

    def commit(conn: Connection) -> bool:
        return journal.commit_step(conn, tick_id=c.id, stack_id=c.stack_id,
                                   attempt=c.attempt, index=0, result=step,
                                   started_at=clock.now(), now=clock.now(), lease_s=LEASE_S)

    with store.write() as conn:
        assert commit(conn)
    # The commit went through but its answer was lost: the same transaction runs again.
    with store.write() as conn:
        conn.info["tickwork.retry"] = 1
        assert is_retry(conn)
        assert commit(conn)
    (row,) = steps_of(db, c.id)
    assert (row["index"], row["attempt"], row["agent"]) == (0, c.attempt, "planner")
    tick = tick_row(db, c.id)
    assert (tick["input_tokens"], tick["output_tokens"]) == (7, 5)
    with db.read() as conn:
        usage = conn.execute(select(t.stack_usage.c.input_tokens, t.stack_usage.c.llm_calls)
                             .where(t.stack_usage.c.stack_id == c.stack_id)).one()
        messages = conn.execute(select(t.messages.c.body)
                                .where(t.messages.c.tick_id == c.id)).scalars().all()
    assert tuple(usage) == (7, 1)
    assert messages == ["hello"]
    assert [e["kind"] for e in events_of(db, tick_id=c.id)].count("step.finished") == 1


def test_a_transient_failure_mid_step_commit_is_journaled_once(
        db: Database, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the store, as the runner commits: the first try fails after the step's writes
    # (rolled back), the retry journals it; one row, the spend counted once.
    new_stack(db, clock, "a")
    (c,) = asyncio.run(raw_claim(db, clock))
    store = store_of(db)
    fail = [True]
    real_emit = steps.emit_many

    def flaky_emit(*args: Any, **kwargs: Any) -> int:
        if fail:
            fail.clear()
            raise lost_connection()
        return real_emit(*args, **kwargs)

    monkeypatch.setattr(steps, "emit_many", flaky_emit)
    spent = Attempt("sim", "simulated", "ok", 1.0, clock.now(), input_tokens=3)
    step = StepResult("planner", "succeeded", [], output=PlannerOutput(task="x"),
                      attempts=[spent])
    assert asyncio.run(store.transact(
        journal.commit_step, tick_id=c.id, stack_id=c.stack_id, attempt=c.attempt, index=0,
        result=step, started_at=clock.now(), now=clock.now(), lease_s=LEASE_S))
    assert not fail
    assert len(steps_of(db, c.id)) == 1
    assert tick_row(db, c.id)["input_tokens"] == 3


def test_one_transient_error_in_a_grouped_step_commit_is_retried(
        db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """On SQLite step commits share transactions (group commit); one that meets a transient
    error runs again on its own, retried, instead of stalling its tick for a lease."""
    monkeypatch.setattr(schema.db, "BACKOFF_S", 0.001)
    fail = [True]
    real = steps.emit_many

    def flaky(*args: Any, **kwargs: Any) -> int:
        if fail:
            fail.clear()
            raise OperationalError("stmt", {}, Exception("database is locked"))
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "emit_many", flaky)
    with build_runtime(db_url, clock, llm=ScriptedLLM(clock)) as rt:
        sid = new_stack(rt.db, clock, "flaky")
        asyncio.run(run_queued(rt))
        assert not fail  # the error was met
        assert ticks_of(rt.db, sid)[0]["status"] == "succeeded"
