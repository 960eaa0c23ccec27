"""`tickwork sim-llm`: the simulated OpenAI/Groq API that integration and load tests drive with
the real SDKs.

The app is tested in process (httpx's ASGI transport, time on a FakeClock: latency, hangs and
rate windows move only when the test advances the clock), then served by uvicorn on a free
loopback port and called with the official `groq` and `openai` SDKs, exactly as tickwork's
providers call it; the command itself runs through CliRunner and as a real process.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import groq
import httpx
import openai
import orjson
import pytest
import uvicorn
from pydantic import BaseModel
from typer.testing import CliRunner

from agents.base import StackView, TickContext
from agents.llm.sim import count_tokens
from agents.llm.simknobs import SimConfig
from agents.llm.simserver import MODELS, create_sim_app
from agents.llm.simwindow import fmt_duration
from agents.registry import DEFAULT_TEAM, AgentRegistry
from agents.team import FORMAT
from orchestrator.cli import app as cli_app
from schema.clock import FakeClock
from schema.outputs import PlannerOutput
from tests.conftest import wait_for

PATHS = {"openai": "/v1/chat/completions", "groq": "/openai/v1/chat/completions"}
MODEL = {"openai": "gpt-4o-mini", "groq": "llama-3.3-70b-versatile"}
PROVIDERS = ["groq", "openai"]
RATE_HEADERS = ["x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def parse_duration(text: str) -> float:
    """A rate-limit header's duration ("2m59.56s", "7.66s", "120ms") in seconds, as a client
    reads it; raises if it is not in that format."""
    found = _DURATION.match(text)
    assert found and text, f"not a duration: {text!r}"
    hours, minutes, secs, millis = found.groups()
    return (int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs or 0)
            + int(millis or 0) / 1000)


def context(goal: str = "publish a weekly newsletter about tide pools") -> TickContext:
    return TickContext(stack=StackView(1, "tides", goal), tick_id=1, slot=180_000_000,
                       attempt=1)


def agent_messages(name: str, goal: str = "publish a weekly newsletter about tide pools"
                   ) -> tuple[list[dict[str, str]], type[BaseModel]]:
    """The messages a built-in agent's step sends (the team's FORMAT first), and its model."""
    agent = AgentRegistry.default(plugins=False).get(name)
    schema = orjson.dumps(agent.output_type.model_json_schema()).decode()
    messages = [{"role": "system", "content": FORMAT.format(schema=schema)},
                *agent.prompt(context(goal))]
    return messages, agent.output_type


def planner(goal: str = "publish a weekly newsletter about tide pools") -> list[dict[str, str]]:
    return agent_messages("planner", goal)[0]


@contextlib.asynccontextmanager
async def asgi(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        yield client


async def chat(client: httpx.AsyncClient, provider: str, messages: list[dict[str, str]],
               **extra: Any) -> httpx.Response:
    return await client.post(PATHS[provider], json={"model": MODEL[provider],
                                                    "messages": messages, **extra})


def content_of(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


def run(coro: Any) -> Any:
    return asyncio.run(coro)


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


# -- served by uvicorn, called with the real SDKs ----------------------------------------


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Serve `app` on a free loopback port in this event loop; yields (base URL, server)."""
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                    access_log=False, lifespan="off",
                                    timeout_graceful_shutdown=2))
    task = asyncio.ensure_future(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), what="uvicorn to start")
        assert server.started, task.result()
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await task


def sdk(provider: str, base: str, **options: Any) -> Any:
    if provider == "groq":
        return groq.AsyncGroq(api_key="sim", base_url=base, max_retries=0, **options)
    return openai.AsyncOpenAI(api_key="sim", base_url=f"{base}/v1", max_retries=0, **options)


def errors_of(provider: str) -> Any:
    return groq if provider == "groq" else openai


async def create(client: Any, provider: str, messages: list[dict[str, str]]) -> Any:
    """A chat completion through the SDK's raw response: (parsed completion, headers)."""
    raw = await client.chat.completions.with_raw_response.create(
        model=MODEL[provider], messages=messages)
    parsed = raw.parse()
    if inspect.isawaitable(parsed):
        parsed = await parsed
    return parsed, raw.headers


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_sdks_get_valid_agent_answers_with_usage_and_headers(provider: str) -> None:
    async def main() -> None:
        app = create_sim_app(SimConfig(latency_ms="0"), clock=FakeClock())
        async with serving(app) as (base, _), sdk(provider, base) as client:
            completion, headers = await create(client, provider, planner())
            PlannerOutput.model_validate_json(completion.choices[0].message.content)
            assert completion.model == MODEL[provider]
            assert completion.usage.prompt_tokens > 0 and completion.usage.completion_tokens > 0
            if provider == "groq":
                assert completion.x_groq.id.startswith("req_")
                assert completion.usage.total_time is not None
                assert completion.usage.queue_time is not None
            for name in RATE_HEADERS:
                assert name in headers
            assert int(headers["x-ratelimit-remaining-requests"]) == int(
                headers["x-ratelimit-limit-requests"]) - 1
            assert parse_duration(headers["x-ratelimit-reset-requests"]) == 60
            again, _ = await create(client, provider, planner())
            assert again.choices[0].message.content == completion.choices[0].message.content
            listed = await client.models.list()
            assert MODELS[provider][0] in [m.id for m in listed.data]  # type: ignore[index]

    run(main())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_sdks_raise_their_own_errors_and_knobs_apply_live(provider: str) -> None:
    clock = FakeClock()  # never advanced: a 1 s latency would never end

    async def main() -> None:
        errors = errors_of(provider)
        app = create_sim_app(SimConfig(latency_ms="0", rate_limit_rate=1, retry_after_s=3),
                             clock=clock)
        async with serving(app) as (base, _), sdk(provider, base) as client, \
                httpx.AsyncClient(base_url=base) as admin:
            with pytest.raises(errors.RateLimitError) as limited:
                await create(client, provider, planner())
            assert limited.value.response.headers["retry-after"] == "3"
            assert limited.value.status_code == 429
            await admin.post("/_sim/config", json={"rate_limit_rate": 0, "error_rate": 1})
            with pytest.raises(errors.InternalServerError) as failed:
                await create(client, provider, planner())
            assert failed.value.status_code == 500
            await admin.post("/_sim/config", json={"error_rate": 0, "latency_ms": "1000",
                                                   provider: {"down": True}})
            with pytest.raises(errors.InternalServerError) as down:
                # At once, despite the latency (which would never end on this clock).
                await asyncio.wait_for(create(client, provider, planner()), 10)
            assert down.value.status_code == 503
            await admin.post("/_sim/config", json={"latency_ms": "0",
                                                   provider: {"down": False}})
            completion, _ = await create(client, provider, planner())
            PlannerOutput.model_validate_json(completion.choices[0].message.content)
            stats = (await admin.get("/_sim/stats")).json()[provider]
            assert stats == {**stats, "requests": 4, "ok": 1, "rate_limited": 1,
                             "server_error": 1, "down": 1}

    run(main())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_hang_times_out_in_the_sdk_and_is_released(provider: str) -> None:
    async def main() -> None:
        errors = errors_of(provider)
        app = create_sim_app(SimConfig(latency_ms="0", hang_rate=1), clock=FakeClock())
        async with serving(app) as (base, server), sdk(provider, base, timeout=0.3) as client:
            with pytest.raises(errors.APITimeoutError):
                await create(client, provider, planner())
            # The client gave up and closed its connection; the hung request ends with it.
            await wait_for(lambda: not server.server_state.connections
                           and not server.server_state.tasks, what="the hang to be released")
            assert app.state.sim.stats[provider]["hung"] == 1

    run(main())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_enforced_rpm_through_the_sdk(provider: str) -> None:
    clock = FakeClock()

    async def main() -> None:
        errors = errors_of(provider)
        app = create_sim_app(SimConfig(latency_ms="0", rpm=3), clock=clock)
        async with serving(app) as (base, _), sdk(provider, base) as client:
            remaining = []
            for _ in range(3):
                _, headers = await create(client, provider, planner())
                remaining.append(int(headers["x-ratelimit-remaining-requests"]))
                clock.advance(10)
            assert remaining == [2, 1, 0]
            with pytest.raises(errors.RateLimitError) as limited:
                await create(client, provider, planner())
            headers = limited.value.response.headers
            assert float(headers["retry-after"]) == 30  # the first request leaves at +60 s
            clock.advance(30)
            await create(client, provider, planner())

    run(main())


# -- the command ---------------------------------------------------------------------------


def test_the_command_has_help() -> None:
    result = CliRunner().invoke(cli_app, ["sim-llm", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for flag in ("--port", "--latency-ms", "--error-rate", "--rate-limit-rate", "--hang-rate",
                 "--down", "--rpm", "--tpm", "--seed"):
        assert flag in result.output


@pytest.mark.parametrize(("args", "says"), [
    (["--latency-ms", "fast"], "latency must be MEDIAN[,P99]"),
    (["--latency-ms", "600,200"], "latency needs 0 <= MEDIAN <= P99"),
    (["--error-rate", "2"], "--error-rate"),
    (["--down", "anthropic"], "is not groq or openai"),
    (["--rpm", "groq=many"], "is not PROVIDER=N"),
    (["--rpm", "mistral=3"], "the provider must be groq, openai or both"),
    (["--tpm", "openai=0"], "openai.tpm: Input should be greater than or equal to 1"),
    (["--error-rate", "0.6", "--hang-rate", "0.6"], "must be at most 1"),
])
def test_bad_flags_exit_2_with_a_readable_message(args: list[str], says: str) -> None:
    result = CliRunner().invoke(cli_app, ["sim-llm", *args], env={"COLUMNS": "250"})
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert "Traceback" not in result.output


def test_the_command_serves_the_sdk_and_stops_on_sigterm(tmp_path: Path) -> None:
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "sim-llm", "--port", "0", "--latency-ms",
             "5,20", "--seed", "3"], cwd=tmp_path, env=env, stdout=stdout, stderr=stderr)
    try:
        deadline = time.monotonic() + 20
        base = None
        while base is None:
            assert proc.poll() is None, f"exited {proc.returncode}: {err.read_text()}"
            assert time.monotonic() < deadline, "no banner within 20 s"
            found = re.search(r"OPENAI_BASE_URL=(http://127\.0\.0\.1:\d+/v1)", out.read_text())
            base = found.group(1) if found else None
            time.sleep(0.05)
        banner = out.read_text()
        assert "SIMULATED" in banner
        assert f"GROQ_BASE_URL={base.removesuffix('/v1')}\n" in banner
        assert "OPENAI_API_KEY=sim" in banner and "GROQ_API_KEY=sim" in banner
        while True:
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not answering within 20 s"
            time.sleep(0.05)
        with openai.OpenAI(api_key="sim", base_url=base, max_retries=0) as client:
            completion = client.chat.completions.create(model="gpt-4o-mini",
                                                        messages=planner())  # type: ignore[arg-type]
        PlannerOutput.model_validate_json(completion.choices[0].message.content or "")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, err.read_text()
        assert "Traceback" not in err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
