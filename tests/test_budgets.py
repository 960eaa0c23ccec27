"""Accounting and budgets: tokens and cost per attempt, summed per tick and per stack; a
stack that reaches its daily budget is paused with the reason `budget`, visibly."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from agents.llm.base import LLMRequest, LLMResponse
from agents.registry import DEFAULT_TEAM
from dashboard.api import create_app
from orchestrator import stacks
from orchestrator.errors import Conflict
from orchestrator.store.counts import DAY_S
from orchestrator.store.spend import Spend
from schema import read
from schema.clock import FakeClock
from schema.models import BudgetUpdate, StackCreate
from tests.engine_helpers import (
    ScriptedLLM,
    build_runtime,
    events_of,
    run_queued,
    stack_row,
    ticks_of,
)

IN, OUT, COST = 100, 50, 0.001  # what each priced call costs


class PricedLLM(ScriptedLLM):
    """The simulated model's answers, with fixed tokens and cost on every call."""

    async def complete(self, request: LLMRequest) -> LLMResponse:
        response = await super().complete(request)
        for a in response.attempts:
            a.input_tokens, a.output_tokens, a.cost_usd = IN, OUT, COST
        return response


def _create(rt, clock: FakeClock, name: str, **budget: object) -> int:
    spec = StackCreate(name=name, **budget)  # type: ignore[arg-type]
    with rt.db.write() as conn:
        row = stacks.create(conn, spec, beat_interval=10, now=clock.now(),
                            agents=stacks.Agents(rt.registry.names()))
    return int(row["id"])


def test_spend_counts_only_calls_that_reached_a_provider() -> None:
    from agents.llm.base import Attempt
    attempts = [Attempt("groq", "m", "skipped_open_breaker", 0, 0),
                Attempt("groq", "m", "rate_limited", 5, 0, input_tokens=0),
                Attempt("openai", "m", "ok", 5, 0, input_tokens=10, output_tokens=4,
                        cost_usd=0.5)]
    assert Spend.of(attempts) == Spend(10, 4, 0.5, 2)
    assert not Spend.of(attempts[:1])


def test_tokens_and_cost_are_summed_per_tick_and_per_stack(db_url: str,
                                                           clock: FakeClock) -> None:
    with build_runtime(db_url, clock, llm=PricedLLM(clock)) as rt:
        sid = _create(rt, clock, "priced")
        asyncio.run(run_queued(rt))
        (tick,) = ticks_of(rt.db, sid)
        calls = len(DEFAULT_TEAM)
        assert (tick["input_tokens"], tick["output_tokens"]) == (IN * calls, OUT * calls)
        assert tick["cost_usd"] == pytest.approx(COST * calls)
        with rt.db.read() as conn:
            detail = read.get_tick(conn, tick["id"], DEFAULT_TEAM)
            stack = read.get_stack(conn, sid, 10, DEFAULT_TEAM, clock.now())
        assert detail is not None and stack is not None
        assert detail.cost_usd == pytest.approx(COST * calls)
        assert all(a.cost_usd == COST for s in detail.steps for a in s.attempts)
        assert stack.usage_today.llm_calls == calls
        assert stack.usage_today.input_tokens == IN * calls
        assert stack.usage_total.cost_usd == pytest.approx(COST * calls)
        # A new UTC day starts from zero; the total keeps counting.
        clock.set((clock.now() // DAY_S + 1) * DAY_S)
        with rt.db.read() as conn:
            later = read.get_stack(conn, sid, 10, DEFAULT_TEAM, clock.now())
        assert later is not None
        assert later.usage_today.llm_calls == 0 and later.usage_total.llm_calls == calls


def test_reaching_the_token_budget_pauses_the_stack_with_reason_budget(
        db_url: str, clock: FakeClock) -> None:
    # Two calls' worth of tokens: the second step reaches it.
    with build_runtime(db_url, clock, llm=PricedLLM(clock)) as rt:
        sid = _create(rt, clock, "thrifty", budget_tokens_per_day=2 * (IN + OUT))
        asyncio.run(run_queued(rt))
        stack = stack_row(rt.db, sid)
        assert (stack["execution_state"], stack["pause_reason"]) == ("paused", "budget")
        (tick,) = ticks_of(rt.db, sid)
        assert tick["status"] == "succeeded"  # a running tick finishes, as with any pause
        paused = [e for e in events_of(rt.db, stack_id=sid, kind="stack.updated")
                  if '"budget"' in e["data"]]
        assert len(paused) == 1
        # Playing again the same day is refused with a reason; a new day, or more budget, works.
        with pytest.raises(Conflict, match="daily budget"), rt.db.write() as conn:
            stacks.play(conn, sid, now=clock.now(), agents=stacks.Agents(()))
        with rt.db.write() as conn:
            assert stacks.play_all(conn, now=clock.now()) == 0
            stacks.set_budget(conn, sid, BudgetUpdate(tokens_per_day=10_000), clock.now())
            outcome = stacks.play(conn, sid, now=clock.now(), agents=stacks.Agents(()))
            assert outcome.row["execution_state"] == "running"


def test_the_usd_budget_counts_too_and_its_pause_cancels_the_queued_tick(
        db_url: str, clock: FakeClock) -> None:
    with build_runtime(db_url, clock, llm=PricedLLM(clock)) as rt:
        sid = _create(rt, clock, "cheap", budget_usd_per_day=COST * 3)
        asyncio.run(run_queued(rt))
        assert stack_row(rt.db, sid)["pause_reason"] == "budget"
        clock.set((clock.now() // DAY_S + 1) * DAY_S)  # tomorrow: play works again
        with rt.db.write() as conn:
            stacks.play(conn, sid, now=clock.now(), agents=stacks.Agents(()))
        assert ticks_of(rt.db, sid)[-1]["status"] == "queued"


def test_budget_route_needs_the_token_and_validates(db_url: str, clock: FakeClock) -> None:
    with build_runtime(db_url, clock, llm=PricedLLM(clock)) as rt:
        sid = _create(rt, clock, "b")

        async def main() -> None:
            transport = httpx.ASGITransport(app=create_app(rt))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                url = f"/api/stacks/{sid}/budget"
                assert (await client.put(url, json={"tokens_per_day": 5})).status_code == 401
                auth = {"Authorization": "Bearer test-token"}
                bad = await client.put(url, json={"usd_per_day": -1}, headers=auth)
                assert bad.status_code == 422
                assert bad.json()["detail"][0]["field"] == "body.usd_per_day"
                ok = await client.put(url, json={"tokens_per_day": 5000}, headers=auth)
                assert ok.status_code == 200
                assert ok.json()["budget"] == {"tokens_per_day": 5000, "usd_per_day": None}

        asyncio.run(main())
