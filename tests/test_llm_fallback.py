"""Fallback: the members in order, the first answer wins and carries every attempt before it,
and when all fail one LLMError carries them all. It is itself an LLM with a readable label."""

from __future__ import annotations

import asyncio
import random

import pytest

from agents.llm.base import LLMError
from agents.llm.breaker import BreakerLLM, CircuitBreaker
from agents.llm.fallback import FallbackLLM
from agents.llm.latency import Latency
from agents.llm.retry import RetryingLLM, RetryPolicy
from agents.llm.sim import SimulatedLLM
from tests.llm_fakes import ScriptedModel, SteppingClock, request, run_on


def test_the_first_member_that_answers_serves_with_every_attempt_before_it() -> None:
    clock = SteppingClock()
    groq = ScriptedModel(clock, ["500"], provider="groq", model="llama")
    openai = ScriptedModel(clock, provider="openai", model="gpt")
    never = ScriptedModel(clock, provider="other", model="x")
    response = asyncio.run(FallbackLLM(groq, openai, never).complete(request()))
    assert (response.provider, response.model) == ("openai", "gpt")
    assert [(a.provider, a.status) for a in response.attempts] == [
        ("groq", "server_error"), ("openai", "ok")]
    assert never.calls == 0


def test_the_primary_serves_when_it_can() -> None:
    clock = SteppingClock()
    groq, openai = ScriptedModel(clock), ScriptedModel(clock, provider="openai")
    response = asyncio.run(FallbackLLM(groq, openai).complete(request()))
    assert response.provider == "groq"
    assert openai.calls == 0


@pytest.mark.parametrize("step", ["400", "401", "429:60", "timeout", "conn"])
def test_any_provider_failure_passes_to_the_next(step: str) -> None:
    clock = SteppingClock()
    groq = ScriptedModel(clock, [step])
    openai = ScriptedModel(clock, provider="openai")
    response = asyncio.run(FallbackLLM(groq, openai).complete(request()))
    assert response.provider == "openai"


def test_when_every_member_fails_one_error_carries_every_attempt() -> None:
    clock = SteppingClock()
    policy = RetryPolicy(max_attempts=2, backoff_base_s=0.1)
    groq = RetryingLLM(ScriptedModel(clock, ["500", "timeout"], provider="groq"), policy, clock,
                       random.Random(1))
    openai = RetryingLLM(ScriptedModel(clock, ["429:1", "conn"], provider="openai"), policy,
                         clock, random.Random(2))
    with pytest.raises(LLMError) as caught:
        asyncio.run(run_on(clock, FallbackLLM(groq, openai).complete(request())))
    assert [(a.provider, a.status) for a in caught.value.attempts] == [
        ("groq", "server_error"), ("groq", "timeout"),
        ("openai", "rate_limited"), ("openai", "connection_error")]
    message = str(caught.value)
    assert "groq:m" in message and "openai:m" in message


def test_a_skipped_provider_is_in_the_trace_and_the_next_one_serves() -> None:
    clock = SteppingClock()
    breaker = CircuitBreaker(1, 30, clock)
    groq = BreakerLLM(ScriptedModel(clock, ["500"]), breaker, clock)
    openai = ScriptedModel(clock, provider="openai")
    chain = FallbackLLM(groq, openai)
    asyncio.run(chain.complete(request()))
    response = asyncio.run(chain.complete(request()))
    assert [(a.provider, a.status) for a in response.attempts] == [
        ("groq", "skipped_open_breaker"), ("openai", "ok")]


def test_a_nested_chain_that_fails_passes_its_attempts_on() -> None:
    clock = SteppingClock()
    inner = FallbackLLM(ScriptedModel(clock, ["500"]), ScriptedModel(clock, ["500"],
                                                                      provider="openai"))
    outer = FallbackLLM(inner, ScriptedModel(clock, provider="backup"))
    response = asyncio.run(outer.complete(request()))
    assert [a.provider for a in response.attempts] == ["groq", "openai", "backup"]


def test_label_and_simulated() -> None:
    clock = SteppingClock()
    chain = FallbackLLM(ScriptedModel(clock, model="llama-3.3-70b-versatile"),
                        ScriptedModel(clock, provider="openai", model="gpt-4o-mini"))
    assert chain.label == "groq:llama-3.3-70b-versatile → openai:gpt-4o-mini"
    assert chain.simulated is False
    sim = SimulatedLLM(clock, Latency(0, 0))
    assert FallbackLLM(sim, sim).simulated is True
    assert FallbackLLM(ScriptedModel(clock), sim).simulated is False
    assert "simulated" in FallbackLLM(sim).label
