"""The communicator posts an update about this tick's work to the stack's feed."""

from __future__ import annotations

from pydantic import BaseModel

from agents.base import BuiltinAgent, Effects, TickContext, context_lines, current_task
from schema.outputs import BuilderOutput, CommunicatorOutput


class Communicator(BuiltinAgent):
    name = "communicator"
    output_type = CommunicatorOutput

    def prompt(self, ctx: TickContext) -> list[dict[str, str]]:
        built = ctx.outputs.get("builder")
        artifact = f"\nArtifact: {built.title}" if isinstance(built, BuilderOutput) else ""
        return [
            {"role": "system", "content": "You are the communicator of an autonomous team. "
             "Write a short, plain update for the team's feed."},
            {"role": "user", "content": f"{context_lines(ctx)}\nTask: {current_task(ctx)}"
             f"{artifact}"},
        ]

    def apply(self, output: BaseModel, ctx: TickContext) -> Effects:
        assert isinstance(output, CommunicatorOutput)
        return Effects(messages=[output.message])
