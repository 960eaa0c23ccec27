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
    # What the provider said of its answer (traces show them; the journal does not keep them):
    # its completion's id, the model that answered, why each choice stopped.
    response_id: str | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] | None = None


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
    """A provider's failure in the project's own terms (adapters raise these).

    It carries the attempts that ended in it (`attempts`): the adapter's one failed attempt, or
    every attempt of a retried call, so whoever gives up on the provider can trace them all.
    """

    status: AttemptStatus = "server_error"
    retryable: bool = True

    def __init__(self, message: str, *, retry_after_s: float | None = None,
                 attempt: Attempt | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.attempts: list[Attempt] = [attempt] if attempt is not None else []

    @property
    def attempt(self) -> Attempt | None:
        """The attempt this error ended (the last one), if it carries any."""
        return self.attempts[-1] if self.attempts else None


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


class AuthError(BadRequest):
    """The key was refused (401/403). Asking again cannot help; the trace shows it as a
    refused request (`bad_request`) whose error says the key was refused."""


class Skipped(ProviderError):
    """The call never reached the provider: a wrapper knew it would fail and passed at once,
    so the fallback serves instead of waiting."""

    retryable = False


class SkippedOpenBreaker(Skipped):
    status: AttemptStatus = "skipped_open_breaker"


class SkippedRateLimit(Skipped):
    status: AttemptStatus = "skipped_rate_limit"


class LLM(Protocol):
    @property
    def label(self) -> str:
        """How this model is shown to people, e.g. "sim (simulated)"."""

    @property
    def simulated(self) -> bool: ...

    async def complete(self, request: LLMRequest) -> LLMResponse: ...


class ProviderLLM(LLM, Protocol):
    """One provider's model (an adapter, or a wrapper around one): wrappers need its names to
    record the attempts they make or skip themselves."""

    @property
    def provider(self) -> str: ...

    @property
    def model(self) -> str: ...


class WrapperLLM:
    """A wrapper around one provider's model that is itself one: it forwards the names and
    the call, and subclasses add one concern (retries, a breaker, a rate limit) around it."""

    def __init__(self, inner: ProviderLLM) -> None:
        self.inner = inner

    @property
    def label(self) -> str:
        return self.inner.label

    @property
    def simulated(self) -> bool:
        return self.inner.simulated

    @property
    def provider(self) -> str:
        return self.inner.provider

    @property
    def model(self) -> str:
        return self.inner.model

    async def complete(self, request: LLMRequest) -> LLMResponse:
        return await self.inner.complete(request)

    def attempt(self, status: AttemptStatus, started_at: float, *, latency_ms: float = 0.0,
                error: str | None = None, retry_after_s: float | None = None) -> Attempt:
        """An attempt in this provider's name (one a wrapper made, skipped or timed out)."""
        return Attempt(provider=self.provider, model=self.model, status=status,
                       latency_ms=latency_ms, started_at=started_at, error=error,
                       retry_after_s=retry_after_s)
