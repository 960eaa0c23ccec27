"""The chain with the real `groq` and `openai` SDKs against the simulated API
(`agents.llm.simserver`), served by uvicorn on a free loopback port in the test's own event
loop. The chain and the simulator share one FakeClock, so retry waits, per-attempt timeouts,
breaker cool-downs and rate windows move only when the test moves the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agents.base import StackView, TickContext
from agents.llm.base import (
    LLMError,
)
from agents.llm.chain import DEFAULT_CHAIN, Chain, ChainOptions, build_chain
from agents.llm.fallback import FallbackLLM
from agents.llm.groq_adapter import GroqLLM
from agents.llm.providers import GroqProvider
from agents.llm.retry import RetryingLLM
from agents.llm.sim import count_tokens
from agents.llm.simknobs import SimConfig
from agents.llm.simserver import SimServer, create_sim_app
from agents.registry import AgentRegistry
from agents.team import run_step
from schema.outputs import PlannerOutput
from tests.conftest import wait_for
from tests.llm_fakes import SteppingClock, request
from tests.sim_helpers import sdk_env, serving

QUICK = ChainOptions(max_attempts=2, backoff_base_s=0.0, attempt_timeout_s=30)


# -- the simulated API on loopback --------------------------------------------------------


@contextlib.asynccontextmanager
async def chain_on_sim(clock: SteppingClock, config: SimConfig, options: ChainOptions = QUICK
                       ) -> AsyncIterator[tuple[Chain, SimServer, str]]:
    """The default chain (groq → openai) pointed at a simulator on the same fake clock."""
    app = create_sim_app(config, clock=clock, seed=3)
    async with serving(app) as (base, _):
        chain = build_chain(DEFAULT_CHAIN, sdk_env(base), clock, options, rng=random.Random(0))
        try:
            yield chain, app.state.sim, base
        finally:
            await chain.aclose()


def sim_config(**groq_knobs: Any) -> SimConfig:
    return SimConfig.model_validate({"latency_ms": "0", "groq": groq_knobs})


def knobs(sim: SimServer, **patch: Any) -> None:
    sim.config = sim.config.updated(patch)


def stats(sim: SimServer, provider: str) -> dict[str, int]:
    return dict(sim.stats_json()[provider])


async def chain_wait(clock: SteppingClock, longest: float) -> float:
    """Wait until the chain waits on the clock for at most `longest` s (a retry's wait, not an
    attempt's timeout), and return how long that wait is."""
    def waiting() -> bool:
        return any(d - clock.now() <= longest for d in clock.pending)
    await wait_for(waiting, what="the chain to wait on the clock")
    return min(clock.pending) - clock.now()


def trail(attempts: list[Any]) -> list[tuple[str, str]]:
    return [(a.provider, a.status) for a in attempts]


def run(main: Callable[[], Any]) -> None:
    asyncio.run(main())


def test_a_429_is_waited_out_as_its_retry_after_says_then_groq_answers() -> None:
    clock = SteppingClock()

    async def main() -> None:
        config = sim_config(rate_limit_rate=1, retry_after_s=3)
        options = ChainOptions(backoff_base_s=0.1, backoff_cap_s=0.2, attempt_timeout_s=30)
        async with chain_on_sim(clock, config, options) as (chain, sim, _):
            call = asyncio.ensure_future(chain.llm.complete(request()))
            wait = await chain_wait(clock, longest=10)
            assert wait >= 3  # at least the retry-after
            knobs(sim, groq={"rate_limit_rate": 0})
            clock.advance(wait)
            response = await call
            assert trail(response.attempts) == [("groq", "rate_limited"), ("groq", "ok")]
            assert response.attempts[0].retry_after_s == 3
            assert response.attempts[1].started_at - response.attempts[0].started_at >= 3
            assert stats(sim, "groq")["rate_limited"] == 1
            assert stats(sim, "openai")["requests"] == 0

    run(main)


def test_server_errors_fall_back_to_openai() -> None:
    clock = SteppingClock()

    async def main() -> None:
        async with chain_on_sim(clock, sim_config(error_rate=1)) as (chain, sim, _):
            response = await chain.llm.complete(request())
            assert (response.provider, response.model) == ("openai", "gpt-4o-mini")
            assert trail(response.attempts) == [("groq", "server_error")] * 2 + [
                ("openai", "ok")]
            assert "HTTP 500" in (response.attempts[0].error or "")
            assert stats(sim, "groq")["server_error"] == 2

    run(main)


def test_a_hung_groq_times_out_on_the_clock_and_openai_answers() -> None:
    clock = SteppingClock()

    async def main() -> None:
        options = ChainOptions(max_attempts=1, attempt_timeout_s=5)
        async with chain_on_sim(clock, sim_config(hang_rate=1), options) as (chain, sim, _):
            call = asyncio.ensure_future(chain.llm.complete(request()))
            await wait_for(lambda: stats(sim, "groq")["hung"] == 1, what="groq to hang")
            clock.advance(5)
            response = await call
            assert trail(response.attempts) == [("groq", "timeout"), ("openai", "ok")]
            assert response.attempts[0].latency_ms == pytest.approx(5000)

    run(main)


def test_with_both_providers_down_one_error_carries_every_attempt() -> None:
    clock = SteppingClock()

    async def main() -> None:
        config = SimConfig.model_validate({"latency_ms": "0", "down": True})
        async with chain_on_sim(clock, config) as (chain, sim, _):
            beats = 0

            async def heartbeat() -> None:
                nonlocal beats
                while True:
                    beats += 1
                    await asyncio.sleep(0)

            other = asyncio.ensure_future(heartbeat())
            with pytest.raises(LLMError) as caught:
                await chain.llm.complete(request())
            assert trail(caught.value.attempts) == [("groq", "server_error")] * 2 + [
                ("openai", "server_error")] * 2
            assert all("HTTP 503" in (a.error or "") for a in caught.value.attempts)
            # The failure was the step's alone: the loop and everything on it carry on.
            seen = beats
            await wait_for(lambda: beats > seen, what="the loop to keep running")
            other.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await other
            knobs(sim, down=False)
            assert (await chain.llm.complete(request())).provider == "groq"

    run(main)


def test_the_breaker_skips_a_down_groq_and_closes_once_it_is_back() -> None:
    clock = SteppingClock()

    async def main() -> None:
        options = ChainOptions(max_attempts=1, breaker_threshold=2, breaker_cooldown_s=30)
        async with chain_on_sim(clock, sim_config(down=True), options) as (chain, sim, _):
            groq_entry = chain.providers[0]
            for _ in range(2):
                response = await chain.llm.complete(request())
                assert trail(response.attempts) == [("groq", "server_error"), ("openai", "ok")]
            assert groq_entry.breaker.state == "open"
            knobs(sim, groq={"down": False})  # back, but the breaker does not know yet
            for _ in range(3):
                response = await chain.llm.complete(request())
                assert trail(response.attempts) == [("groq", "skipped_open_breaker"),
                                                    ("openai", "ok")]
                assert response.attempts[0].latency_ms == 0
            assert stats(sim, "groq")["requests"] == 2  # no skipped call reached groq
            clock.advance(30)
            assert groq_entry.breaker.state == "half_open"
            response = await chain.llm.complete(request())
            assert trail(response.attempts) == [("groq", "ok")]
            assert groq_entry.breaker.state == "closed"
            assert stats(sim, "groq")["requests"] == 3

    run(main)


async def burst(llm: Any, n: int) -> list[Any]:
    return list(await asyncio.gather(*(llm.complete(request("hi")) for _ in range(n))))


def test_the_limiter_keeps_groq_under_its_enforced_rpm() -> None:
    clock = SteppingClock()

    async def main() -> None:
        async with chain_on_sim(clock, sim_config(rpm=30)) as (chain, sim, base):
            responses = await burst(chain.llm, 45)
            served = [r.provider for r in responses]
            assert served.count("groq") == 30 and served.count("openai") == 15
            assert stats(sim, "groq")["rate_limited"] == 0
            skipped = [r for r in responses if r.provider == "openai"]
            assert all(trail(r.attempts) == [("groq", "skipped_rate_limit"), ("openai", "ok")]
                       for r in skipped)
            assert chain.providers[0].limiter.headroom().requests_left == 0
            clock.advance(60)
            assert (await chain.llm.complete(request("hi"))).provider == "groq"

            # The same burst without a limiter collects a 429 for every request over the limit.
            sim.reset()
            groq_api = GroqProvider.from_env(sdk_env(base))
            assert groq_api is not None
            try:
                bare = FallbackLLM(RetryingLLM(GroqLLM(groq_api.client, "llama-3.3-70b-versatile",
                                                       clock), QUICK.retry_policy, clock),
                                   chain.providers[1].llm)
                responses = await burst(bare, 45)
                assert stats(sim, "groq")["rate_limited"] == 15
                assert sum(r.provider == "openai" for r in responses) == 15
            finally:
                await groq_api.aclose()

    run(main)


def test_the_providers_headers_alone_keep_the_limiter_from_a_429() -> None:
    clock = SteppingClock()

    async def main() -> None:
        options = ChainOptions(groq_rpm=None, groq_tpm=None)  # nothing configured
        async with chain_on_sim(clock, sim_config(rpm=30), options) as (chain, sim, _):
            served = [(await chain.llm.complete(request("hi"))).provider for _ in range(35)]
            assert served == ["groq"] * 30 + ["openai"] * 5
            assert stats(sim, "groq")["rate_limited"] == 0
            room = chain.providers[0].limiter.headroom()
            assert room.requests_left == 0 and room.requests_reset_s == pytest.approx(60)

    run(main)


def test_a_step_gets_tokens_and_cost_for_its_attempt() -> None:
    clock = SteppingClock()
    agent = AgentRegistry.default(plugins=False).get("planner")
    ctx = TickContext(stack=StackView(1, "tides", "publish a newsletter about tide pools"),
                      tick_id=1, slot=180_000_000, attempt=1)

    async def main() -> None:
        options = ChainOptions(prices={"llama-3.3-70b-versatile": (1.0, 2.0)})
        async with chain_on_sim(clock, sim_config(), options) as (chain, _, _):
            result = await run_step(agent, ctx, chain.llm, "1:180000000:planner")
            assert result.status == "succeeded", result.error
            assert isinstance(result.output, PlannerOutput)
            (attempt,) = result.attempts
            assert (attempt.provider, attempt.model, attempt.status) == (
                "groq", "llama-3.3-70b-versatile", "ok")
            prompt = "".join(m["content"] for m in result.prompt)
            assert attempt.input_tokens == count_tokens(prompt)  # as the simulator counts
            assert attempt.output_tokens > 0
            assert attempt.cost_usd == pytest.approx(
                (attempt.input_tokens * 1.0 + attempt.output_tokens * 2.0) / 1e6)

    run(main)
