"""The Groq adapter: `GroqLLM` calls a model through `groq.AsyncGroq` (built by GroqProvider).

Groq's SDK errors become the project's here: an HTTP status error by its status (RateLimitError
→ RateLimited with the retry-after, InternalServerError and other 5xx → ServerError,
AuthenticationError/PermissionDeniedError → AuthError, BadRequestError/NotFoundError/
UnprocessableEntityError → BadRequest), APITimeoutError → Timeout, APIConnectionError →
ConnectionFailed, and any other GroqError (an unreadable response) → ServerError.
"""

from __future__ import annotations

from collections.abc import Mapping

import groq
import httpx

from agents.llm.adapter import ChatAdapter, error_for_status, rate_headers, short
from agents.llm.base import ConnectionFailed, ProviderError, ServerError, Timeout
from agents.llm.pricing import PriceTable
from schema.clock import Clock


class GroqLLM(ChatAdapter):
    provider_name = "groq"
    path = "/openai/v1/chat/completions"
    response_type = httpx.Response

    def __init__(self, client: groq.AsyncGroq, model: str, clock: Clock,
                 prices: PriceTable | None = None) -> None:
        super().__init__(client, model, clock, prices)

    def map_error(self, exc: Exception) -> tuple[ProviderError, Mapping[str, str]] | None:
        if isinstance(exc, groq.APIStatusError):
            headers = rate_headers(exc.response.headers.items())
            return (error_for_status(exc.status_code, exc.message, headers, self._clock.now()),
                    headers)
        if isinstance(exc, groq.APITimeoutError):  # before its base, APIConnectionError
            return Timeout(short(f"groq request timed out: {exc.message}")), {}
        if isinstance(exc, groq.APIConnectionError):
            return ConnectionFailed(short(f"cannot reach groq: {exc.message}")), {}
        if isinstance(exc, groq.GroqError):
            return ServerError(short(f"unreadable answer from groq: {exc}")), {}
        return None
