"""What the Stacks and Stack pages show about a stack's state, decided in one place.

Which write buttons are live follows the stack as the API would answer: Play for a stack that
is paused, failed or completed; Pause for a running one; "Run a tick now" for a running stack
with no tick queued or running (`POST /api/stacks/{id}/tick` answers 409 otherwise). A
disabled button's title says why. Play all and Pause all are live while some stack would
change. The templates call these helpers; the page script only swaps in what they rendered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from orchestrator import slots
from schema import read
from schema import tables as t
from schema.models import StackOut, TickSummary, ts

SIGN_IN = "sign in to change things"
PLAYABLE = ("paused", "failed", "completed")


@dataclass(frozen=True, slots=True)
class Button:
    action: str
    label: str
    stack_id: int | None
    why_not: str | None  # None: the button is live; else the reason it is disabled


@dataclass(frozen=True, slots=True)
class Controls:
    play: Button
    pause: Button
    tick: Button


def _button(action: str, label: str, stack_id: int | None, signed_in: bool,
            why_not: str | None) -> Button:
    return Button(action, label, stack_id, SIGN_IN if not signed_in else why_not)


def controls(stack: StackOut, signed_in: bool) -> Controls:
    state, sid = stack.execution_state, stack.id
    busy = stack.counts.queued + stack.counts.running > 0
    if state != "running":
        run_why: str | None = f"the stack is {state}: play it first"
    elif busy:
        run_why = "a tick is already queued or running"
    else:
        run_why = None
    return Controls(
        play=_button("play", "Play", sid, signed_in,
                     None if state in PLAYABLE else "the stack is already running"),
        pause=_button("pause", "Pause", sid, signed_in,
                      None if state == "running" else f"the stack is {state}"),
        tick=_button("tick", "Run a tick now", sid, signed_in, run_why),
    )


@dataclass(frozen=True, slots=True)
class Toolbar:
    play_all: Button
    pause_all: Button


def toolbar(states: dict[str, int], signed_in: bool) -> Toolbar:
    """Play all while some stack is not running; Pause all while some stack runs."""
    stopped = sum(n for s, n in states.items() if s != "running")
    return Toolbar(
        play_all=_button("play-all", "Play all", None, signed_in,
                         None if stopped else "every stack is running"),
        pause_all=_button("pause-all", "Pause all", None, signed_in,
                          None if states.get("running") else "no stack is running"),
    )


def states_of(stacks: Sequence[StackOut]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in stacks:
        out[s.execution_state] = out.get(s.execution_state, 0) + 1
    return out


def count_states(conn: Connection) -> dict[str, int]:
    """How many live stacks are in each state (what the toolbar needs, in one query)."""
    q = (select(t.stacks.c.execution_state, func.count())
         .where(t.stacks.c.deleted_at.is_(None)).group_by(t.stacks.c.execution_state))
    return {state: int(n) for state, n in conn.execute(q)}


def tick_summary(conn: Connection, tick_id: int) -> TickSummary | None:
    """One tick without its steps (a row of the Stack page's timeline)."""
    row = conn.execute(select(t.ticks).where(t.ticks.c.id == tick_id)).mappings().first()
    return None if row is None else read.tick_summary(row)


def state_reason(stack: StackOut) -> str:
    """Why a stack is not running, in a few words ("" for a running one)."""
    state = stack.execution_state
    if state == "completed":
        return "goal met"
    if state == "running":
        return ""
    reason = stack.pause_reason or ""
    return "" if reason == state else reason


def state_note(stack: StackOut) -> str:
    """The Stack page's line under its name: "paused: lunch break", "failed: …"."""
    if stack.execution_state == "running":
        return ""
    reason = state_reason(stack)
    return f"{stack.execution_state}: {reason}" if reason else stack.execution_state


def next_fire_at(stack: StackOut, now: float) -> datetime | None:
    """The next beat after now for a running stack (its own interval), else None."""
    if stack.execution_state != "running":
        return None
    return ts(slots.next_fire(now, stack.interval_s))


def slot_time(slot: int, interval: int) -> datetime:
    """When a slot began: a slot is floor(t / interval)."""
    return ts(slots.slot_time(slot, interval))


def success_rate(stack: StackOut) -> str:
    c = stack.counts
    done = c.succeeded + c.failed + c.timed_out
    return "—" if done == 0 else f"{round(100 * c.succeeded / done)}%"
