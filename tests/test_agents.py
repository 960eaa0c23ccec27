"""Agents: the built-ins' effects, the registry (default team, unknown names, agents added by
import path and by entry point), a stack's own team, and where agent code runs."""

from __future__ import annotations

import asyncio
import threading
from importlib.metadata import EntryPoint
from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from agents import registry as registry_module
from agents.base import Effects, StackView, TickContext
from agents.llm.latency import Latency
from agents.llm.sim import SimulatedLLM
from agents.registry import (
    DEFAULT_TEAM,
    ENTRY_POINT_GROUP,
    AgentLoadError,
    AgentRegistry,
    UnknownAgent,
    load_object,
)
from agents.team import run_step
from orchestrator import stacks
from orchestrator.errors import Invalid
from schema import tables as t
from schema.clock import FakeClock
from schema.db import Database
from schema.models import StackCreate
from schema.outputs import BuilderOutput, CommunicatorOutput, PlannerOutput, ReviewerOutput
from tests.conftest import make_settings
from tests.engine_helpers import (
    ScriptedLLM,
    build_runtime,
    count_rows,
    run_queued,
    steps_of,
    ticks_of,
)


class EchoOutput(BaseModel):
    text: str


class EchoAgent:
    """A user's agent: says something in the feed. Loaded by import path in these tests."""

    name = "echo"
    output_type = EchoOutput
    blocking = False

    def prompt(self, ctx: TickContext) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"Echo the goal: {ctx.stack.goal}"}]

    def apply(self, output: BaseModel, ctx: TickContext) -> Effects:
        assert isinstance(output, EchoOutput)
        return Effects(messages=[f"echo: {output.text}"])


class ShoutAgent(EchoAgent):
    name = "shout"


class ThreadSpy:
    """An agent that does not say whether it blocks; records the thread each method ran on."""

    name = "spy"
    output_type: type[BaseModel] = EchoOutput

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []

    def prompt(self, ctx: TickContext) -> list[dict[str, str]]:
        self.threads.append(threading.current_thread())
        return [{"role": "user", "content": "hi"}]

    def apply(self, output: BaseModel, ctx: TickContext) -> Effects:
        self.threads.append(threading.current_thread())
        return Effects()


class NotAnAgent:
    name = "broken"


def ctx() -> TickContext:
    return TickContext(stack=StackView(1, "s", "grow tomatoes"), tick_id=1, slot=1, attempt=1)


# -- the built-in agents ---------------------------------------------------------------------

def test_the_built_in_agents_turn_answers_into_effects() -> None:
    reg = AgentRegistry.default(plugins=False)
    c = ctx()
    plan = PlannerOutput(task="buy seeds")
    assert reg.get("planner").apply(plan, c).memory == {"current_task": "buy seeds"}
    c.outputs["planner"] = plan
    built = BuilderOutput(title="Seed list", content="- roma")
    assert reg.get("builder").apply(built, c).artifacts == [("Seed list", "- roma")]
    said = reg.get("communicator").apply(CommunicatorOutput(message="bought"), c)
    assert said.messages == ["bought"]
    review = reg.get("reviewer").apply(ReviewerOutput(score=4, feedback="ok"), c)
    assert review.memory == {"last_review": "4/10 — ok"} and review.complete_stack is False
    done = reg.get("reviewer").apply(ReviewerOutput(score=10, feedback="ok", goal_met=True), c)
    assert done.complete_stack is True


def test_later_agents_see_the_planners_task() -> None:
    reg = AgentRegistry.default(plugins=False)
    c = ctx()
    c.memory["current_task"] = "remembered task"
    assert "Task: remembered task" in reg.get("builder").prompt(c)[-1]["content"]
    c.outputs["planner"] = PlannerOutput(task="water daily")
    c.outputs["builder"] = BuilderOutput(title="Watering plan", content="x")
    assert "Task: water daily" in reg.get("builder").prompt(c)[-1]["content"]
    assert "Artifact: Watering plan" in reg.get("communicator").prompt(c)[-1]["content"]
    assert "grow tomatoes" in reg.get("planner").prompt(c)[-1]["content"]


# -- the registry ----------------------------------------------------------------------------

def test_the_default_team_is_the_four_built_ins_in_order() -> None:
    reg = AgentRegistry.default(plugins=False)
    assert DEFAULT_TEAM == ("planner", "builder", "communicator", "reviewer")
    assert [a.name for a in reg.team(None)] == list(DEFAULT_TEAM)
    assert reg.names() == sorted(DEFAULT_TEAM)
    assert reg.get("planner") is reg.get("planner")  # one instance per process


def test_an_unknown_agent_is_named_with_the_known_ones() -> None:
    reg = AgentRegistry.default(plugins=False)
    with pytest.raises(UnknownAgent) as err:
        reg.get("nope")
    assert str(err.value) == "no agent named 'nope' (known: builder, communicator, planner, " \
                             "reviewer)"
    with pytest.raises(UnknownAgent, match=r"unknown agent\(s\) x, y \(known: builder, "):
        reg.check(["planner", "x", "y"])
    with pytest.raises(UnknownAgent, match="'ghost'"):
        reg.team(["planner", "ghost"])


def test_creating_a_stack_with_an_unknown_agent_is_refused(db: Database,
                                                          clock: FakeClock) -> None:
    reg = AgentRegistry.default(plugins=False)
    with pytest.raises(Invalid, match=r"ghost.*known: builder, communicator, planner"), \
            db.write() as conn:
        stacks.create(conn, StackCreate(name="a", team=["planner", "ghost"]), beat_interval=10,
                      now=clock.now(), agents=stacks.Agents(reg.names()))
    assert count_rows(db, t.stacks) == 0


def test_agents_are_added_by_import_path() -> None:
    settings = make_settings("sqlite://", agents="tests.test_agents:EchoAgent, "
                                                 "tests.test_agents:ShoutAgent")
    assert settings.agent_paths == ["tests.test_agents:EchoAgent", "tests.test_agents:ShoutAgent"]
    reg = AgentRegistry.default(settings.agent_paths, plugins=False)
    assert reg.names() == sorted([*DEFAULT_TEAM, "echo", "shout"])
    assert isinstance(reg.get("echo"), EchoAgent)
    reg.check(["echo", "planner"])


@pytest.mark.parametrize(("path", "match"), [
    ("tests.test_agents", "package.module:Class"),
    (":EchoAgent", "package.module:Class"),
    ("tests.test_agents:NoSuchThing", "has no 'NoSuchThing'"),
    ("tests.no_such_module:X", "cannot import 'tests.no_such_module'.*current directory"),
    ("tests.test_agents:DEFAULT_TEAM", "not a class or factory"),
])
def test_a_bad_import_path_says_what_is_wrong(path: str, match: str) -> None:
    with pytest.raises(AgentLoadError, match=match):
        load_object(path)


def test_an_object_that_is_not_an_agent_is_refused() -> None:
    reg = AgentRegistry()
    reg.register(NotAnAgent)
    with pytest.raises(TypeError, match="'broken' does not implement the Agent protocol"):
        reg.get("broken")
    with pytest.raises(ValueError, match="has no name"):
        reg.register(lambda: EchoAgent())


def test_agents_are_added_by_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    def fake_entry_points(*, group: str) -> list[EntryPoint]:
        asked.append(group)
        return [EntryPoint(name="shout", value="tests.test_agents:ShoutAgent", group=group)]

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    reg = AgentRegistry.default()
    assert asked == [ENTRY_POINT_GROUP] == ["tickwork.agents"]
    assert isinstance(reg.get("shout"), ShoutAgent)
    assert AgentRegistry.default(plugins=False).names() == sorted(DEFAULT_TEAM)


def test_a_stacks_own_team_is_what_the_runner_runs(db_url: str, clock: FakeClock) -> None:
    llm = ScriptedLLM(clock)
    overrides: dict[str, Any] = {"agents": "tests.test_agents:EchoAgent"}
    with build_runtime(db_url, clock, llm=llm, **overrides) as rt:
        assert "echo" in rt.registry.names()
        with rt.db.write() as conn:
            sid = stacks.create(conn, StackCreate(name="custom", goal="be heard",
                                                  team=["echo", "reviewer"]),
                                beat_interval=10, now=clock.now(),
                                agents=stacks.Agents(rt.registry.names()))["id"]
        asyncio.run(run_queued(rt))
        (tick,) = ticks_of(rt.db, sid)
        assert tick["status"] == "succeeded"
        assert [s["agent"] for s in steps_of(rt.db, tick["id"])] == ["echo", "reviewer"]
        assert [r.schema_name for r in llm.calls] == ["EchoOutput", "ReviewerOutput"]
        with rt.db.read() as conn:
            (body,) = conn.execute(t.messages.select().with_only_columns(t.messages.c.body)
                                   ).scalars().all()
        output = orjson.loads(steps_of(rt.db, tick["id"])[0]["output"])
        assert body == f"echo: {output['text']}"


# -- where agent code runs -------------------------------------------------------------------

def test_an_agent_that_does_not_say_it_is_quick_runs_in_a_worker_thread() -> None:
    spy = ThreadSpy()
    llm = SimulatedLLM(FakeClock(), Latency(0, 0))

    async def main() -> threading.Thread:
        result = await run_step(spy, ctx(), llm, "1:1:spy")
        assert result.status == "succeeded", result.error
        return threading.current_thread()

    loop_thread = asyncio.run(main())
    assert len(spy.threads) == 2
    assert all(th is not loop_thread for th in spy.threads)


def test_built_in_agents_run_on_the_event_loop() -> None:
    seen: list[threading.Thread] = []

    class QuickSpy(ThreadSpy):
        blocking = False

    spy = QuickSpy()
    spy.threads = seen
    llm = SimulatedLLM(FakeClock(), Latency(0, 0))

    async def main() -> threading.Thread:
        await run_step(spy, ctx(), llm, "1:1:spy")
        return threading.current_thread()

    assert seen == [asyncio.run(main())] * 2
    assert AgentRegistry.default(plugins=False).get("planner").blocking is False  # type: ignore[attr-defined]
