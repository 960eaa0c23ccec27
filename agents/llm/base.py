"""The LLM interface every model, wrapper and fallback chain implements, and its errors.

An LLM takes an `LLMRequest` and returns an `LLMResponse` carrying every `Attempt` that led to
it; on failure it raises `LLMError`, which carries the attempts too. Provider adapters convert
their SDK's errors into `ProviderError` at their edge, so nothing above them sees an SDK type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from schema.models import AttemptStatus


@dataclass(frozen=True, slots=True)
class LLMRequest:
    messages: list[dict[str, str]]
    schema_name: str
    output_schema: dict[str, Any] | None = None
    seed: str = ""  # what makes a simulated answer reproducible: "stack:slot:agent"
    max_tokens: int = 1024
    temperature: float = 0.7


@dataclass(slots=True)
class Attempt:
    provider: str
    model: str
    status: AttemptStatus
    latency_ms: float
    started_at: float
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    error: str | None = None
    retry_after_s: float | None = None


@dataclass(slots=True)
class LLMResponse:
    text: str
    provider: str
    model: str
    attempts: list[Attempt] = field(default_factory=list)


class LLMError(Exception):
    """Every provider failed; `attempts` says how."""

    def __init__(self, message: str, attempts: list[Attempt]) -> None:
        super().__init__(message)
        self.attempts = attempts


class ProviderError(Exception):
    """A provider's failure in the project's own terms (adapters raise these)."""

    status: AttemptStatus = "server_error"
    retryable: bool = True

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RateLimited(ProviderError):
    status: AttemptStatus = "rate_limited"


class ServerError(ProviderError):
    status: AttemptStatus = "server_error"


class Timeout(ProviderError):
    status: AttemptStatus = "timeout"


class ConnectionFailed(ProviderError):
    status: AttemptStatus = "connection_error"


class BadRequest(ProviderError):
    status: AttemptStatus = "bad_request"
    retryable = False


class LLM(Protocol):
    @property
    def label(self) -> str:
        """How this model is shown to people, e.g. "sim (simulated)"."""

    @property
    def simulated(self) -> bool: ...

    async def complete(self, request: LLMRequest) -> LLMResponse: ...
