"""The fake clock and timeouts on it: time moves only when the test says so."""

from __future__ import annotations

import asyncio

import pytest

from schema.clock import FakeClock, within


def test_sleepers_wake_in_deadline_order_when_time_reaches_them() -> None:
    clock = FakeClock(100.0)
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    async def main() -> None:
        tasks = [asyncio.create_task(sleeper("late", 5)), asyncio.create_task(sleeper("soon", 2))]
        await asyncio.sleep(0)
        clock.advance(1.9)
        await asyncio.sleep(0)
        assert woke == []
        clock.advance(5)
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert woke == ["soon", "late"]
    with pytest.raises(ValueError):
        clock.set(50.0)


def test_within_times_out_on_the_injected_clock_only() -> None:
    clock = FakeClock()

    async def main() -> None:
        forever = asyncio.Event()
        waiting = asyncio.create_task(within(clock, 30, forever.wait()))
        await asyncio.sleep(0.01)  # real time passes; the fake clock does not move
        assert not waiting.done()
        clock.advance(30)
        with pytest.raises(TimeoutError):
            await waiting

    asyncio.run(main())


def test_within_returns_the_result_and_leaves_the_task_alone_afterwards() -> None:
    clock = FakeClock()

    async def answer() -> int:
        return 42

    async def main() -> None:
        assert await within(clock, 10, answer()) == 42
        clock.advance(10)  # the timer is gone: nothing is cancelled later
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(main())


def test_a_cancel_from_outside_stays_a_cancel() -> None:
    clock = FakeClock()

    async def main() -> None:
        task = asyncio.create_task(within(clock, 10, asyncio.Event().wait()))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
