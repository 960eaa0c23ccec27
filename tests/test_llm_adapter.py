"""The Groq and OpenAI adapters over their real SDKs, whose HTTP answers are scripted with the
SDK's own mock transport (no network): each SDK raises its own error classes, and the adapter
turns every one into the project's error carrying its attempt; a completion becomes one priced
attempt whose rate-limit headers reach the limiter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import groq
import httpx
import httpx2
import openai
import orjson
import pytest

from agents.llm.adapter import ChatAdapter
from agents.llm.base import (
    AuthError,
    BadRequest,
    ConnectionFailed,
    ProviderError,
    RateLimited,
    ServerError,
    Timeout,
)
from agents.llm.groq_adapter import GroqLLM
from agents.llm.openai_adapter import OpenAILLM
from agents.llm.pricing import PriceTable
from agents.llm.ratelimit import RateLimiter
from tests.llm_fakes import SteppingClock, request


def run(main: Callable[[], Any]) -> None:
    asyncio.run(main())


Answer = Callable[[], tuple[int, dict[str, str], bytes]]
RATE = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2m59.56s"}
COMPLETION = orjson.dumps({
    "id": "c1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": '{"answer": "ok"}'}}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})


def adapter_for(sdk: str, answer: Answer | type[Exception],
                clock: SteppingClock) -> ChatAdapter:
    """The provider's adapter over its real SDK, whose HTTP transport plays `answer`."""
    def reply(request: Any, module: Any) -> Any:
        if isinstance(answer, type):
            raise answer("scripted failure")
        status, headers, body = answer()
        return module.Response(status, headers={"content-type": "application/json",
                                                **headers}, content=body)

    if sdk == "groq":
        transport = httpx.MockTransport(lambda r: reply(r, httpx))
        client: Any = groq.AsyncGroq(api_key="k", base_url="http://groq.test", max_retries=0,
                                     http_client=httpx.AsyncClient(transport=transport))
        return GroqLLM(client, "llama-3.3-70b-versatile", clock)
    transport2 = httpx2.MockTransport(lambda r: reply(r, httpx2))
    client = openai.AsyncOpenAI(api_key="k", base_url="http://openai.test/v1", max_retries=0,
                                http_client=httpx2.AsyncClient(transport=transport2))
    return OpenAILLM(client, "gpt-4o-mini", clock)


def error_body(status: int) -> bytes:
    return orjson.dumps({"error": {"message": f"scripted {status}", "type": "x", "code": None}})


CASES: list[tuple[int, dict[str, str], type[ProviderError], bool]] = [
    (429, {"retry-after": "7", **RATE}, RateLimited, True),
    (498, {}, RateLimited, True),
    (500, {}, ServerError, True),
    (503, {"retry-after-ms": "1500"}, ServerError, True),
    (409, {}, ServerError, True),
    (408, {}, Timeout, True),
    (400, {}, BadRequest, False),
    (404, {}, BadRequest, False),
    (422, {}, BadRequest, False),
    (401, {}, AuthError, False),
    (403, {}, AuthError, False),
]


@pytest.mark.parametrize("sdk", ["groq", "openai"])
@pytest.mark.parametrize(("status", "headers", "error", "retryable"), CASES)
def test_each_sdk_error_becomes_the_projects_own(sdk: str, status: int, headers: dict[str, str],
                                                 error: type[ProviderError],
                                                 retryable: bool) -> None:
    clock = SteppingClock()
    adapter = adapter_for(sdk, lambda: (status, headers, error_body(status)), clock)
    heard: list[dict[str, str]] = []

    async def listen(h: Any) -> None:
        heard.append(dict(h))

    adapter.add_listener(listen)

    async def main() -> None:
        try:
            with pytest.raises(ProviderError) as caught:
                await adapter.complete(request())
        finally:
            await adapter._client.close()
        exc = caught.value
        assert type(exc) is error and exc.retryable is retryable
        assert not isinstance(exc, (groq.GroqError, openai.OpenAIError))
        (attempt,) = exc.attempts
        assert (attempt.provider, attempt.status) == (sdk, error.status)
        assert f"HTTP {status}" in (attempt.error or "")
        if status == 429:
            assert exc.retry_after_s == attempt.retry_after_s == 7
            assert heard and heard[0]["x-ratelimit-remaining-requests"] == "0"
        if status == 503:
            assert exc.retry_after_s == 1.5

    run(main)


@pytest.mark.parametrize("sdk", ["groq", "openai"])
@pytest.mark.parametrize(("failure", "error"), [("connect", ConnectionFailed),
                                                ("timeout", Timeout)])
def test_transport_failures_become_connection_errors_and_timeouts(
        sdk: str, failure: str, error: type[ProviderError]) -> None:
    module: Any = httpx if sdk == "groq" else httpx2
    raised = module.ConnectError if failure == "connect" else module.ReadTimeout
    adapter = adapter_for(sdk, raised, SteppingClock())

    async def main() -> None:
        try:
            with pytest.raises(error) as caught:
                await adapter.complete(request())
        finally:
            await adapter._client.close()
        assert caught.value.attempts[0].status == error.status

    run(main)


@pytest.mark.parametrize("sdk", ["groq", "openai"])
def test_a_completion_is_one_priced_attempt_and_feeds_the_limiter(sdk: str) -> None:
    clock = SteppingClock()
    adapter = adapter_for(sdk, lambda: (200, RATE, COMPLETION), clock)
    limiter = RateLimiter(None, None, clock)
    adapter.add_listener(limiter.observe_headers)

    async def main() -> None:
        try:
            response = await adapter.complete(request())
        finally:
            await adapter._client.close()
        assert response.text == '{"answer": "ok"}'
        (attempt,) = response.attempts
        assert (attempt.status, attempt.input_tokens, attempt.output_tokens) == ("ok", 11, 7)
        assert attempt.cost_usd == pytest.approx(PriceTable().cost(adapter.model, 11, 7))
        assert attempt.cost_usd > 0
        assert limiter.headroom().requests_left == 0

    run(main)


@pytest.mark.parametrize("sdk", ["groq", "openai"])
def test_a_malformed_completion_is_a_server_error(sdk: str) -> None:
    body = orjson.dumps({"id": "c", "object": "chat.completion", "choices": []})
    adapter = adapter_for(sdk, lambda: (200, {}, body), SteppingClock())

    async def main() -> None:
        try:
            with pytest.raises(ServerError, match="malformed completion"):
                await adapter.complete(request())
        finally:
            await adapter._client.close()

    run(main)
