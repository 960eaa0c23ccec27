"""The orchestrator's interfaces: what the bus and its subscriptions promise."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol


class Subscription(Protocol):
    async def wait(self, timeout: float | None = None) -> bool:
        """Return True once something was published since the last wait, False on timeout."""

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BusStatus:
    """How wake-ups travel now, for /readyz and the System page."""

    backend: str  # "in-process" | "redis"
    connected: bool  # False: Redis is away and readers poll the database
    since: float | None = None  # when it last connected or went away (epoch seconds)
    error: str | None = None  # why it is away


class Bus(Protocol):
    """Carries wake-ups after commit; the database stays the source of truth."""

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop subscribers live on (publishers may be on any thread)."""

    async def start(self) -> None:
        """Begin carrying wake-ups between processes (a no-op in one process)."""

    def publish(self, topics: frozenset[str]) -> None:
        """Thread-safe; called after the transaction that touched `topics` committed."""

    def subscribe(self, topic: str) -> Subscription: ...

    def status(self) -> BusStatus: ...

    async def close(self) -> None: ...
