"""The bus: wake-ups after commit, so workers and event readers need not poll.

One module per backend, both behind `orchestrator.interfaces.Bus`: `inprocess.InProcessBus`
(one process) and `redis.RedisBus` (every process that shares a Redis). The database stays
the source of truth: a wake-up that is lost only delays a reader to its next poll.
"""

from __future__ import annotations

from orchestrator.bus.inprocess import InProcessBus, InProcessSubscription
from orchestrator.bus.redis import RedisBus
from orchestrator.interfaces import Bus
from schema.clock import Clock

__all__ = ["InProcessBus", "InProcessSubscription", "RedisBus", "open_bus"]


def open_bus(redis_url: str | None, clock: Clock, *, prefix: str = "tickwork:",
             sender: str = "") -> Bus:
    """The Redis bus when a Redis URL is set, else the in-process one."""
    if redis_url:
        return RedisBus(redis_url, clock, prefix=prefix, sender=sender)
    return InProcessBus(clock)
