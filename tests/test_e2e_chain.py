"""The chain through the whole engine: ticks run by the worker, the real groq and openai SDKs,
the simulator on loopback. With Groq down every step ends on OpenAI; once the breaker is open
later steps no longer try Groq; with Groq back, traffic returns to it after the cool-down."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from agents.llm.simknobs import SimConfig
from agents.llm.simserver import create_sim_app
from agents.registry import DEFAULT_TEAM
from orchestrator import stacks
from orchestrator.runtime import Runtime
from schema import read
from schema.clock import FakeClock
from schema.models import StackCreate
from tests.conftest import make_settings
from tests.engine_helpers import run_queued, ticks_of
from tests.sim_helpers import sdk_env, serving

COOLDOWN = 30.0


def _trail(rt: Runtime, tick_id: int) -> list[list[tuple[str, str]]]:
    with rt.db.read() as conn:
        detail = read.get_tick(conn, tick_id, DEFAULT_TEAM)
    assert detail is not None and detail.status == "succeeded", detail
    return [[(a.provider, a.status) for a in s.attempts] for s in detail.steps]


def test_groq_down_then_back_through_the_engine(db_url: str, clock: FakeClock) -> None:
    sim_app = create_sim_app(SimConfig.both(latency_ms="0").updated({"groq": {"down": True}}),
                             clock=clock)

    async def main() -> None:
        async with serving(sim_app) as (base, _server):
            settings = make_settings(db_url, breaker_threshold=2, breaker_cooldown_s=COOLDOWN,
                                     llm_max_attempts=1, llm_backoff_base_s=0)
            rt = Runtime.build(settings, clock, env=sdk_env(base))
            try:
                assert "groq:llama-3.3-70b-versatile → openai:gpt-4o-mini" in rt.llm_label
                assert not rt.llm.simulated
                with rt.db.write() as conn:
                    sid = stacks.create(conn, StackCreate(name="tides"), beat_interval=10,
                                        now=clock.now(),
                                        agents=stacks.Agents(rt.registry.names()))["id"]
                await run_queued(rt)
                first = ticks_of(rt.db, sid)[-1]["id"]
                # Two failures open the breaker; then Groq is skipped without a request.
                assert _trail(rt, first) == [
                    [("groq", "server_error"), ("openai", "ok")],
                    [("groq", "server_error"), ("openai", "ok")],
                    [("groq", "skipped_open_breaker"), ("openai", "ok")],
                    [("groq", "skipped_open_breaker"), ("openai", "ok")]]
                stats = sim_app.state.sim.stats_json()
                assert stats["groq"]["requests"] == 2
                # Groq comes back; after the cool-down one probe closes the breaker.
                async with httpx.AsyncClient(base_url=base) as client:
                    r = await client.post("/_sim/config", json={"groq": {"down": False}})
                    assert r.status_code == 200
                clock.advance(COOLDOWN)
                with rt.db.write() as conn:
                    stacks.run_now(conn, sid, clock.now())
                await run_queued(rt)
                second = ticks_of(rt.db, sid)[-1]["id"]
                assert _trail(rt, second) == [[("groq", "ok")]] * len(DEFAULT_TEAM)
                assert rt.chain is not None and rt.chain.providers[0].breaker.state == "closed"
            finally:
                await rt.stop()
                rt.close()

    asyncio.run(main())


def test_no_key_means_the_simulated_model_and_start_up_says_so(db_url: str,
                                                               clock: FakeClock) -> None:
    rt = Runtime.build(make_settings(db_url), clock, env={"OPENAI_BASE_URL": "http://x"})
    try:
        assert rt.llm.simulated
        assert "simulated" in rt.llm_label and "no provider key set" in rt.llm_label
        assert rt.llm_notes == ["groq left out: GROQ_API_KEY is not set",
                                "openai left out: OPENAI_API_KEY is not set"]
    finally:
        rt.close()


def test_one_key_leaves_the_other_provider_out(db_url: str, clock: FakeClock) -> None:
    env: dict[str, Any] = {"OPENAI_API_KEY": "k", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    rt = Runtime.build(make_settings(db_url), clock, env=env)
    try:
        assert rt.llm_label == "openai:gpt-4o-mini"
        assert rt.llm_notes == [
            "groq left out: GROQ_API_KEY is not set",
            "served on loopback (openai at http://127.0.0.1:9/v1): a local simulator such as "
            "`tickwork sim-llm`, not the real provider"]
    finally:
        if rt.chain is not None:
            asyncio.run(rt.chain.aclose())
        rt.close()
