"""Slot maths: pure functions of a time and an interval (whole seconds).

slot = floor(t / interval); a slot's fire time is slot * interval. A stack with its own
interval (a multiple of the beat's) is due in the slots whose fire time it divides.
"""

from __future__ import annotations

import math


def slot_of(t: float, interval: int) -> int:
    return math.floor(t / interval)


def slot_time(slot: int, interval: int) -> int:
    return slot * interval


def next_fire(t: float, interval: int) -> int:
    """The first fire time strictly after t."""
    return slot_time(slot_of(t, interval) + 1, interval)


def is_due(slot: int, beat_interval: int, stack_interval: int | None) -> bool:
    if stack_interval is None:
        return True
    return slot_time(slot, beat_interval) % stack_interval == 0


def slots_to_fire(last_fired: int | None, now: float, interval: int, catchup: int) -> list[int]:
    """The slots a fire at `now` fans out: the current one, plus up to `catchup` slots missed
    since the last fire (a late or stalled beat), oldest first."""
    current = slot_of(now, interval)
    if last_fired is None:
        return [current]
    if last_fired >= current:  # fired already (or the clock stepped back): nothing new
        return []
    first = max(last_fired + 1, current - catchup)
    return list(range(first, current + 1))
