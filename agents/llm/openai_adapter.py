"""The OpenAI adapter: `OpenAILLM` calls a model through `openai.AsyncOpenAI` (built by
OpenAIProvider).

OpenAI's SDK errors become the project's here: an HTTP status error by its status
(RateLimitError → RateLimited with the retry-after, InternalServerError and other 5xx →
ServerError, AuthenticationError/PermissionDeniedError → AuthError, BadRequestError/
NotFoundError/UnprocessableEntityError → BadRequest), APITimeoutError → Timeout,
APIConnectionError → ConnectionFailed, and any other OpenAIError (an unreadable response) →
ServerError.
"""

from __future__ import annotations

from collections.abc import Mapping

import httpx2  # the HTTP client the openai SDK is built on
import openai

from agents.llm.adapter import ChatAdapter, error_for_status, rate_headers, short
from agents.llm.base import ConnectionFailed, ProviderError, ServerError, Timeout
from agents.llm.pricing import PriceTable
from schema.clock import Clock


class OpenAILLM(ChatAdapter):
    provider_name = "openai"
    path = "/chat/completions"
    response_type = httpx2.Response

    def __init__(self, client: openai.AsyncOpenAI, model: str, clock: Clock,
                 prices: PriceTable | None = None) -> None:
        super().__init__(client, model, clock, prices)

    def map_error(self, exc: Exception) -> tuple[ProviderError, Mapping[str, str]] | None:
        if isinstance(exc, openai.APIStatusError):
            headers = rate_headers(exc.response.headers.items())
            return (error_for_status(exc.status_code, exc.message, headers, self._clock.now()),
                    headers)
        if isinstance(exc, openai.APITimeoutError):  # before its base, APIConnectionError
            return Timeout(short(f"openai request timed out: {exc.message}")), {}
        if isinstance(exc, openai.APIConnectionError):
            return ConnectionFailed(short(f"cannot reach openai: {exc.message}")), {}
        if isinstance(exc, openai.OpenAIError):
            return ServerError(short(f"unreadable answer from openai: {exc}")), {}
        return None
