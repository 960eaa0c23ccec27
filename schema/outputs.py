"""Pydantic models of what the built-in agents must answer. A model's reply is validated
against these; one that does not validate is asked for once more, then the step fails."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AgentOutput(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class PlannerOutput(AgentOutput):
    task: str = Field(min_length=1, max_length=300, description="the next task toward the goal")
    rationale: str = Field(default="", max_length=1000, description="why this task, now")


class BuilderOutput(AgentOutput):
    title: str = Field(min_length=1, max_length=200, description="the artifact's title")
    content: str = Field(min_length=1, max_length=8000, description="the artifact itself")


class CommunicatorOutput(AgentOutput):
    message: str = Field(min_length=1, max_length=1000, description="an update for the feed")


class ReviewerOutput(AgentOutput):
    score: int = Field(ge=0, le=10, description="progress toward the goal, 0 to 10")
    feedback: str = Field(min_length=1, max_length=1000, description="what to do better")
    goal_met: bool = Field(default=False, description="true only when the goal is reached")
