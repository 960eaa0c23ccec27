"""The tick runner and its workers: output validation with one repair, failures recorded
where people look, stacks that fail or complete, isolation between ticks, workers claiming
at once and stale attempts, and the outbox rows of a tick."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel
from sqlalchemy import select

from agents.base import Effects, TickContext
from agents.llm.base import Attempt, LLMError, LLMRequest
from agents.registry import DEFAULT_TEAM, AgentRegistry
from orchestrator import stacks
from orchestrator.beat import Beat
from orchestrator.worker import Worker, WorkerConfig
from schema import tables as t
from schema.clock import FakeClock
from schema.outputs import PlannerOutput
from tests.conftest import wait_for
from tests.engine_helpers import (
    BEAT,
    GatedLLM,
    ScriptedLLM,
    attempts_of,
    build_runtime,
    count_rows,
    event_kinds,
    events_of,
    new_stack,
    raw_claim,
    reap,
    run_queued,
    seed_of,
    stack_row,
    steps_of,
    tick_row,
    ticks_of,
)

PLAN = orjson.dumps({"task": "outline the essay", "rationale": "first things first"}).decode()


def only_tick(rt: Any, stack_id: int) -> dict[str, Any]:
    (row,) = ticks_of(rt.db, stack_id)
    return row


# -- validation and repair -------------------------------------------------------------------

def test_an_invalid_answer_is_repaired_once(db_url: str, clock: FakeClock) -> None:
    def script(r: LLMRequest, n: int) -> str | None:
        if seed_of(r)[2] == "planner":
            return "not json at all" if n == 0 else PLAN
        return None

    llm = ScriptedLLM(clock, script)
    with build_runtime(db_url, clock, llm=llm) as rt:
        sid = new_stack(rt.db, clock, "a")
        asyncio.run(run_queued(rt))
        tick = only_tick(rt, sid)
        assert tick["status"] == "succeeded"
        planner = steps_of(rt.db, tick["id"])[0]
        assert (planner["agent"], planner["status"], planner["error"]) == (
            "planner", "succeeded", None)
        assert orjson.loads(planner["output"])["task"] == "outline the essay"
        tries = [a for a in attempts_of(rt.db, tick["id"]) if a["step_id"] == planner["id"]]
        assert [a["status"] for a in tries] == ["invalid_output", "ok"]
        assert tries[0]["error"]
        # The repair prompt showed the model its bad answer and asked again.
        repair = [r for r in llm.calls if seed_of(r)[2] == "planner"][1]
        assert repair.messages[-2] == {"role": "assistant", "content": "not json at all"}
        assert "did not validate" in repair.messages[-1]["content"]
        with rt.db.read() as conn:
            memory = {k: v for k, v in conn.execute(
                select(t.memories.c.key, t.memories.c.value))}
        assert memory["current_task"] == "outline the essay"


def test_an_answer_invalid_twice_fails_the_step_and_the_tick(db_url: str,
                                                            clock: FakeClock) -> None:
    bad = '{"title": ""}'

    def script(r: LLMRequest, n: int) -> str | None:
        return bad if seed_of(r)[2] == "builder" else None

    llm = ScriptedLLM(clock, script)
    with build_runtime(db_url, clock, llm=llm) as rt:
        sid = new_stack(rt.db, clock, "a")
        asyncio.run(run_queued(rt))
        tick = only_tick(rt, sid)
        assert tick["status"] == "failed"
        assert tick["reason"].startswith("step 2 (builder) failed: invalid output")
        steps = steps_of(rt.db, tick["id"])
        assert [(s["agent"], s["status"]) for s in steps] == [
            ("planner", "succeeded"), ("builder", "failed")]  # the tick stops at the failure
        assert steps[1]["raw_output"] == bad
        assert steps[1]["output"] is None
        assert "title" in steps[1]["error"]
        tries = [a for a in attempts_of(rt.db, tick["id"]) if a["step_id"] == steps[1]["id"]]
        assert [a["status"] for a in tries] == ["invalid_output", "invalid_output"]
        assert llm.agents_called() == ["planner", "builder", "builder"]
        assert stack_row(rt.db, sid)["execution_state"] == "running"  # the next tick tries again
        assert event_kinds(rt.db, tick["id"])["tick.finished"] == 1


def test_an_llm_error_fails_the_step_with_every_attempt_recorded(db_url: str,
                                                                clock: FakeClock) -> None:
    tried = [Attempt("groq", "llama", "rate_limited", 5.0, clock.now(), retry_after_s=2.0),
             Attempt("groq", "llama", "server_error", 7.0, clock.now(), error="502"),
             Attempt("openai", "gpt", "timeout", 30_000.0, clock.now(), error="read timeout")]

    def script(r: LLMRequest, n: int) -> BaseException | None:
        if seed_of(r)[2] == "planner":
            return LLMError("every provider failed", list(tried))
        return None

    with build_runtime(db_url, clock, llm=ScriptedLLM(clock, script)) as rt:
        sid = new_stack(rt.db, clock, "a")
        asyncio.run(run_queued(rt))
        tick = only_tick(rt, sid)
        assert tick["status"] == "failed"
        assert tick["reason"] == "step 1 (planner) failed: every provider failed"
        (step,) = steps_of(rt.db, tick["id"])
        assert (step["status"], step["error"]) == ("failed", "every provider failed")
        rows = attempts_of(rt.db, tick["id"])
        assert [(a["provider"], a["status"], a["seq"]) for a in rows] == [
            ("groq", "rate_limited", 0), ("groq", "server_error", 1), ("openai", "timeout", 2)]
        assert rows[0]["retry_after_s"] == 2.0
        assert rows[2]["error"] == "read timeout"


def test_a_team_naming_an_unknown_agent_fails_the_tick_and_the_stack(
        db_url: str, clock: FakeClock) -> None:
    # The stack was created when "echo" was installed; it is gone now.
    with build_runtime(db_url, clock, llm=ScriptedLLM(clock)) as rt:
        sid = new_stack(rt.db, clock, "a", team=["planner", "echo"])
        asyncio.run(run_queued(rt))
        tick = only_tick(rt, sid)
        assert tick["status"] == "failed"
        assert "'echo'" in tick["reason"] and "planner" in tick["reason"]
        stack = stack_row(rt.db, sid)
        assert stack["execution_state"] == "failed"
        assert "'echo'" in stack["pause_reason"]
        assert steps_of(rt.db, tick["id"]) == []
        assert rt.llm.calls == []  # type: ignore[attr-defined]
        assert events_of(rt.db, stack_id=sid, kind="stack.updated")[-1]["data"].find(
            '"execution_state":"failed"') >= 0
        clock.advance(BEAT)
        asyncio.run(Beat(rt.store, clock, BEAT).fire())
        assert len(ticks_of(rt.db, sid)) == 1  # a failed stack gets no more ticks


def test_a_met_goal_completes_the_stack_and_stops_its_ticks(db_url: str,
                                                            clock: FakeClock) -> None:
    def script(r: LLMRequest, n: int) -> str | None:
        if seed_of(r)[2] == "reviewer":
            return '{"score": 10, "feedback": "done", "goal_met": true}'
        return None

    with build_runtime(db_url, clock, llm=ScriptedLLM(clock, script)) as rt:
        sid, other = new_stack(rt.db, clock, "done"), new_stack(rt.db, clock, "other")
        asyncio.run(run_queued(rt))
        tick = only_tick(rt, sid)
        assert tick["status"] == "succeeded"
        assert stack_row(rt.db, sid)["execution_state"] == "completed"
        updates = events_of(rt.db, stack_id=sid, kind="stack.updated")
        assert '"execution_state":"completed"' in updates[-1]["data"]
        clock.advance(BEAT)
        asyncio.run(Beat(rt.store, clock, BEAT).fire())
        assert len(ticks_of(rt.db, sid)) == 1
        assert stack_row(rt.db, other)["execution_state"] == "completed"  # same script
        assert len(ticks_of(rt.db, other)) == 1


# -- isolation -------------------------------------------------------------------------------

class Boom:
    name = "boom"
    output_type = PlannerOutput
    blocking = False

    def prompt(self, ctx: TickContext) -> list[dict[str, str]]:
        raise RuntimeError("agent bug")

    def apply(self, output: BaseModel, ctx: TickContext) -> Effects:
        return Effects()


class Blocker:
    """A synchronous custom agent that blocks (and does not say so: treated as blocking)."""

    name = "blocker"
    output_type = PlannerOutput

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.returned = threading.Event()

    def prompt(self, ctx: TickContext) -> list[dict[str, str]]:
        self.entered.set()
        self.release.wait(10)
        self.returned.set()
        return [{"role": "user", "content": "plan"}]

    def apply(self, output: BaseModel, ctx: TickContext) -> Effects:
        return Effects()


def _factory(agent: Any) -> Callable[[], Any]:
    return lambda: agent


def registry_with(*agents: Any) -> AgentRegistry:
    registry = AgentRegistry.default(plugins=False)
    for agent in agents:
        registry.register(_factory(agent), agent.name)
    return registry


def test_an_agent_that_raises_fails_only_its_own_tick(db_url: str, clock: FakeClock) -> None:
    with build_runtime(db_url, clock, llm=ScriptedLLM(clock),
                       registry=registry_with(Boom())) as rt:
        bad, good = new_stack(rt.db, clock, "bad", team=["boom"]), new_stack(rt.db, clock, "ok")
        asyncio.run(run_queued(rt))
        tick = only_tick(rt, bad)
        assert tick["status"] == "failed"
        assert "prompt raised RuntimeError('agent bug')" in tick["reason"]
        assert only_tick(rt, good)["status"] == "succeeded"
        assert stack_row(rt.db, bad)["execution_state"] == "running"


def test_a_runner_error_fails_only_its_own_tick(db_url: str, clock: FakeClock) -> None:
    holder: dict[str, int] = {}

    def script(r: LLMRequest, n: int) -> BaseException | None:
        return RuntimeError("model adapter bug") if seed_of(r)[0] == holder["bad"] else None

    with build_runtime(db_url, clock, llm=ScriptedLLM(clock, script)) as rt:
        holder["bad"] = new_stack(rt.db, clock, "bad")
        good = new_stack(rt.db, clock, "ok")
        asyncio.run(run_queued(rt))
        tick = only_tick(rt, holder["bad"])
        assert (tick["status"], tick["reason"]) == (
            "failed", "runner error: RuntimeError('model adapter bug')")
        assert only_tick(rt, good)["status"] == "succeeded"


def test_a_tick_that_hangs_times_out_without_holding_up_another(db_url: str,
                                                              clock: FakeClock) -> None:
    holder: dict[str, int] = {}
    llm = GatedLLM(clock, holds=lambda r: seed_of(r)[0] == holder["hung"])  # never released
    with build_runtime(db_url, clock, llm=llm, tick_timeout_s=60) as rt:
        holder["hung"] = new_stack(rt.db, clock, "hung")
        good = new_stack(rt.db, clock, "ok")

        async def main() -> None:
            await rt.worker.claim_once()
            await wait_for(lambda: only_tick(rt, good)["status"] == "succeeded",
                           what="the other stack's tick to finish")
            assert only_tick(rt, holder["hung"])["status"] == "running"
            clock.advance(59)  # the timeout runs on the injected clock
            await asyncio.sleep(0)
            assert only_tick(rt, holder["hung"])["status"] == "running"
            clock.advance(1)
            await wait_for(lambda: rt.worker.running == 0, what="the hung tick to end")

        asyncio.run(main())
        tick = only_tick(rt, holder["hung"])
        assert (tick["status"], tick["reason"]) == ("timed_out", "ran past its 60 s timeout")
        assert len(steps_of(rt.db, only_tick(rt, good)["id"])) == len(DEFAULT_TEAM)


def test_a_blocking_agent_runs_in_a_thread_and_stalls_no_other_tick(
        db_url: str, clock: FakeClock) -> None:
    blocker = Blocker()
    with build_runtime(db_url, clock, llm=ScriptedLLM(clock),
                       registry=registry_with(blocker)) as rt:
        slow = new_stack(rt.db, clock, "slow", team=["blocker"])
        fast = new_stack(rt.db, clock, "fast")

        async def main() -> None:
            try:
                await rt.worker.claim_once()
                await wait_for(blocker.entered.is_set, what="the blocking agent to start")
                await wait_for(lambda: only_tick(rt, fast)["status"] == "succeeded",
                               what="the other stack's tick")
                # The other tick ran to its end while the agent was still blocked.
                assert not blocker.returned.is_set()
                assert only_tick(rt, slow)["status"] == "running"
            finally:
                blocker.release.set()
            await wait_for(lambda: rt.worker.running == 0, what="the blocked tick")

        asyncio.run(main())
        assert only_tick(rt, slow)["status"] == "succeeded"


# -- workers: concurrent claims, stale attempts -----------------------------------------------

def test_two_workers_claiming_at_once_never_run_a_tick_twice(db_url: str,
                                                            clock: FakeClock) -> None:
    llm = ScriptedLLM(clock)
    with build_runtime(db_url, clock, llm=llm, claim_batch=3) as rt:
        for i in range(12):
            new_stack(rt.db, clock, f"s{i}")
        second = Worker(rt.store, rt.runner, rt.bus, clock,
                        WorkerConfig(lease_s=30.0, claim_batch=3))

        async def main() -> list[list[int]]:
            got: list[list[int]] = [[], []]
            while True:
                a, b = await asyncio.gather(rt.worker.claim_once(), second.claim_once())
                got[0] += [c.id for c in a]
                got[1] += [c.id for c in b]
                if not a and not b:
                    break
            await wait_for(lambda: rt.worker.running == second.running == 0, 20, "ticks")
            return got

        got = asyncio.run(main())
        assert not set(got[0]) & set(got[1])
        assert sorted(got[0] + got[1]) == [r["id"] for r in ticks_of(rt.db)]
        assert set(llm.calls_by_seed().values()) == {1}
        assert len(llm.calls) == 12 * len(DEFAULT_TEAM)
        for r in ticks_of(rt.db):
            assert (r["status"], r["attempt"]) == ("succeeded", 1)
            assert event_kinds(rt.db, r["id"])["tick.started"] == 1


def test_a_runner_that_lost_its_lease_writes_nothing(db_url: str, clock: FakeClock) -> None:
    # Attempt 1 waits in the builder step; its lease expires, attempt 2 runs the tick to the
    # end; then attempt 1 wakes and tries to journal its builder step.
    llm = GatedLLM(clock, holds=lambda r: seed_of(r)[2] == "builder" and not any(
        c.seed == r.seed for c in llm.calls[:-1]))
    with build_runtime(db_url, clock, llm=llm) as rt:
        sid = new_stack(rt.db, clock, "a")
        late = Worker(rt.store, rt.runner, rt.bus, clock, WorkerConfig(lease_s=30.0))

        async def main() -> None:
            await rt.worker.claim_once()
            await wait_for(lambda: llm.waiting_for("builder"), what="attempt 1 at the builder")
            clock.advance(31)
            assert await reap(rt) == (1, 0, 0)
            await late.claim_once()
            await wait_for(lambda: late.running == 0, what="attempt 2 to finish")
            llm.release()
            await wait_for(lambda: rt.worker.running == 0, what="attempt 1 to stop")

        asyncio.run(main())
        (tick,) = ticks_of(rt.db, sid)
        assert (tick["status"], tick["attempt"]) == ("succeeded", 2)
        assert [(s["agent"], s["attempt"]) for s in steps_of(rt.db, tick["id"])] == [
            ("planner", 1), ("builder", 2), ("communicator", 2), ("reviewer", 2)]
        assert count_rows(rt.db, t.artifacts, t.artifacts.c.tick_id == tick["id"]) == 1
        assert event_kinds(rt.db, tick["id"])["tick.finished"] == 1
        assert llm.agents_called() == ["planner", "builder", "builder", "communicator",
                                       "reviewer"]


def test_a_worker_that_reclaims_its_requeued_tick_keeps_the_new_attempts_lease(
        db_url: str, clock: FakeClock) -> None:
    # The worker's attempt 1 stalls past its lease and is requeued; the same worker claims
    # attempt 2. When the stale attempt 1 gives up, attempt 2 must still be heartbeated.
    llm = GatedLLM(clock, holds=lambda r: seed_of(r)[2] == "planner")
    with build_runtime(db_url, clock, llm=llm) as rt:
        sid = new_stack(rt.db, clock, "a")

        async def main() -> None:
            await rt.worker.claim_once()
            await wait_for(lambda: len(llm.waiting) == 1, what="attempt 1 under way")
            stale = llm.waiting[0]
            clock.advance(31)
            assert await reap(rt) == (1, 0, 0)
            await rt.worker.claim_once()
            await wait_for(lambda: len(llm.waiting) == 2, what="attempt 2 under way")
            assert rt.worker.running == 2
            llm.release(stale)  # attempt 1 journals nothing and stops
            await wait_for(lambda: rt.worker.running == 1, what="attempt 1 to stop")
            for _ in range(4):  # attempt 2 lives on across lease periods
                clock.advance(20)
                await rt.worker.heartbeat_once()
                assert await reap(rt) == (0, 0, 0)
            llm.release()
            await wait_for(lambda: rt.worker.running == 0, what="attempt 2 to finish")

        asyncio.run(main())
        (row,) = ticks_of(rt.db, sid)
        assert (row["status"], row["attempt"]) == ("succeeded", 2)
        assert [s["attempt"] for s in steps_of(rt.db, row["id"])] == [2, 2, 2, 2]


# -- the outbox ------------------------------------------------------------------------------

def test_each_state_change_of_a_tick_writes_one_event(db_url: str, clock: FakeClock) -> None:
    with build_runtime(db_url, clock) as rt:
        sid = new_stack(rt.db, clock, "a")
        asyncio.run(run_queued(rt))
        tick = only_tick(rt, sid)
        assert tick["status"] == "succeeded"
        events = events_of(rt.db, tick_id=tick["id"])
        assert [e["kind"] for e in events] == (
            ["tick.queued", "tick.started"] + ["step.finished"] * 4 + ["tick.finished"])
        assert [orjson.loads(e["data"])["index"] for e in events[2:6]] == [0, 1, 2, 3]
        finished = orjson.loads(events[-1]["data"])
        assert (finished["id"], finished["status"]) == (tick["id"], "succeeded")
        assert [e["id"] for e in events] == sorted(e["id"] for e in events)
        assert len(events_of(rt.db, stack_id=sid, kind="stack.updated")) == 1  # its creation
        assert tick_row(rt.db, tick["id"])["finished_at"] is not None


def test_the_last_event_of_a_tick_carries_its_final_status(db_url: str,
                                                           clock: FakeClock) -> None:
    # A running tick of a paused stack loses its worker: the reaper requeues it and, the
    # stack being paused, cancels it in the same transaction. Readers replaying the outbox
    # must end on "cancelled", not on the intermediate "queued".
    with build_runtime(db_url, clock) as rt:
        sid = new_stack(rt.db, clock, "a")
        (c,) = asyncio.run(raw_claim(rt.db, clock))
        with rt.db.write() as conn:
            stacks.pause(conn, sid, None, clock.now())
        clock.advance(31)
        assert asyncio.run(rt.reaper.reap_once()) == (1, 0, 1)
        row = tick_row(rt.db, c.id)
        assert (row["status"], row["attempt"]) == ("cancelled", 2)
        events = events_of(rt.db, tick_id=c.id)
        assert [e["kind"] for e in events] == [
            "tick.queued", "tick.started", "tick.queued", "tick.finished"]
        assert [orjson.loads(e["data"])["status"] for e in events] == [
            "queued", "running", "queued", "cancelled"]
