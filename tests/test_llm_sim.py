"""The simulated model: deterministic for a seed, valid answers for every built-in agent and
any other output model, labelled as simulated, latency drawn from its distribution and spent
on the injected clock."""

from __future__ import annotations

import asyncio
import random
import statistics
from typing import Literal

import pytest
from pydantic import BaseModel, Field, ValidationError

from agents.base import StackView, TickContext
from agents.llm.base import LLMRequest, LLMResponse
from agents.llm.latency import Latency
from agents.llm.sim import SimulatedLLM
from agents.registry import DEFAULT_TEAM, AgentRegistry
from agents.team import run_step
from schema.clock import FakeClock
from schema.outputs import ReviewerOutput
from tests.conftest import make_settings

ZERO = Latency(0, 0)


def ctx(goal: str = "publish a weekly newsletter about tide pools") -> TickContext:
    return TickContext(stack=StackView(1, "tides", goal), tick_id=1, slot=180_000_000,
                       attempt=1)


def request_for(agent_name: str, seed: str) -> LLMRequest:
    agent = AgentRegistry.default(plugins=False).get(agent_name)
    return LLMRequest(messages=agent.prompt(ctx()), schema_name=agent.output_type.__name__,
                      output_schema=agent.output_type.model_json_schema(), seed=seed)


def answer(llm: SimulatedLLM, request: LLMRequest) -> str:
    return asyncio.run(llm.complete(request)).text


def test_the_same_seed_gives_the_same_answers() -> None:
    a, b = SimulatedLLM(FakeClock(), ZERO, seed=7), SimulatedLLM(FakeClock(), ZERO, seed=7)
    for agent in DEFAULT_TEAM:
        for key in ("1:100:x", "2:100:x", "1:101:x"):
            request = request_for(agent, key)
            assert answer(a, request) == answer(b, request)
            assert answer(a, request) == answer(a, request)  # asking again: the same


def test_seeds_change_the_answers() -> None:
    a, b = SimulatedLLM(FakeClock(), ZERO, seed=1), SimulatedLLM(FakeClock(), ZERO, seed=2)
    keys = [f"1:{slot}:planner" for slot in range(20)]
    assert [answer(a, request_for("planner", k)) for k in keys] != [
        answer(b, request_for("planner", k)) for k in keys]
    assert len({answer(a, request_for("planner", k)) for k in keys}) > 1


@pytest.mark.parametrize("agent_name", DEFAULT_TEAM)
def test_every_built_in_agent_gets_a_valid_answer(agent_name: str) -> None:
    agent = AgentRegistry.default(plugins=False).get(agent_name)
    llm = SimulatedLLM(FakeClock(), ZERO, seed=3)
    for slot in range(40):
        result = asyncio.run(run_step(agent, ctx(), llm, f"1:{slot}:{agent_name}"))
        assert result.status == "succeeded", result.error
        assert isinstance(result.output, agent.output_type)
        assert len(result.attempts) == 1  # valid the first time: no repair
        text = answer(llm, request_for(agent_name, f"1:{slot}:{agent_name}"))
        agent.output_type.model_validate_json(text)
        assert "[simulated]" in text


def test_the_simulated_reviewer_never_declares_a_goal_met() -> None:
    llm = SimulatedLLM(FakeClock(), ZERO)
    reviewer = AgentRegistry.default(plugins=False).get("reviewer")
    for slot in range(30):
        text = answer(llm, request_for("reviewer", f"1:{slot}:reviewer"))
        review = reviewer.output_type.model_validate_json(text)
        assert isinstance(review, ReviewerOutput) and review.goal_met is False


class Inner(BaseModel):
    label: str = Field(min_length=3, max_length=40)


class Custom(BaseModel):
    level: Literal["low", "high"]
    count: int = Field(ge=5, le=7)
    ratio: float = Field(ge=0.5, le=0.75)
    tags: list[str] = Field(min_length=2)
    inner: Inner
    note: str | None = None
    flag: bool


def test_any_output_model_gets_an_answer_that_validates() -> None:
    llm = SimulatedLLM(FakeClock(), ZERO)
    for i in range(40):
        text = answer(llm, LLMRequest(messages=[{"role": "user", "content": "go"}],
                                      schema_name="Custom",
                                      output_schema=Custom.model_json_schema(), seed=f"s{i}"))
        Custom.model_validate_json(text)


def test_the_model_says_it_is_simulated() -> None:
    llm = SimulatedLLM(FakeClock(), Latency(150, 400))
    assert llm.simulated is True
    assert "simulated" in llm.label and "150,400" in llm.label
    response = asyncio.run(_complete_on(FakeClock(), Latency(0, 0), "1:1:planner"))
    assert (response.provider, response.model) == ("sim", "simulated")
    (attempt,) = response.attempts
    assert (attempt.provider, attempt.model, attempt.status) == ("sim", "simulated", "ok")
    assert attempt.input_tokens > 0 and attempt.output_tokens > 0


async def _complete_on(clock: FakeClock, latency: Latency, seed: str) -> LLMResponse:
    return await SimulatedLLM(clock, latency).complete(request_for("planner", seed))


def test_latency_is_spent_on_the_injected_clock() -> None:
    clock = FakeClock(1_800_000_000.0)
    latency = Latency(1500, 3000)

    async def main() -> float:
        call = asyncio.create_task(_complete_on(clock, latency, "1:1:planner"))
        while clock.sleepers == 0:
            await asyncio.sleep(0)
        assert not call.done()  # waiting on the fake clock, not the wall clock
        clock.advance(60)
        response = await call
        return response.attempts[0].latency_ms

    latency_ms = asyncio.run(main())
    assert latency_ms == 60_000  # the whole advance: the clock moved once, past the deadline
    assert clock.sleepers == 0


# -- latency distributions -------------------------------------------------------------------

@pytest.mark.parametrize(("text", "median", "p99"), [
    ("1500", 1500, 1500), ("1500,3000", 1500, 3000), (" 150 , 400 ", 150, 400), ("0", 0, 0),
    ("2.5,10", 2.5, 10)])
def test_latency_parse_accepts_median_and_optional_p99(text: str, median: float,
                                                       p99: float) -> None:
    parsed = Latency.parse(text)
    assert (parsed.median_ms, parsed.p99_ms) == (median, p99)
    assert Latency.parse(str(parsed)) == parsed


@pytest.mark.parametrize("text", ["", "fast", "1500,3000,4000", "3000,1500", "-5", "1500;3000",
                                  "1,abc"])
def test_latency_parse_rejects_bad_strings(text: str) -> None:
    with pytest.raises(ValueError, match="latency"):
        Latency.parse(text)


def test_settings_reject_a_bad_sim_latency() -> None:
    with pytest.raises(ValidationError, match="latency"):
        make_settings("sqlite://", sim_latency_ms="3000,1500")
    assert make_settings("sqlite://", sim_latency_ms="1500,3000").sim_latency == Latency(
        1500, 3000)


def test_latency_samples_follow_the_configured_median_and_p99() -> None:
    latency = Latency(1500, 3000)
    rng = random.Random(12345)
    draws = sorted(latency.sample_s(rng) for _ in range(20_000))
    assert statistics.median(draws) == pytest.approx(1.5, rel=0.03)
    assert draws[int(len(draws) * 0.99)] == pytest.approx(3.0, rel=0.08)
    assert min(draws) > 0


def test_fixed_and_zero_latencies_are_exact() -> None:
    rng = random.Random(1)
    assert {Latency(200, 200).sample_s(rng) for _ in range(10)} == {0.2}
    assert {Latency(0, 0).sample_s(rng) for _ in range(10)} == {0.0}
