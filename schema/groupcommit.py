"""Group commit: writes queued while the single writer is busy share its next transaction.

On SQLite every write goes through one writer thread. Run one by one, each write pays for
its own BEGIN and COMMIT and for two thread hand-offs; at hundreds of journaled steps a second
that is most of the engine's CPU. Here a write that arrives while the writer is busy waits
in a queue, and the writer takes everything queued so far into one transaction. Nothing waits
for a timer: a write that finds the writer idle starts at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from sqlalchemy import Connection

Job = tuple[Callable[[Connection], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class GroupCommit:
    def __init__(self, write: Callable[[], contextlib.AbstractContextManager[Connection]],
                 executor: Executor, max_group: int = 256) -> None:
        self._write = write
        self._executor = executor
        self._max = max_group
        self._lock = threading.Lock()
        self._queue: list[Job] = []
        self._draining = False

    def add(self, fn: Callable[[Connection], Any], future: asyncio.Future[Any],
            loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._queue.append((fn, future, loop))
            if self._draining:
                return
            self._draining = True
        self._executor.submit(self._drain)

    def _take(self) -> list[Job]:
        with self._lock:
            jobs, self._queue = self._queue[: self._max], self._queue[self._max :]
            if not jobs:
                self._draining = False
            return jobs

    def _drain(self) -> None:
        while jobs := self._take():
            outcomes = self._run(jobs)
            by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
            for (_, _, loop), outcome in zip(jobs, outcomes, strict=True):
                by_loop.setdefault(loop, []).append(outcome)
            for loop, done in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop has closed
                    loop.call_soon_threadsafe(_settle, done)

    def _run(self, jobs: list[Job]) -> list[Outcome]:
        if len(jobs) > 1:
            try:
                with self._write() as conn:
                    results = [fn(conn) for fn, _, _ in jobs]
                return [(future, result, None)
                        for (_, future, _), result in zip(jobs, results, strict=True)]
            except Exception:  # rolled back: each runs again on its own
                pass
        return [self._alone(fn, future) for fn, future, _ in jobs]

    def _alone(self, fn: Callable[[Connection], Any], future: asyncio.Future[Any]) -> Outcome:
        try:
            with self._write() as conn:
                return future, fn(conn), None
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


