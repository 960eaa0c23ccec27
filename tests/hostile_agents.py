"""Agents whose every output is hostile markup, for the dashboard's escaping tests
(`TICKWORK_AGENTS=tests.hostile_agents:Hostile,tests.hostile_agents:HostileFail`).

`Hostile` asks the model for an answer whose only allowed value is hostile (the simulated model
answers a schema's `const`), and writes hostile memory, a message and an artifact.
`HostileFail` gets a hostile answer and refuses it with a hostile error, so the raw output,
the step's error, the attempt's error and the tick's reason are hostile too.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, model_validator

from agents.base import Effects, TickContext


def evil(field: str) -> str:
    """Markup, a quote break, a script and template syntax, labelled with where it goes."""
    return (f"<img src=x onerror=alert('{field}')> \"><script>alert('{field}')</script> "
            f"{{{{7*7}}}} {field}")


OUTPUT = evil("model output")
RAW = evil("raw output")
ERROR = evil("error text")
PROMPT = evil("prompt")
MEMORY_KEY = evil("mkey")
MEMORY_VALUE = evil("memory value")
MESSAGE = evil("message")
ARTIFACT_TITLE = evil("artifact title")
ARTIFACT_CONTENT = evil("artifact content")


class HostileOut(BaseModel):
    text: Literal[OUTPUT]  # type: ignore[valid-type]


class RefusedOut(BaseModel):
    text: Literal[RAW]  # type: ignore[valid-type]

    @model_validator(mode="after")
    def refuse(self) -> RefusedOut:
        raise ValueError(ERROR)


class Hostile:
    name = "hostile"
    output_type = HostileOut
    blocking = False

    def prompt(self, ctx: TickContext) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{PROMPT}\nGoal: {ctx.stack.goal}"}]

    def apply(self, output: BaseModel, ctx: TickContext) -> Effects:
        return Effects(memory={MEMORY_KEY: MEMORY_VALUE}, messages=[MESSAGE],
                       artifacts=[(ARTIFACT_TITLE, ARTIFACT_CONTENT)])


class HostileFail:
    name = "hostile_fail"
    output_type = RefusedOut
    blocking = False

    def prompt(self, ctx: TickContext) -> list[dict[str, str]]:
        return [{"role": "user", "content": PROMPT}]

    def apply(self, output: BaseModel, ctx: TickContext) -> Effects:
        return Effects()
