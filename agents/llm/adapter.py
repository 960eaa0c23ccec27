"""The OpenAI-compatible chat adapter that the Groq and OpenAI adapters share.

An adapter turns one `LLMRequest` into one chat-completion request through an authenticated SDK
client (built by a provider), and returns an `LLMResponse` with exactly one `Attempt`: latency
on the injected Clock, tokens from the usage report, cost from the price table. The rate-limit
headers of every response, failed ones too, go to whoever listens (the rate limiter).

Each subclass maps its own SDK's exceptions into the project's `ProviderError`s at this edge, so
no SDK type reaches the wrappers, the fallback or the agents. Every raised error carries the
failed attempt.

The request goes out through the SDK client's own `post` (the SDKs' documented way to make a
request they have no method for), with a body built here, and the answer is read from the raw
response: `chat.completions.create` would first transform the typed parameters, recursively, at
about a third of a call's CPU (py-spy, `python -m load_tests.sdk_call`), for a body this module
already builds in its final shape. The client still does everything else — the key, the base
URL, timeouts, its retries off, and its own error classes for every failed status or transport.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, ClassVar

import orjson

from agents.llm.base import (
    Attempt,
    AuthError,
    BadRequest,
    LLMRequest,
    LLMResponse,
    ProviderError,
    RateLimited,
    ServerError,
    Timeout,
)
from agents.llm.pricing import PriceTable
from agents.llm.ratelimit import retry_after_s
from agents.llm.sim import count_tokens
from schema.clock import Clock

HeadersListener = Callable[[Mapping[str, str]], Awaitable[None]]

_RATE_HEADER_PREFIXES = ("x-ratelimit-", "retry-after")
_MAX_ERROR_CHARS = 300


def rate_headers(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The rate-limit headers of a response (x-ratelimit-*, retry-after*), names lower-case."""
    return {k.lower(): v for k, v in items if k.lower().startswith(_RATE_HEADER_PREFIXES)}


def short(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS - 1] + "…"


def error_for_status(status: int, message: str, headers: Mapping[str, str],
                     now: float) -> ProviderError:
    """The project's error for an HTTP error status (the SDKs' own classes map to these)."""
    text = short(f"HTTP {status}: {message}")
    wait = retry_after_s(headers, now)
    if status in (429, 498):  # 498: Groq's "capacity exceeded", a rate limit by another name
        return RateLimited(text, retry_after_s=wait)
    if status in (401, 403):
        return AuthError(f"key refused: {text}")
    if status == 408:
        return Timeout(text, retry_after_s=wait)
    if status == 409 or status >= 500:
        return ServerError(text, retry_after_s=wait)
    return BadRequest(text)


def _described(completion: dict[str, Any], choices: list[Any]
               ) -> tuple[str | None, str | None, tuple[str, ...] | None]:
    """What a completion says of itself: its id, the model that answered, and why each
    choice stopped (None for what it leaves out or gives in another type)."""
    rid, model = completion.get("id"), completion.get("model")
    reasons = tuple(r for c in choices if isinstance(c, dict)
                    and isinstance(r := c.get("finish_reason"), str))
    return (rid if isinstance(rid, str) else None, model if isinstance(model, str) else None,
            reasons or None)


class ChatAdapter(ABC):
    """One model of one OpenAI-compatible provider, called through its SDK client."""

    provider_name: str = ""
    path: ClassVar[str] = "/chat/completions"  # relative to the client's base URL
    response_type: ClassVar[type] = object  # the SDK's raw HTTP response class

    def __init__(self, client: Any, model: str, clock: Clock,
                 prices: PriceTable | None = None) -> None:
        self._client = client
        self._model = model
        self._clock = clock
        self._prices = prices or PriceTable()
        self._listeners: list[HeadersListener] = []

    @property
    def provider(self) -> str:
        return self.provider_name

    @property
    def model(self) -> str:
        return self._model

    @property
    def label(self) -> str:
        return f"{self.provider_name}:{self._model}"

    @property
    def simulated(self) -> bool:
        return False

    def add_listener(self, listener: HeadersListener) -> None:
        """Hand the rate-limit headers of every response to `listener`."""
        self._listeners.append(listener)

    @abstractmethod
    def map_error(self, exc: Exception) -> tuple[ProviderError, Mapping[str, str]] | None:
        """This SDK's exception as the project's error, with the response's rate-limit
        headers (empty without a response); None for anything that is not this SDK's."""

    def _kwargs(self, request: LLMRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self._model, "messages": request.messages,
                                  "temperature": request.temperature,
                                  "max_tokens": request.max_tokens}
        if request.output_schema is not None:
            kwargs["response_format"] = {"type": "json_object"}
        return kwargs

    async def _publish(self, headers: Mapping[str, str]) -> None:
        if headers:
            for listener in self._listeners:
                await listener(headers)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        started = self._clock.monotonic()
        started_at = self._clock.now()
        try:
            raw = await self._client.post(self.path, body=self._kwargs(request),
                                          cast_to=self.response_type)
            headers = rate_headers(raw.headers.items())
            body = raw.content
        except Exception as exc:
            mapped = self.map_error(exc)
            if mapped is None:
                raise
            error, error_headers = mapped
            await self._publish(error_headers)
            raise self._failed(error, started, started_at) from None
        await self._publish(headers)
        try:
            completion = orjson.loads(body)
            choices = completion["choices"]
            text = choices[0]["message"]["content"] or ""
            usage = completion.get("usage") or {}
            if not isinstance(text, str) or not isinstance(usage, dict):
                raise TypeError("content or usage of the wrong type")
            described = _described(completion, choices)
        except (orjson.JSONDecodeError, AttributeError, IndexError, KeyError,
                TypeError) as exc:
            error = ServerError(short(f"malformed completion from {self.label}: {exc!r}"))
            raise self._failed(error, started, started_at) from None
        prompt = "".join(m.get("content", "") for m in request.messages)
        input_tokens = int(usage.get("prompt_tokens") or 0) or count_tokens(prompt)
        output_tokens = int(usage.get("completion_tokens") or 0) or count_tokens(text)
        attempt = Attempt(
            provider=self.provider_name, model=self._model, status="ok",
            latency_ms=(self._clock.monotonic() - started) * 1000, started_at=started_at,
            input_tokens=input_tokens, output_tokens=output_tokens,
            cost_usd=self._prices.cost(self._model, input_tokens, output_tokens),
            response_id=described[0], response_model=described[1], finish_reasons=described[2])
        return LLMResponse(text=text, provider=self.provider_name, model=self._model,
                           attempts=[attempt])

    def _failed(self, error: ProviderError, started: float, started_at: float) -> ProviderError:
        error.attempts = [Attempt(
            provider=self.provider_name, model=self._model, status=error.status,
            latency_ms=(self._clock.monotonic() - started) * 1000, started_at=started_at,
            error=str(error), retry_after_s=error.retry_after_s)]
        return error
