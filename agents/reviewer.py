"""The reviewer scores progress 0–10 with feedback and may declare the goal met."""

from __future__ import annotations

from pydantic import BaseModel

from agents.base import BuiltinAgent, Effects, TickContext, context_lines, current_task
from schema.outputs import BuilderOutput, ReviewerOutput


class Reviewer(BuiltinAgent):
    name = "reviewer"
    output_type = ReviewerOutput

    def prompt(self, ctx: TickContext) -> list[dict[str, str]]:
        built = ctx.outputs.get("builder")
        work = (f"\nArtifact: {built.title}\n{built.content}"
                if isinstance(built, BuilderOutput) else "")
        return [
            {"role": "system", "content": "You are the reviewer of an autonomous team. Score "
             "progress toward the goal from 0 to 10, give one line of feedback, and set "
             "goal_met only when the goal is fully reached."},
            {"role": "user", "content": f"{context_lines(ctx)}\nTask: {current_task(ctx)}{work}"},
        ]

    def apply(self, output: BaseModel, ctx: TickContext) -> Effects:
        assert isinstance(output, ReviewerOutput)
        review = f"{output.score}/10 — {output.feedback}"
        return Effects(memory={"last_review": review}, complete_stack=output.goal_met)
