"""The builder produces an artifact (title, content) for the planned task."""

from __future__ import annotations

from pydantic import BaseModel

from agents.base import BuiltinAgent, Effects, TickContext, context_lines, current_task
from schema.outputs import BuilderOutput


class Builder(BuiltinAgent):
    name = "builder"
    output_type = BuilderOutput

    def prompt(self, ctx: TickContext) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": "You are the builder of an autonomous team. Produce "
             "one concrete artifact that completes the task."},
            {"role": "user", "content": f"{context_lines(ctx)}\nTask: {current_task(ctx)}"},
        ]

    def apply(self, output: BaseModel, ctx: TickContext) -> Effects:
        assert isinstance(output, BuilderOutput)
        return Effects(artifacts=[(output.title, output.content)])
