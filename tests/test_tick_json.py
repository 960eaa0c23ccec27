"""The tick JSON every tick event carries is built by hand for speed: it must stay exactly what
the API's TickSummary model serialises."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from schema.read import tick_json, tick_summary

times = st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False)
maybe = st.none() | times


@given(st.fixed_dictionaries({
    "id": st.integers(1, 2**40), "stack_id": st.integers(1, 2**31),
    "slot": st.none() | st.integers(0, 2**40), "trigger": st.sampled_from(["beat", "start",
                                                                          "manual"]),
    "status": st.sampled_from(["queued", "running", "succeeded", "failed", "skipped",
                               "cancelled", "timed_out"]),
    "attempt": st.integers(1, 5), "reason": st.none() | st.text(max_size=20),
    "queued_at": times, "scheduled_at": times, "started_at": maybe, "finished_at": maybe,
    "input_tokens": st.integers(0, 10**7), "output_tokens": st.integers(0, 10**7),
    "cost_usd": st.floats(0, 1000, allow_nan=False)}))
def test_tick_json_is_the_models_serialisation(row: dict[str, object]) -> None:
    assert tick_json(row) == tick_summary(row).model_dump(mode="json")
