"""The in-process bus: wake-ups after commit, for the workers (queue) and readers (events).

`publish` may be called from any thread (database writes run on a thread pool); subscribers
live on one event loop. Notifications coalesce: a subscription remembers only that something
happened since it last waited, and the reader then asks the database what.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

from orchestrator.interfaces import BusStatus
from schema.clock import Clock


class InProcessSubscription:
    def __init__(self, bus: InProcessBus, topic: str) -> None:
        self._bus = bus
        self._topic = topic
        self._event = asyncio.Event()

    def _notify(self) -> None:
        self._event.set()

    async def wait(self, timeout: float | None = None) -> bool:
        if not self._event.is_set():
            if timeout is None:
                await self._event.wait()
            else:
                waiter = asyncio.ensure_future(self._event.wait())
                sleeper = asyncio.ensure_future(self._bus.clock.sleep(timeout))
                try:
                    await asyncio.wait({waiter, sleeper}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    sleeper.cancel()
        notified = self._event.is_set()
        self._event.clear()
        return notified

    def close(self) -> None:
        self._bus._subs[self._topic].discard(self)


class InProcessBus:
    def __init__(self, clock: Clock, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.clock = clock
        self._loop = loop
        self._subs: dict[str, set[InProcessSubscription]] = defaultdict(set)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    async def start(self) -> None:
        return None

    def status(self) -> BusStatus:
        return BusStatus("in-process", True)

    def subscribe(self, topic: str) -> InProcessSubscription:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        sub = InProcessSubscription(self, topic)
        self._subs[topic].add(sub)
        return sub

    def publish(self, topics: frozenset[str]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(topics)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._deliver, topics)

    def deliver(self, topics: frozenset[str]) -> None:
        """Wake this process's subscribers of `topics` (on the bound loop)."""
        self._deliver(topics)

    def _deliver(self, topics: frozenset[str]) -> None:
        for topic in topics:
            for sub in list(self._subs.get(topic, ())):
                sub._notify()

    async def close(self) -> None:
        self._subs.clear()
