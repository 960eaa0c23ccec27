"""`tickwork sim-llm`, in process: the app through httpx's ASGI transport, with time on a
FakeClock (latency, hangs and rate windows move only when the test advances the clock)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from agents.llm.sim import count_tokens
from agents.llm.simknobs import SimConfig
from agents.llm.simserver import MODELS, create_sim_app
from agents.llm.simwindow import fmt_duration
from agents.registry import DEFAULT_TEAM
from schema.clock import FakeClock
from tests.conftest import wait_for
from tests.sim_helpers import (
    MODEL,
    PATHS,
    PROVIDERS,
    RATE_HEADERS,
    agent_messages,
    asgi,
    chat,
    content_of,
    parse_duration,
    planner,
    run,
)

# -- the app, in process ----------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_builtin_agent_gets_an_answer_its_output_model_accepts(provider: str) -> None:
    async def main() -> None:
        async with asgi(create_sim_app(SimConfig(latency_ms="0"), clock=FakeClock())) as c:
            for name in DEFAULT_TEAM:
                messages, output_type = agent_messages(name)
                resp = await chat(c, provider, messages)
                body = resp.json()
                output_type.model_validate_json(content_of(resp))
                assert body["object"] == "chat.completion"
                assert body["model"] == MODEL[provider]
                assert body["id"].startswith("chatcmpl-")
                assert body["system_fingerprint"] == "fp_simulated"
                assert body["choices"][0]["finish_reason"] == "stop"
                usage = body["usage"]
                prompt = "".join(m["content"] for m in messages)
                assert usage["prompt_tokens"] == count_tokens(prompt)
                assert usage["completion_tokens"] == count_tokens(content_of(resp))
                assert usage["total_tokens"] == usage["prompt_tokens"] + usage[
                    "completion_tokens"]
                assert ("x_groq" in body) == (provider == "groq")

    run(main())


def test_plain_prompts_get_marked_text_and_json_mode_gets_json() -> None:
    async def main() -> None:
        async with asgi(create_sim_app(SimConfig(latency_ms="0"), clock=FakeClock())) as c:
            plain = [{"role": "user", "content": "Say hello to the tide pools."}]
            text = content_of(await chat(c, "openai", plain))
            assert text.startswith("[simulated]") and "tide pools" in text
            as_json = content_of(await chat(c, "groq", plain,
                                            response_format={"type": "json_object"}))
            assert isinstance(orjson.loads(as_json), dict)
            schema = {"type": "object", "title": "Haiku", "required": ["lines", "mood"],
                      "properties": {"lines": {"type": "array", "minItems": 3,
                                               "items": {"type": "string"}},
                                     "mood": {"enum": ["calm", "stormy"]}}}
            structured = orjson.loads(content_of(await chat(
                c, "openai", plain, response_format={"type": "json_schema", "json_schema": {
                    "name": "Haiku", "schema": schema}})))
            assert len(structured["lines"]) >= 3 and structured["mood"] in ("calm", "stormy")

    run(main())


def test_the_same_seed_and_messages_give_the_same_answer() -> None:
    goals = [f"goal number {i}: grow a tomato garden" for i in range(8)]

    async def answers(seed: int, provider: str) -> list[str]:
        app = create_sim_app(SimConfig(latency_ms="0"), clock=FakeClock(), seed=seed)
        async with asgi(app) as c:
            return [content_of(await chat(c, provider, planner(g))) for g in goals]

    first = run(answers(1, "groq"))
    assert run(answers(1, "groq")) == first
    assert run(answers(1, "openai")) == first  # the content depends on messages and seed only
    assert run(answers(2, "groq")) != first
    assert len(set(first)) > 1


def test_latency_is_spent_on_the_injected_clock() -> None:
    clock = FakeClock()

    async def main() -> None:
        async with asgi(create_sim_app(SimConfig(latency_ms="1000"), clock=clock)) as c:
            pending = asyncio.ensure_future(chat(c, "groq", planner()))
            await wait_for(lambda: clock.sleepers == 1, what="the request to wait on the clock")
            clock.advance(0.999)
            assert clock.sleepers == 1 and not pending.done()
            clock.advance(0.001)
            resp = await pending
            usage = resp.json()["usage"]
            assert usage["total_time"] == pytest.approx(0.9)
            assert usage["queue_time"] == pytest.approx(0.1)
            assert usage["prompt_time"] + usage["completion_time"] == pytest.approx(0.9)

    run(main())


def test_enforced_rpm_is_a_sliding_minute_on_the_clock() -> None:
    clock = FakeClock()

    async def main() -> None:
        app = create_sim_app(SimConfig(latency_ms="0", groq={"rpm": 3}), clock=clock)
        async with asgi(app) as c:
            remaining = []
            for _ in range(3):
                resp = await chat(c, "groq", planner())
                assert resp.status_code == 200
                remaining.append(resp.headers["x-ratelimit-remaining-requests"])
                assert resp.headers["x-ratelimit-limit-requests"] == "3"
                clock.advance(5)
            assert remaining == ["2", "1", "0"]
            refused = await chat(c, "groq", planner())  # 15 s after the first
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            assert refused.headers["retry-after"] == "45"
            assert refused.headers["retry-after-ms"] == "45000"
            assert refused.headers["x-ratelimit-remaining-requests"] == "0"
            # Empty again once the third request (at +10 s) is a minute old.
            assert parse_duration(refused.headers["x-ratelimit-reset-requests"]) == 55
            assert (await chat(c, "openai", planner())).status_code == 200  # its own window
            clock.advance(44.9)
            assert (await chat(c, "groq", planner())).status_code == 429
            clock.advance(0.1)
            again = await chat(c, "groq", planner())
            assert again.status_code == 200
            assert again.headers["x-ratelimit-remaining-requests"] == "0"
            stats = (await c.get("/_sim/stats")).json()
            assert stats["groq"]["ok"] == 4 and stats["groq"]["rate_limited"] == 2
            assert stats["openai"]["ok"] == 1

    run(main())


def test_enforced_tpm_counts_tokens_and_refuses_requests_larger_than_the_limit() -> None:
    clock = FakeClock()

    async def main() -> None:
        config = SimConfig(latency_ms="0", openai={"tpm": 120, "prompt_tokens": 40,
                                                   "completion_tokens": 10})
        async with asgi(create_sim_app(config, clock=clock)) as c:
            first = await chat(c, "openai", planner())
            assert first.json()["usage"] == {**first.json()["usage"], "prompt_tokens": 40,
                                             "completion_tokens": 10, "total_tokens": 50}
            assert first.headers["x-ratelimit-remaining-tokens"] == "70"
            clock.advance(20)
            second = await chat(c, "openai", planner())
            assert second.headers["x-ratelimit-remaining-tokens"] == "20"
            clock.advance(10)
            third = await chat(c, "openai", planner())
            assert third.status_code == 429
            assert third.json()["error"]["type"] == "tokens"
            assert third.headers["retry-after"] == "30"  # when the first request's 50 leave
            await c.post("/_sim/config", json={"openai": {"prompt_tokens": 200}})
            too_big = await chat(c, "openai", planner())
            assert too_big.status_code == 413
            assert "Request too large" in too_big.json()["error"]["message"]

    run(main())


def test_headers_are_on_every_answer_and_parse_as_durations() -> None:
    clock = FakeClock()

    async def main() -> None:
        app = create_sim_app(SimConfig(latency_ms="0", groq={"down": True}), clock=clock)
        async with asgi(app) as c:
            for resp in (await chat(c, "openai", planner()), await chat(c, "groq", planner())):
                for name in RATE_HEADERS:
                    assert name in resp.headers, (resp.status_code, name)
                assert int(resp.headers["x-ratelimit-limit-requests"]) > 0
                assert int(resp.headers["x-ratelimit-remaining-tokens"]) >= 0
                parse_duration(resp.headers["x-ratelimit-reset-requests"])
                parse_duration(resp.headers["x-ratelimit-reset-tokens"])

    run(main())


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.12, "120ms"), (0.0004, "1ms"), (1, "1s"), (7.66, "7.66s"), (60, "1m0s"),
    (179.56, "2m59.56s"), (3725.5, "1h2m5.5s"), (0.9996, "1s")])
def test_durations_are_written_as_the_providers_write_them(seconds: float, text: str) -> None:
    assert fmt_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(max(seconds, 0.001) if seconds else 0,
                                                 abs=0.006)


def test_faults_answer_in_the_providers_error_shapes_and_are_counted() -> None:
    clock = FakeClock()

    async def main() -> None:
        app = create_sim_app(SimConfig(latency_ms="0"), clock=clock)
        async with asgi(app) as c:
            async def knobs(**patch: Any) -> None:
                resp = await c.post("/_sim/config", json=patch)
                assert resp.status_code == 200, resp.text

            await knobs(error_rate=1)
            failed = await chat(c, "openai", planner())
            assert failed.status_code == 500
            assert set(failed.json()["error"]) == {"message", "type", "code", "param"}
            assert "simulated" in failed.json()["error"]["message"]
            await knobs(error_rate=0, rate_limit_rate=1, retry_after_s=7)
            limited = await chat(c, "groq", planner())
            assert limited.status_code == 429
            assert limited.headers["retry-after"] == "7"
            assert set(limited.json()["error"]) == {"message", "type", "code"}
            await knobs(rate_limit_rate=0, groq={"down": True})
            assert (await chat(c, "groq", planner())).status_code == 503
            assert (await chat(c, "openai", planner())).status_code == 200
            bad = await c.post(PATHS["openai"], json={"model": "gpt-4o"})
            assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages"
            assert (await c.post(PATHS["openai"], content=b"{nope")).status_code == 400
            stats = (await c.get("/_sim/stats")).json()
            assert stats["openai"] == {"requests": 4, "ok": 1, "rate_limited": 0,
                                       "server_error": 1, "hung": 0, "down": 0,
                                       "bad_request": 2}
            assert stats["groq"]["rate_limited"] == 1 and stats["groq"]["down"] == 1
            await c.post("/_sim/reset")
            stats = (await c.get("/_sim/stats")).json()
            assert stats["groq"]["requests"] == 0 and stats["openai"]["requests"] == 0

    run(main())


def test_a_hang_holds_the_request_until_hang_s_on_the_clock() -> None:
    clock = FakeClock()

    async def main() -> None:
        app = create_sim_app(SimConfig(latency_ms="0", hang_rate=1, hang_s=30), clock=clock)
        async with asgi(app) as c:
            pending = asyncio.ensure_future(chat(c, "openai", planner()))
            await wait_for(lambda: clock.sleepers == 1, what="the request to hang")
            assert (await c.get("/_sim/stats")).json()["openai"]["hung"] == 1
            clock.advance(29.9)
            assert not pending.done() and clock.sleepers == 1
            clock.advance(0.1)
            assert (await pending).status_code == 504

    run(main())


def test_fault_draws_follow_the_rate_and_the_seed() -> None:
    async def statuses(seed: int) -> list[int]:
        app = create_sim_app(SimConfig(latency_ms="0", error_rate=0.3, rate_limit_rate=0.2),
                             clock=FakeClock(), seed=seed)
        async with asgi(app) as c:
            return [(await chat(c, "groq", planner())).status_code for _ in range(400)]

    first = run(statuses(5))
    assert run(statuses(5)) == first
    assert run(statuses(6)) != first
    assert 80 <= first.count(500) <= 160  # 30 % of 400, give or take
    assert 40 <= first.count(429) <= 120  # 20 %
    assert first.count(200) + first.count(500) + first.count(429) == 400


def test_knobs_change_live_and_bad_values_are_refused_readably() -> None:
    async def main() -> None:
        async with asgi(create_sim_app(clock=FakeClock())) as c:
            config = (await c.get("/_sim/config")).json()
            assert config["groq"]["latency_ms"] == "200,600"
            assert config["openai"] == config["groq"]
            assert config["groq"]["error_rate"] == 0 and config["groq"]["down"] is False
            assert config["groq"]["rpm"] is None and config["groq"]["hang_s"] == 600
            resp = await c.post("/_sim/config", json={"both": {"latency_ms": "0"},
                                                      "openai": {"rpm": 10}})
            assert resp.status_code == 200
            assert resp.json()["groq"]["latency_ms"] == "0,0"
            assert resp.json()["openai"]["rpm"] == 10 and resp.json()["groq"]["rpm"] is None
            for patch, says in [
                ({"error_rate": 2}, "error_rate: Input should be less than or equal to 1"),
                ({"groq": {"latency_ms": "fast"}}, "groq.latency_ms: latency must be"),
                ({"hang_rate": 0.6, "error_rate": 0.6}, "must be at most 1"),
                ({"rmp": 3}, "rmp: Extra inputs are not permitted"),
                ([1, 2], "JSON object"),
            ]:
                bad = await c.post("/_sim/config", json=patch)
                assert bad.status_code == 422
                assert says in bad.json()["error"]["message"], bad.text
            assert (await c.get("/_sim/config")).json() == resp.json()  # left as it was
            assert (await chat(c, "openai", planner())).status_code == 200  # no latency now

    run(main())


def test_model_lists_in_openai_shape() -> None:
    async def main() -> None:
        async with asgi(create_sim_app(SimConfig(latency_ms="0"), clock=FakeClock())) as c:
            for path, provider in (("/v1/models", "openai"), ("/openai/v1/models", "groq")):
                body = (await c.get(path)).json()
                assert body["object"] == "list"
                assert [m["id"] for m in body["data"]] == list(MODELS[provider])  # type: ignore[index]
                assert all(m["object"] == "model" and "simulated" in m["owned_by"]
                           for m in body["data"])
            resp = await chat(c, "groq", [{"role": "user", "content": "hi"}],
                              model="any-model-name")
            assert resp.json()["model"] == "any-model-name"

    run(main())


