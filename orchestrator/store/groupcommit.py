"""Group commit: writes that arrive together share one transaction.

Run one by one, each journaled step pays for its own transaction: a BEGIN, a dozen statements
with their round trips, a COMMIT (on SQLite, one WAL write of every page it touched), and two
thread hand-offs. Here the first write of a group waits for company on the event loop; then
one thread takes everything queued and runs it as one group (`run_group(items)`: one
transaction, multi-row statements, see `steps.commit_steps`). Writes queued while a group runs
go in the next group, which starts once its first write has waited too (at once if it already
has). One group runs at a time, and the thread gives way between groups, so other writes (a
claim) never wait behind a stream of them.

How long a group waits follows the load: `WAIT_PER_WRITE_S` for each write a second arriving
(an average over the last few seconds), at most `window_s`. A quiet process commits a step
within milliseconds (its events reach the dashboard at once); a busy one, whose CPU is the
scarce thing, lets a step wait longer and shares each transaction among many more (at 400
steps a second, 100 ms and ~40 steps a group: on SQLite 2.5 -> 1.9 ms of CPU a tick at 1,000
stacks, `load_tests.engine`). A step's wait adds to its tick's duration and to its events' way
to the dashboard, never to when work starts.

Each write keeps its own outcome. If a group fails as a whole (after the database's retries
of transient failures), each of its writes runs again in a group of its own, so one bad
write fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Generic, TypeVar

I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")  # its outcome

Job = tuple[Any, "asyncio.Future[Any]", asyncio.AbstractEventLoop, float]  # (…, queued at)
WAIT_PER_WRITE_S = 0.00025  # a group's wait per write a second arriving (400/s: 100 ms)
RATE_HALF_LIFE_S = 2.0  # how quickly the arrival rate the wait follows forgets
_DECAY = math.log(2) / RATE_HALF_LIFE_S  # a steady r writes a second weigh r / _DECAY
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class GroupCommit(Generic[I, R]):
    def __init__(self, run_group: Callable[[list[I]], list[R]], executor: Executor,
                 window_s: float = 0.0, max_group: int = 500) -> None:
        """`run_group(items)` writes items in one transaction and returns one outcome each;
        it runs on `executor`'s threads."""
        self._run_group = run_group
        self._executor = executor
        self._window_s = window_s
        self._max = max_group
        self._lock = threading.Lock()
        self._queue: list[Job] = []
        self._draining = False
        self._recent = 0.0  # writes, each counted less as it ages (half-life RATE_HALF_LIFE_S)
        self._recent_at = time.monotonic()

    @property
    def rate(self) -> float:
        """Writes a second arriving lately."""
        return self._recent * _DECAY * 0.5 ** ((time.monotonic() - self._recent_at)
                                               / RATE_HALF_LIFE_S)

    def wait_s(self) -> float:
        """How long the next group waits for company, at the current arrival rate."""
        return min(self._window_s, self.rate * WAIT_PER_WRITE_S)

    def _arrived(self, now: float) -> None:
        self._recent = self._recent * 0.5 ** ((now - self._recent_at) / RATE_HALF_LIFE_S) + 1
        self._recent_at = now

    async def write(self, item: I) -> R:
        """Queue `item` for the next group; its outcome once that group committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        now = time.monotonic()
        with self._lock:
            self._arrived(now)
            self._queue.append((item, future, loop, now))
            start = not self._draining
            self._draining = True
        if start:
            if self._window_s > 0:  # at least until the writes of this moment have arrived
                loop.call_later(self.wait_s(), self._submit)
            else:
                self._submit()
        return await future

    def _submit(self) -> None:
        try:
            self._executor.submit(self._drain_one)
        except RuntimeError:  # the database was closed: what is queued fails, nothing hangs
            with self._lock:
                jobs, self._queue, self._draining = self._queue, [], False
            for _, future, loop, _ in jobs:
                failed: list[Outcome] = [(future, None, RuntimeError("the database is closed"))]
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, failed)

    def _drain_one(self) -> None:
        with self._lock:
            jobs, self._queue = self._queue[: self._max], self._queue[self._max :]
        if jobs:
            outcomes = self._run(jobs)
            by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
            for (_, _, loop, _), outcome in zip(jobs, outcomes, strict=True):
                by_loop.setdefault(loop, []).append(outcome)
            for loop, done in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop has closed
                    loop.call_soon_threadsafe(_settle, done)
        with self._lock:
            if not self._queue:
                self._draining = False
                return
            _, _, loop, queued_at = self._queue[0]
        wait = self.wait_s() - (time.monotonic() - queued_at)
        if wait <= 0:
            self._submit()  # behind whatever else the thread was given meanwhile
            return
        try:
            loop.call_soon_threadsafe(loop.call_later, wait, self._submit)
        except RuntimeError:  # that loop has closed
            self._submit()

    def _run(self, jobs: list[Job]) -> list[Outcome]:
        if len(jobs) > 1:
            try:
                results = self._run_group([item for item, _, _, _ in jobs])
                return [(future, result, None)
                        for (_, future, _, _), result in zip(jobs, results, strict=True)]
            except Exception:  # rolled back: each runs again on its own
                pass
        return [self._alone(item, future) for item, future, _, _ in jobs]

    def _alone(self, item: I, future: asyncio.Future[Any]) -> Outcome:
        try:
            return future, self._run_group([item])[0], None
        except Exception as exc:  # handed to the coroutine waiting for it
            return future, None, exc


def _settle(outcomes: list[Outcome]) -> None:
    for future, result, error in outcomes:
        if future.done():  # its waiter was cancelled
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
