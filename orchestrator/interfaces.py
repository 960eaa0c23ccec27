"""The orchestrator's interfaces: what the bus and its subscriptions promise."""

from __future__ import annotations

from typing import Protocol


class Subscription(Protocol):
    async def wait(self, timeout: float | None = None) -> bool:
        """Return True once something was published since the last wait, False on timeout."""

    def close(self) -> None: ...


class Bus(Protocol):
    """Carries wake-ups after commit; the database stays the source of truth."""

    def publish(self, topics: frozenset[str]) -> None:
        """Thread-safe; called after the transaction that touched `topics` committed."""

    def subscribe(self, topic: str) -> Subscription: ...

    async def close(self) -> None: ...
