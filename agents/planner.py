"""The planner picks the next task toward the goal from memory, messages and artifacts."""

from __future__ import annotations

from pydantic import BaseModel

from agents.base import BuiltinAgent, Effects, TickContext, context_lines
from schema.outputs import PlannerOutput


class Planner(BuiltinAgent):
    name = "planner"
    output_type = PlannerOutput

    def prompt(self, ctx: TickContext) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": "You are the planner of an autonomous team. Choose "
             "the single next task that moves the goal forward, small enough for one step."},
            {"role": "user", "content": context_lines(ctx) + "\nWhat is the next task?"},
        ]

    def apply(self, output: BaseModel, ctx: TickContext) -> Effects:
        assert isinstance(output, PlannerOutput)
        return Effects(memory={"current_task": output.task})
