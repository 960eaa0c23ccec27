"""`tickwork sim-llm` served by uvicorn on a free loopback port and called with the official
`groq` and `openai` SDKs, exactly as tickwork's providers call it; and the command itself,
through CliRunner and as a real process."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import groq
import httpx
import openai
import pytest
from typer.testing import CliRunner

from agents.llm.simknobs import SimConfig
from agents.llm.simserver import MODELS, create_sim_app
from orchestrator.cli import app as cli_app
from schema.clock import FakeClock
from schema.outputs import PlannerOutput
from tests.conftest import wait_for
from tests.sim_helpers import (
    MODEL,
    PROVIDERS,
    RATE_HEADERS,
    parse_duration,
    planner,
    run,
    serving,
)

# -- served by uvicorn, called with the real SDKs ----------------------------------------


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
