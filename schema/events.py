"""The kinds of events the outbox carries, and the event as readers see it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

EventKind = Literal[
    "stack.updated", "tick.queued", "tick.started", "step.finished", "tick.finished"
]

STACK_UPDATED: EventKind = "stack.updated"
TICK_QUEUED: EventKind = "tick.queued"
TICK_STARTED: EventKind = "tick.started"
STEP_FINISHED: EventKind = "step.finished"
TICK_FINISHED: EventKind = "tick.finished"

# Topics a write transaction can touch (see schema.db.touch).
TOPIC_EVENTS = "events"  # new outbox rows
TOPIC_QUEUE = "queue"  # a tick became claimable


class Event(BaseModel):
    id: int
    kind: EventKind
    stack_id: int | None
    tick_id: int | None
    data: str  # JSON text, sent as is
    created_at: float
