"""The OpenTelemetry GenAI semantic conventions, for what tickwork records: attribute names,
and the attributes of an LLM attempt, an agent step and the messages they carry.

Pure functions of the runner's records (`Attempt`, `StepResult`); no OpenTelemetry type here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from agents.llm.base import Attempt
from agents.team import StepResult

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
AGENT_NAME = "gen_ai.agent.name"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
ERROR_TYPE = "error.type"
COST = "tickwork.cost_usd"

ANSWERED = ("ok", "invalid_output")  # the attempt reached a model that answered
SKIPPED_EVENT = "tickwork.llm.skipped"
FALLBACK_EVENT = "tickwork.llm.fallback"
REPLAYED_EVENT = "tickwork.step.replayed"

Attributes = dict[str, Any]


def skipped(a: Attempt) -> bool:
    """The attempt never reached its provider (an open breaker, a rate limit)."""
    return a.status.startswith("skipped")


def chat_attributes(a: Attempt) -> Attributes:
    """A CLIENT span's attributes for an attempt that reached its provider."""
    out: Attributes = {OPERATION: "chat", PROVIDER: a.provider, REQUEST_MODEL: a.model,
                       COST: a.cost_usd, "tickwork.llm.status": a.status}
    if a.response_model is not None:
        out[RESPONSE_MODEL] = a.response_model
    if a.response_id is not None:
        out[RESPONSE_ID] = a.response_id
    if a.finish_reasons:
        out[FINISH_REASONS] = list(a.finish_reasons)
    if a.status in ANSWERED:
        out[INPUT_TOKENS] = a.input_tokens
        out[OUTPUT_TOKENS] = a.output_tokens
    if a.retry_after_s is not None:
        out["tickwork.llm.retry_after_s"] = a.retry_after_s
    if a.status != "ok":
        out[ERROR_TYPE] = a.status
    return out


def skip_attributes(a: Attempt) -> Attributes:
    out: Attributes = {PROVIDER: a.provider, REQUEST_MODEL: a.model,
                       "tickwork.llm.status": a.status}
    if a.error:
        out["tickwork.llm.error"] = a.error
    if a.retry_after_s is not None:
        out["tickwork.llm.retry_after_s"] = a.retry_after_s
    return out


def fallback(attempts: Sequence[Attempt]) -> tuple[Attempt, Attempt] | None:
    """(the first attempt, the one that served) when a step was served by another model
    than the first it tried; None otherwise."""
    served = last_answered(attempts)
    if served is None or (served.provider, served.model) == (attempts[0].provider,
                                                             attempts[0].model):
        return None
    return attempts[0], served


def fallback_attributes(first: Attempt, served: Attempt) -> Attributes:
    return {"tickwork.llm.from_provider": first.provider, "tickwork.llm.from_model": first.model,
            "tickwork.llm.from_status": first.status, PROVIDER: served.provider,
            REQUEST_MODEL: served.model}


def last_answered(attempts: Sequence[Attempt]) -> Attempt | None:
    return next((a for a in reversed(attempts) if a.status in ANSWERED), None)


def step_error_type(result: StepResult) -> str:
    """A failed step's `error.type`: its last attempt's status when the model failed it, else
    `agent_error` (the agent's own prompt or apply raised)."""
    if result.attempts and result.attempts[-1].status != "ok":
        return result.attempts[-1].status
    return "agent_error"


def input_messages(prompt: Sequence[dict[str, str]]) -> str:
    """`gen_ai.input.messages`: the chat messages, as the conventions' JSON."""
    return orjson.dumps([{"role": m.get("role", "user"),
                          "parts": [{"type": "text", "content": m.get("content", "")}]}
                         for m in prompt]).decode()


def output_messages(text: str, finish_reason: str) -> str:
    """`gen_ai.output.messages`: the model's answer, as the conventions' JSON."""
    return orjson.dumps([{"role": "assistant",
                          "parts": [{"type": "text", "content": text}],
                          "finish_reason": finish_reason}]).decode()


def output_text(result: StepResult) -> str | None:
    """What the step's model said: the validated output, or the answer that did not
    validate."""
    if result.output is not None:
        return orjson.dumps(result.output.model_dump(mode="json")).decode()
    return result.raw_output
