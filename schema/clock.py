"""Time as a dependency: domain code asks a Clock, never the wall clock.

`SystemClock` is the real one. `FakeClock` is for tests: time stands still until the test
advances it, and `sleep` returns once the fake time has reached its deadline.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (UTC)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for durations and deadlines."""

    async def sleep(self, seconds: float) -> None:
        """Wait until `seconds` have passed on this clock."""

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        """Call `callback` on the running loop once `seconds` have passed on this clock."""


class Cancellable(Protocol):
    def cancel(self) -> Any: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        return asyncio.get_running_loop().call_later(max(0.0, seconds), callback)


class FakeClock:
    """A clock that moves only when told to.

    `now()` and `monotonic()` move together. Sleepers wake, in deadline order, when `advance`
    or `set` carries the time past their deadline.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._start = start
        self._seq = itertools.count()
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._start

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Cancellable:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._seq), fut))
        fut.add_done_callback(lambda f: None if f.cancelled() else callback())
        return fut

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    def set(self, t: float) -> None:
        if t < self._now:
            raise ValueError("a clock does not go back")
        self._now = t
        while self._sleepers and self._sleepers[0][0] <= t:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)


async def within(clock: Clock, seconds: float, awaitable: Awaitable[T]) -> T:
    """Await `awaitable` in the current task; once `seconds` have passed on `clock`, cancel it
    and raise TimeoutError (asyncio.timeout, but on the injected clock). One timer, no task:
    it wraps every tick and every LLM attempt."""
    task = asyncio.current_task()
    assert task is not None, "within() runs inside a task"
    state = [False, False]  # expired, over

    def expire() -> None:
        if not state[1]:
            state[0] = True
            task.cancel()

    timer = clock.call_later(seconds, expire)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if state[0] and task.uncancel() == 0:
            raise TimeoutError(f"not done within {seconds:g} s") from None
        raise
    finally:
        state[1] = True
        timer.cancel()
