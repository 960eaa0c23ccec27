"""The Agent protocol and what an agent sees (TickContext) and asks for (Effects).

An agent is four things: a `name`, how it builds its prompt from the tick context (`prompt`),
the pydantic model its answer must satisfy (`output_type`), and how it turns a valid answer
into effects (`apply`). Agents never touch the database: the tick runner commits a step's
effects together with its journal row. An agent whose methods may block (file or network I/O,
heavy work) sets `blocking = True` and runs in a worker thread; agents that don't say are
treated as blocking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel


@dataclass(frozen=True, slots=True)
class StackView:
    id: int
    name: str
    goal: str


@dataclass(frozen=True, slots=True)
class MessageView:
    agent: str
    body: str


@dataclass(frozen=True, slots=True)
class ArtifactView:
    title: str
    content: str


@dataclass(slots=True)
class TickContext:
    stack: StackView
    tick_id: int
    slot: int | None
    attempt: int
    memory: dict[str, str] = field(default_factory=dict)
    recent_messages: list[MessageView] = field(default_factory=list)
    recent_artifacts: list[ArtifactView] = field(default_factory=list)
    outputs: dict[str, BaseModel] = field(default_factory=dict)  # earlier steps of this tick


@dataclass(slots=True)
class Effects:
    memory: dict[str, str] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    artifacts: list[tuple[str, str]] = field(default_factory=list)  # (title, content)
    complete_stack: bool = False  # the goal is met: the stack becomes `completed`


@runtime_checkable
class Agent(Protocol):
    name: str
    output_type: type[BaseModel]

    def prompt(self, ctx: TickContext) -> list[dict[str, str]]:
        """Chat messages for the model; the team adds the output-format instruction."""

    def apply(self, output: BaseModel, ctx: TickContext) -> Effects:
        """What a valid answer changes: memory, messages, artifacts, the stack's state."""


class BuiltinAgent:
    """Base of the built-in agents: pure, quick, never blocking."""

    name: ClassVar[str]
    output_type: ClassVar[type[BaseModel]]
    blocking: ClassVar[bool] = False


def context_lines(ctx: TickContext, *, messages: int = 5, artifacts: int = 3) -> str:
    """The stack's goal, memory and recent history, as prompt text."""
    lines = [f"Stack: {ctx.stack.name}", f"Goal: {ctx.stack.goal or '(no goal given)'}"]
    if ctx.memory:
        lines.append("Memory:")
        lines += [f"- {k}: {v}" for k, v in sorted(ctx.memory.items())]
    if ctx.recent_messages:
        lines.append("Recent messages:")
        lines += [f"- {m.agent}: {m.body}" for m in ctx.recent_messages[:messages]]
    if ctx.recent_artifacts:
        lines.append("Recent artifacts:")
        lines += [f"- {a.title}" for a in ctx.recent_artifacts[:artifacts]]
    return "\n".join(lines)


def current_task(ctx: TickContext) -> str:
    """The task this tick works on: the planner's, else the one remembered."""
    from schema.outputs import PlannerOutput

    plan = ctx.outputs.get("planner")
    if isinstance(plan, PlannerOutput):
        return plan.task
    return ctx.memory.get("current_task", "make progress toward the goal")
