"""The sim-llm server's knobs: how each simulated provider behaves, changeable while it runs.

Each provider ("groq", "openai") has its own `ProviderKnobs`. Anything given outside a
provider's own section (at the top level, or under "both") applies to both providers, so
`SimConfig(latency_ms="0")` and `{"both": {"down": true}, "openai": {"down": false}}` say what
people usually mean. A provider's own section wins over "both".

The fault rates are probabilities per request, drawn in this order: a 429 (`rate_limit_rate`),
a 5xx (`error_rate`), a hang (`hang_rate`); together they can be at most 1. `rpm` and `tpm`
are enforced limits over a sliding one-minute window; unset means unlimited.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agents.llm.latency import Latency

Provider = Literal["groq", "openai"]
PROVIDERS: tuple[Provider, ...] = ("groq", "openai")
BOTH = "both"


class ProviderKnobs(BaseModel):
    """How one simulated provider answers. Frozen: a change replaces the whole config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: str = Field(default="200,600", description='time to answer, "MEDIAN[,P99]" ms')
    error_rate: float = Field(default=0.0, ge=0, le=1, description="share of 500 answers")
    rate_limit_rate: float = Field(default=0.0, ge=0, le=1,
                                   description="share of 429 answers (with retry-after)")
    retry_after_s: float = Field(default=2.0, ge=0, le=3600,
                                 description="retry-after of the random 429s")
    hang_rate: float = Field(default=0.0, ge=0, le=1,
                             description="share of requests that never answer")
    hang_s: float = Field(default=600.0, gt=0, le=86_400,
                          description="how long a hung request holds on before a 504")
    down: bool = Field(default=False, description="every request gets a 503 at once")
    rpm: int | None = Field(default=None, ge=1, description="enforced requests per minute")
    tpm: int | None = Field(default=None, ge=1, description="enforced tokens per minute")
    prompt_tokens: int | None = Field(default=None, ge=0,
                                      description="report this many prompt tokens")
    completion_tokens: int | None = Field(default=None, ge=0,
                                          description="report this many completion tokens")

    @field_validator("latency_ms", mode="before")
    @classmethod
    def _latency_text(cls, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError('latency must be "MEDIAN[,P99]" in ms')
        return str(Latency.parse(str(value)))

    @model_validator(mode="after")
    def _rates(self) -> ProviderKnobs:
        if self.rate_limit_rate + self.error_rate + self.hang_rate > 1 + 1e-9:
            raise ValueError("rate_limit_rate + error_rate + hang_rate must be at most 1")
        return self

    @cached_property
    def latency(self) -> Latency:
        # Parsed once per config change, and a plain attribute after that: read per request.
        return Latency.parse(self.latency_ms)


KNOB_NAMES = frozenset(ProviderKnobs.model_fields)


def _section(value: Any) -> Any:
    return value.model_dump() if isinstance(value, ProviderKnobs) else value


def _spread(data: Any) -> Any:
    """The constructor's forms reduced to one section per provider: the shared knobs (top
    level and "both") copied into each provider's section, under its own values."""
    if not isinstance(data, Mapping):
        return data
    shared = {k: v for k, v in data.items() if k in KNOB_NAMES}
    both = data.get(BOTH)
    if isinstance(both, Mapping):
        shared.update(both)
    elif both is not None:
        return data  # let validation say that "both" must be an object
    out: dict[str, Any] = {k: v for k, v in data.items() if k not in KNOB_NAMES and k != BOTH}
    for provider in PROVIDERS:
        own = _section(data.get(provider, {}))
        out[provider] = {**shared, **own} if isinstance(own, Mapping) else own
    return out


class SimConfig(BaseModel):
    """The knobs of both simulated providers (see the module docstring for the "both" form)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    groq: ProviderKnobs = Field(default_factory=ProviderKnobs)
    openai: ProviderKnobs = Field(default_factory=ProviderKnobs)

    def __init__(self, **data: Any) -> None:
        # Spelled out so type checkers accept the shared forms: SimConfig(latency_ms="0").
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _spread_shared(cls, data: Any) -> Any:
        return _spread(data)

    def knobs(self, provider: Provider) -> ProviderKnobs:
        return self.groq if provider == "groq" else self.openai

    def updated(self, patch: Mapping[str, Any]) -> SimConfig:
        """This config with `patch` (the same forms as the constructor) laid over it; raises
        pydantic's ValidationError on a bad value, leaving this config as it was."""
        current = self.model_dump()
        spread: dict[str, Any] = _spread(dict(patch))
        merged: dict[str, Any] = dict(spread)
        for provider in PROVIDERS:
            section = spread.get(provider, {})
            merged[provider] = ({**current[provider], **section}
                                if isinstance(section, Mapping) else section)
        return SimConfig.model_validate(merged)

    @classmethod
    def both(cls, **knobs: Any) -> SimConfig:
        """The same knobs for both providers."""
        return cls.model_validate(knobs)


def describe_errors(exc: ValidationError) -> str:
    """A config ValidationError as one readable line. A shared knob's error, reported by
    pydantic once per provider, is shown once, without a provider prefix."""
    providers_of: dict[tuple[str, str], set[str]] = {}
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ())]
        provider = loc[0] if loc and loc[0] in PROVIDERS else ""
        field = ".".join(loc[1:] if provider else loc)
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        providers_of.setdefault((field, message), set()).add(provider)
    parts = []
    for (field, message), providers in providers_of.items():
        prefix = next(iter(providers)) if len(providers) == 1 else ""
        name = ".".join(p for p in (prefix, field) if p)
        parts.append(f"{name}: {message}" if name else message)
    return "; ".join(parts)
