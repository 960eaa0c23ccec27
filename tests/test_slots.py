"""Slot maths: which slot a time is in, when the beat fires next, which stacks are due, and
which slots a (possibly late) fire fans out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.slots import is_due, next_fire, slot_of, slot_time, slots_to_fire

T0 = 1_800_000_000  # a slot boundary for every interval used here


def test_slot_of_floors_to_the_interval() -> None:
    assert slot_of(T0, 10) == T0 // 10
    assert slot_of(T0 + 0.001, 10) == T0 // 10
    assert slot_of(T0 + 9.999, 10) == T0 // 10
    assert slot_of(T0 + 10, 10) == T0 // 10 + 1
    assert slot_of(T0 - 0.001, 10) == T0 // 10 - 1
    assert slot_of(-0.5, 10) == -1  # floor, not truncation


def test_slot_time_is_the_slot_start() -> None:
    assert slot_time(slot_of(T0 + 7.5, 10), 10) == T0
    assert slot_time(3, 60) == 180


def test_next_fire_is_strictly_after() -> None:
    assert next_fire(T0, 10) == T0 + 10  # on a boundary: the next one, not this one
    assert next_fire(T0 + 0.5, 10) == T0 + 10
    assert next_fire(T0 + 9.999, 10) == T0 + 10
    assert next_fire(T0 + 10, 10) == T0 + 20
    assert next_fire(T0 + 1, 60) == T0 + 60


def test_a_stack_without_its_own_interval_is_due_every_slot() -> None:
    assert all(is_due(s, 10, None) for s in range(100, 120))


def test_a_stack_with_interval_30_on_a_10s_beat_is_due_every_third_slot() -> None:
    first = slot_of(T0, 10)  # T0 is a multiple of 30
    due = [s - first for s in range(first, first + 9) if is_due(s, 10, 30)]
    assert due == [0, 3, 6]


def test_a_stack_whose_interval_equals_the_beat_is_due_every_slot() -> None:
    assert all(is_due(s, 10, 10) for s in range(50))


def test_first_fire_fans_out_the_current_slot_only() -> None:
    assert slots_to_fire(None, T0 + 3, 10, catchup=6) == [slot_of(T0, 10)]


def test_a_second_fire_in_the_same_slot_fans_out_nothing() -> None:
    current = slot_of(T0, 10)
    assert slots_to_fire(current, T0 + 9.9, 10, catchup=6) == []


def test_a_clock_stepped_back_refires_no_slot() -> None:
    current = slot_of(T0, 10)
    assert slots_to_fire(current + 3, T0, 10, catchup=6) == []


def test_an_on_time_fire_fans_out_the_next_slot() -> None:
    current = slot_of(T0, 10)
    assert slots_to_fire(current - 1, T0, 10, catchup=6) == [current]


def test_a_late_fire_catches_up_missed_slots_oldest_first() -> None:
    current = slot_of(T0, 10)
    assert slots_to_fire(current - 4, T0 + 1, 10, catchup=6) == [
        current - 3, current - 2, current - 1, current]


def test_catch_up_is_bounded() -> None:
    current = slot_of(T0, 10)
    fired = slots_to_fire(current - 1000, T0, 10, catchup=6)
    assert fired == list(range(current - 6, current + 1))
    assert slots_to_fire(current - 1000, T0, 10, catchup=0) == [current]


@pytest.mark.parametrize("interval", [1, 10, 30, 60, 3600])
def test_next_fire_starts_the_following_slot(interval: int) -> None:
    t = T0 + interval * 2.5
    assert slot_of(next_fire(t, interval), interval) == slot_of(t, interval) + 1


times = st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False)
intervals = st.integers(min_value=1, max_value=86_400)


@settings(max_examples=300, derandomize=True, database=None)
@given(t=times, interval=intervals)
def test_slot_contains_its_time_and_next_fire_ends_it(t: float, interval: int) -> None:
    slot = slot_of(t, interval)
    assert slot_time(slot, interval) <= t < slot_time(slot + 1, interval)
    assert next_fire(t, interval) == slot_time(slot + 1, interval)
    assert next_fire(t, interval) > t


@settings(max_examples=300, derandomize=True, database=None)
@given(t=times, interval=intervals, back=st.one_of(st.integers(min_value=-50, max_value=0),
                                         st.integers(min_value=1, max_value=2000)),
       catchup=st.integers(min_value=0, max_value=20), never=st.booleans())
def test_slots_to_fire_never_repeats_never_skips_the_current_and_stays_bounded(
        t: float, interval: int, back: int, catchup: int, never: bool) -> None:
    current = slot_of(t, interval)
    last = None if never else current - back
    fired = slots_to_fire(last, t, interval, catchup)
    # Never a slot fired before, never a slot from the future, ascending, no duplicates.
    assert fired == sorted(set(fired))
    assert all(s <= current for s in fired)
    if last is not None:
        assert all(s > last for s in fired)
    # The current slot is fired exactly when it was not fired already.
    assert (current in fired) == (last is None or last < current)
    # Catch-up never fans out more than `catchup` missed slots.
    assert len(fired) <= catchup + 1
    # Within the bound, nothing missed is dropped.
    if last is not None and 0 < current - last <= catchup + 1:
        assert fired == list(range(last + 1, current + 1))


@settings(max_examples=200, derandomize=True, database=None)
@given(slot=st.integers(min_value=0, max_value=10**9), beat=st.sampled_from([1, 5, 10, 30]),
       multiple=st.integers(min_value=1, max_value=12))
def test_a_stack_interval_is_due_once_per_interval(slot: int, beat: int, multiple: int) -> None:
    stack_interval = beat * multiple
    window = range(slot, slot + multiple)  # `multiple` consecutive beats span one interval
    assert sum(is_due(s, beat, stack_interval) for s in window) == 1
