"""The chain factory and what it is made of: TICKWORK_LLM_CHAIN parsing, providers built from
the keys that are set (and only those), the simulated model when none is, clients built with
the SDKs' own retries off and closed on shutdown, per-provider limits, and the price table."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest

from agents.llm.breaker import BreakerLLM
from agents.llm.chain import (
    DEFAULT_CHAIN,
    NO_KEY_LABEL,
    Chain,
    ChainOptions,
    build_chain,
    parse_spec,
)
from agents.llm.groq_adapter import GroqLLM
from agents.llm.latency import Latency
from agents.llm.openai_adapter import OpenAILLM
from agents.llm.pricing import Price, PriceTable
from agents.llm.providers import GroqProvider, OpenAIProvider
from agents.llm.ratelimit import RateLimitedLLM
from agents.llm.retry import RetryingLLM
from agents.llm.sim import SimulatedLLM
from schema.clock import FakeClock
from tests.llm_fakes import request

BOTH_KEYS = {"GROQ_API_KEY": "gsk-test", "OPENAI_API_KEY": "sk-test"}


@pytest.fixture
def chains() -> Iterator[list[Chain]]:
    """Chains built by a test, closed after it."""
    built: list[Chain] = []
    yield built
    for chain in built:
        asyncio.run(chain.aclose())


def make(chains: list[Chain], spec: str = DEFAULT_CHAIN, env: dict[str, str] | None = None,
         options: ChainOptions | None = None, **kw: object) -> Chain:
    chain = build_chain(spec, BOTH_KEYS if env is None else env, FakeClock(),
                        options or ChainOptions(), **kw)  # type: ignore[arg-type]
    chains.append(chain)
    return chain


def test_the_default_chain_is_groq_then_openai() -> None:
    assert DEFAULT_CHAIN == "groq:llama-3.3-70b-versatile,openai:gpt-4o-mini"
    assert parse_spec(DEFAULT_CHAIN) == [("groq", "llama-3.3-70b-versatile"),
                                         ("openai", "gpt-4o-mini")]


def test_spec_entries_are_trimmed_and_a_bare_provider_means_its_default_model() -> None:
    assert parse_spec(" openai:gpt-4o , groq ") == [("openai", "gpt-4o"),
                                                   ("groq", "llama-3.3-70b-versatile")]
    assert parse_spec("groq:llama-3.1-8b-instant,groq:llama-3.3-70b-versatile") == [
        ("groq", "llama-3.1-8b-instant"), ("groq", "llama-3.3-70b-versatile")]


@pytest.mark.parametrize(("spec", "message"), [
    ("foo:bar", "unknown provider 'foo' in TICKWORK_LLM_CHAIN; known: groq, openai"),
    ("groq:llama-3.3-70b-versatile,mistral:large",
     "unknown provider 'mistral' in TICKWORK_LLM_CHAIN; known: groq, openai"),
    ("groq:", "no model after 'groq:' in TICKWORK_LLM_CHAIN"),
    (" , ", "TICKWORK_LLM_CHAIN lists no provider"),
    ("openai:gpt-4o,openai:gpt-4o", "openai:gpt-4o is listed twice in TICKWORK_LLM_CHAIN"),
])
def test_a_bad_spec_says_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_spec(spec)
    assert message in str(caught.value)
    with pytest.raises(ValueError):
        build_chain(spec, BOTH_KEYS, FakeClock(), ChainOptions())


def test_with_both_keys_the_chain_falls_back_from_groq_to_openai(chains: list[Chain]) -> None:
    chain = make(chains)
    assert chain.label == "groq:llama-3.3-70b-versatile → openai:gpt-4o-mini"
    assert chain.llm.label == chain.label
    assert not chain.simulated
    assert [(p.name, p.model) for p in chain.providers] == [
        ("groq", "llama-3.3-70b-versatile"), ("openai", "gpt-4o-mini")]
    assert chain.notes == []


def test_each_provider_is_breaker_then_retry_then_limiter_then_adapter(
        chains: list[Chain]) -> None:
    chain = make(chains)
    for entry, adapter in zip(chain.providers, (GroqLLM, OpenAILLM), strict=True):
        breaker = entry.llm
        assert isinstance(breaker, BreakerLLM) and breaker.breaker is entry.breaker
        retry = breaker.inner
        assert isinstance(retry, RetryingLLM)
        limited = retry.inner
        assert isinstance(limited, RateLimitedLLM) and limited.limiter is entry.limiter
        assert isinstance(limited.inner, adapter)


def test_a_provider_without_a_key_is_left_out_and_the_notes_say_so(
        chains: list[Chain]) -> None:
    chain = make(chains, env={"OPENAI_API_KEY": "sk-test", "GROQ_API_KEY": "  "})
    assert chain.label == "openai:gpt-4o-mini"
    assert [p.name for p in chain.providers] == ["openai"]
    assert chain.notes == ["groq left out: GROQ_API_KEY is not set"]

    chain = make(chains, env={"GROQ_API_KEY": "gsk-test"})
    assert chain.label == "groq:llama-3.3-70b-versatile"
    assert chain.notes == ["openai left out: OPENAI_API_KEY is not set"]


def test_with_no_key_at_all_the_simulated_model_serves(chains: list[Chain]) -> None:
    clock = FakeClock()
    sim = SimulatedLLM(clock, Latency(0, 0))
    chain = build_chain(DEFAULT_CHAIN, {}, clock, ChainOptions(), fallback=sim)
    chains.append(chain)
    assert chain.llm is sim
    assert chain.label == NO_KEY_LABEL == "simulated (no provider key set)"
    assert chain.simulated
    assert chain.providers == []
    assert len(chain.notes) == 2
    response = asyncio.run(chain.llm.complete(request()))
    assert response.provider == "sim"


def test_with_no_key_and_no_fallback_the_factory_refuses() -> None:
    with pytest.raises(ValueError, match="no provider key is set"):
        build_chain(DEFAULT_CHAIN, {}, FakeClock(), ChainOptions())


def test_limits_and_breakers_follow_the_options(chains: list[Chain]) -> None:
    groq, openai = make(chains).providers
    assert (groq.limiter.headroom().rpm, groq.limiter.headroom().tpm) == (30, 12_000)
    assert (openai.limiter.headroom().rpm, openai.limiter.headroom().tpm) == (None, None)
    assert (groq.breaker.threshold, groq.breaker.cooldown_s) == (5, 30.0)

    options = ChainOptions(groq_rpm=None, openai_rpm=500, openai_tpm=200_000,
                           breaker_threshold=2, breaker_cooldown_s=5)
    groq, openai = make(chains, options=options).providers
    assert groq.limiter.headroom().rpm is None
    assert (openai.limiter.headroom().rpm, openai.limiter.headroom().tpm) == (500, 200_000)
    assert (openai.breaker.threshold, openai.breaker.cooldown_s) == (2, 5)


def test_options_are_a_frozen_object_with_the_documented_defaults() -> None:
    options = ChainOptions()
    assert (options.attempt_timeout_s, options.max_attempts, options.backoff_base_s,
            options.backoff_cap_s, options.max_wait_s, options.breaker_threshold,
            options.breaker_cooldown_s, options.groq_rpm, options.groq_tpm,
            options.openai_rpm, options.openai_tpm, options.prices) == (
        30, 3, 0.5, 8, 10, 5, 30, 30, 12_000, None, None, None)
    with pytest.raises(AttributeError):
        options.max_attempts = 9  # type: ignore[misc]


def test_clients_use_the_given_variables_with_the_sdks_retries_off(
        chains: list[Chain], monkeypatch: pytest.MonkeyPatch) -> None:
    # The process environment says otherwise: only the mapping handed in counts.
    monkeypatch.setenv("GROQ_BASE_URL", "http://wrong.invalid")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://wrong.invalid/v1")
    env = {**BOTH_KEYS, "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    chain = make(chains, env=env, options=ChainOptions(attempt_timeout_s=12))
    groq, openai = chain.clients
    assert isinstance(groq, GroqProvider) and isinstance(openai, OpenAIProvider)
    assert groq.base_url == "https://api.groq.com"
    assert openai.base_url == "http://127.0.0.1:9/v1"
    assert groq.client.max_retries == 0 and openai.client.max_retries == 0
    assert groq.client.api_key == "gsk-test" and openai.client.api_key == "sk-test"
    assert groq.client.timeout == 12 and openai.client.timeout == 12
    assert "gsk-test" not in repr(groq) and "sk-test" not in repr(openai)


def test_closing_the_chain_closes_every_client(chains: list[Chain]) -> None:
    chain = make(chains)
    clients = [p.client for p in chain.clients]
    assert not any(c.is_closed() for c in clients)
    asyncio.run(chain.aclose())
    assert all(c.is_closed() for c in clients)
    asyncio.run(chain.aclose())  # twice is harmless


def test_a_provider_is_not_configured_without_its_key() -> None:
    assert GroqProvider.from_env({"GROQ_BASE_URL": "http://127.0.0.1:1"}) is None
    assert OpenAIProvider.from_env({"OPENAI_API_KEY": ""}) is None


def test_prices_per_million_tokens_with_overrides() -> None:
    table = PriceTable()
    assert table.cost("llama-3.3-70b-versatile", 1_000_000, 1_000_000) == pytest.approx(1.38)
    assert table.cost("gpt-4o-mini", 2000, 500) == pytest.approx(0.0003 + 0.0003)
    assert table.cost("gpt-4o", 1000, 1000) == pytest.approx(0.0025 + 0.01)
    assert table.cost("llama-3.1-8b-instant", 1_000_000, 0) == pytest.approx(0.05)
    assert table.cost("simulated", 10_000, 10_000) == 0
    cheaper = PriceTable({"gpt-4o-mini": [0.1, 0.2], "my-model": Price(1, 2)})
    assert cheaper.cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.3)
    assert cheaper.cost("my-model", 1_000_000, 0) == pytest.approx(1)
    with pytest.raises(ValueError):
        PriceTable({"x": (1.0,)})
    with pytest.raises(ValueError):
        Price(-1, 0)


def test_an_unknown_model_costs_zero_and_says_so_once(
        chains: list[Chain], caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable()
    with caplog.at_level(logging.WARNING, logger="tickwork.llm"):
        assert table.cost("mystery-model", 1000, 1000) == 0
        assert table.cost("mystery-model", 1000, 1000) == 0
    assert [r.getMessage() for r in caplog.records].count(
        "no price for model 'mystery-model': its calls are recorded as costing 0") == 1
    chain = make(chains, spec="openai:mystery-model")
    assert "no price for openai:mystery-model; its calls are recorded as costing 0" in (
        chain.notes)
