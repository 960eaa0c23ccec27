"""Pydantic models of the API: what comes in (validated) and what goes out (the shapes of
docs/design.md)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

ExecutionState = Literal["running", "paused", "completed", "failed"]
TickStatus = Literal[
    "queued", "running", "succeeded", "failed", "timed_out", "cancelled", "skipped"
]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "timed_out", "cancelled", "skipped"})
StepStatus = Literal["running", "succeeded", "failed"]
AttemptStatus = Literal[
    "ok",
    "rate_limited",
    "server_error",
    "timeout",
    "connection_error",
    "bad_request",
    "invalid_output",
    "skipped_open_breaker",
    "skipped_rate_limit",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# What the database columns hold (an INTEGER column is 32 bits on PostgreSQL, a BIGINT 64):
# every number the API and CLI accept is bounded by these.
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
USD_MAX = 1e9  # a daily budget in US dollars
AGENT_NAME = re.compile(r"^[a-z][a-z0-9_\-]{0,99}$")
# The API's document states the rules the validators below enforce (their messages are ours).
AgentName = Annotated[str, WithJsonSchema({"type": "string", "pattern": AGENT_NAME.pattern})]
NO_CONTROL = r"^[^\u0000-\u001f\u007f]*$"
NO_NUL = r"^[^\u0000]*$"  # free text: any character but NUL, which no text column can hold


def no_nul(value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def whole(value: Any) -> Any:
    """An integer as JSON Schema has it: 20 or 20.0 (never "20" or true)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


@overload
def ts(value: float) -> datetime: ...
@overload
def ts(value: None) -> None: ...
@overload
def ts(value: float | None) -> datetime | None: ...


def ts(value: float | None) -> datetime | None:
    """Seconds since the epoch to an aware UTC datetime (None stays None)."""
    return None if value is None else datetime.fromtimestamp(value, UTC)


class _In(BaseModel):
    # Strict: `true` is not a number, "3" is not an integer; no infinity or NaN.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, strict=True,
                              allow_inf_nan=False)


class StackCreate(_In):
    name: str = Field(min_length=1, max_length=200, json_schema_extra={"pattern": NO_CONTROL})
    goal: str = Field(default="", max_length=4000, json_schema_extra={"pattern": NO_NUL})
    interval_s: int | None = Field(default=None, ge=1, le=86_400)
    team: list[AgentName] | None = Field(default=None, min_length=1, max_length=20)
    paused: bool = False
    budget_tokens_per_day: int | None = Field(default=None, ge=1, le=INT32_MAX)
    budget_usd_per_day: float | None = Field(default=None, gt=0, le=USD_MAX)

    _whole = field_validator("interval_s", "budget_tokens_per_day", mode="before")(whole)
    _goal = field_validator("goal")(no_nul)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if _CONTROL.search(v):
            raise ValueError("name must not contain control characters")
        return v

    @field_validator("team")
    @classmethod
    def _team(cls, v: list[str] | None) -> list[str] | None:
        return check_agent_names(v)


def check_agent_names(team: list[str] | None) -> list[str] | None:
    if team is None:
        return team
    for name in team:
        if not AGENT_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not an agent name (lowercase letters, digits, _ -)")
    return team


class TeamUpdate(_In):
    """A stack's agents, in order; null gives it the default team back."""

    team: list[AgentName] | None = Field(min_length=1, max_length=20)

    @field_validator("team")
    @classmethod
    def _team(cls, v: list[str] | None) -> list[str] | None:
        return check_agent_names(v)


class BudgetUpdate(_In):
    """A stack's daily budget; null removes that limit."""

    tokens_per_day: int | None = Field(default=None, ge=1, le=INT32_MAX)
    usd_per_day: float | None = Field(default=None, gt=0, le=USD_MAX)

    _whole = field_validator("tokens_per_day", mode="before")(whole)


class PauseRequest(_In):
    reason: str | None = Field(default=None, max_length=500,
                               json_schema_extra={"pattern": NO_NUL})

    _reason = field_validator("reason")(no_nul)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class TickSummary(_Out):
    id: int
    stack_id: int
    slot: int | None
    trigger: str
    status: TickStatus
    attempt: int
    reason: str | None
    queued_at: datetime
    scheduled_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    lateness_ms: float | None
    duration_ms: float | None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    # The OpenTelemetry trace id (hex) of the tick's latest traced attempt; null when none was
    # traced (no OTEL_EXPORTER_OTLP_ENDPOINT) or none has journaled a step yet.
    trace_id: str | None = None


class AttemptOut(_Out):
    provider: str
    model: str
    status: AttemptStatus
    latency_ms: float
    input_tokens: int
    output_tokens: int
    cost_usd: float
    error: str | None
    retry_after_s: float | None


class StepOut(_Out):
    index: int
    agent: str
    status: StepStatus
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: float | None
    prompt: list[dict[str, Any]] | None
    output: dict[str, Any] | None
    raw_output: str | None
    error: str | None
    attempts: list[AttemptOut]


class TickDetail(TickSummary):
    stack_name: str
    steps: list[StepOut]


class StackCounts(BaseModel):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    cancelled: int = 0
    skipped: int = 0


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    llm_calls: int = 0


class Budget(BaseModel):
    tokens_per_day: int | None = None
    usd_per_day: float | None = None


class StackOut(_Out):
    id: int
    name: str
    goal: str
    execution_state: ExecutionState
    interval_s: int
    team: list[str]
    pause_reason: str | None
    created_at: datetime
    updated_at: datetime
    last_tick: TickSummary | None
    counts: StackCounts
    budget: Budget = Budget()
    usage_today: Usage = Usage()  # this UTC day
    usage_total: Usage = Usage()


class StackChange(StackOut):
    """What a play or pause answers: the stack, whether it changed, and a sentence saying so
    ("stack 1 'poet' was already running; nothing changed")."""

    changed: bool
    message: str


class MemoryOut(_Out):
    key: str
    value: str
    updated_at: datetime


class MessageOut(_Out):
    id: int
    tick_id: int
    agent: str
    body: str
    created_at: datetime


class ArtifactOut(_Out):
    id: int
    tick_id: int
    agent: str
    title: str
    content: str
    created_at: datetime


class ErrorOut(BaseModel):
    error: str
    detail: Any = None
