"""The chain load test measures the chain: calibrating the SDK's cost before a step spends
none of the limits the step runs under (Groq's 30 requests a minute)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agents.llm.base import LLMRequest
from agents.llm.simserver import create_sim_app
from load_tests.engine import _sdk_call_cpu_ms
from orchestrator.runtime import Runtime
from tests.conftest import make_settings
from tests.sim_helpers import sdk_env, serving


def test_calibrating_spends_none_of_the_steps_limits(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(create_sim_app()) as (base, _):
            rt = Runtime.build(make_settings(f"sqlite:///{tmp_path / 't.db'}"), env=sdk_env(base))
            try:
                cost = await _sdk_call_cpu_ms(rt, base, calls=40)
                assert set(cost) == {"groq", "openai"} and all(ms > 0 for ms in cost.values())
                request = LLMRequest(messages=[{"role": "user", "content": "Task: go"}],
                                     schema_name="Plan", seed="after")
                served = [(await rt.llm.complete(request)).attempts[-1].provider
                          for _ in range(25)]  # within Groq's 30 a minute
                assert served == ["groq"] * 25
            finally:
                assert rt.chain is not None
                await rt.chain.aclose()
                rt.close()

    asyncio.run(scenario())
