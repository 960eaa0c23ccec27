"""The team pipeline: run one agent's step — prompt, model, validation (one repair), effects.

`run_step` never raises for an agent's or a model's failure: it returns a failed StepResult
with the error, the raw output and every LLM attempt, for the runner to journal.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from agents.base import Agent, Effects, TickContext
from agents.llm.base import LLM, Attempt, LLMError, LLMRequest

T = TypeVar("T")

FORMAT = ("Answer with a single JSON object and nothing else. It must satisfy this JSON "
          "schema:\n{schema}")


@dataclass(slots=True)
class StepResult:
    agent: str
    status: Literal["succeeded", "failed"]
    prompt: list[dict[str, str]]
    output: BaseModel | None = None
    raw_output: str | None = None
    error: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    effects: Effects = field(default_factory=Effects)


async def _call(agent: Agent, fn: Any, *args: Any) -> Any:
    if getattr(agent, "blocking", True):
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _schema(output_type: type[BaseModel]) -> dict[str, Any]:
    cached: dict[str, Any] | None = getattr(output_type, "__tickwork_schema__", None)
    if cached is None:
        cached = output_type.model_json_schema()
        output_type.__tickwork_schema__ = cached  # type: ignore[attr-defined]
    return cached


def _errors(exc: ValidationError | ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in exc.errors()
        )
    return str(exc)


def parse(output_type: type[BaseModel], text: str) -> BaseModel:
    """Validate a model's text answer; tolerates a ```json fence around it."""
    body = text.strip()
    if body.startswith("```"):
        body = body.strip("`").removeprefix("json").strip()
    return output_type.model_validate_json(body)


async def run_step(agent: Agent, ctx: TickContext, llm: LLM, seed: str) -> StepResult:
    schema = _schema(agent.output_type)
    try:
        messages = list(await _call(agent, agent.prompt, ctx))
    except Exception as exc:  # an agent's own bug fails its step, nothing else
        return StepResult(agent.name, "failed", [], error=f"prompt raised {exc!r}")
    messages.insert(0, {"role": "system", "content": FORMAT.format(
        schema=orjson.dumps(schema).decode())})
    result = StepResult(agent.name, "failed", messages)

    for round_ in range(2):
        request = LLMRequest(messages=messages, schema_name=agent.output_type.__name__,
                             output_schema=schema, seed=seed)
        try:
            response = await llm.complete(request)
        except LLMError as exc:
            result.attempts += exc.attempts
            result.error = str(exc)
            return result
        result.attempts += response.attempts
        result.raw_output = response.text
        try:
            output = parse(agent.output_type, response.text)
        except (ValidationError, ValueError) as exc:
            problem = _errors(exc)
            if response.attempts:
                response.attempts[-1].status = "invalid_output"
                response.attempts[-1].error = problem
            result.error = f"invalid output: {problem}"
            if round_ == 0:
                messages = [*messages, {"role": "assistant", "content": response.text},
                            {"role": "user", "content": f"That answer did not validate "
                             f"({problem}). Answer again with valid JSON only."}]
                result.prompt = messages
            continue
        try:
            effects = await _call(agent, agent.apply, output, ctx)
        except Exception as exc:
            result.error = f"apply raised {exc!r}"
            return result
        result.status, result.output, result.error = "succeeded", output, None
        result.raw_output, result.effects = None, effects
        return result
    return result
