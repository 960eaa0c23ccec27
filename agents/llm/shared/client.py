"""The Redis client the fleet's limits and breakers share, and what both modules use.

`GuardedRedis` is redis-py's asyncio client that, once Redis has failed to answer (refused,
timed out, dropped), fails every command at once for `HOLD_S` instead of trying again: while
Redis hangs, each model call would otherwise wait for a socket timeout before its limiter and
breaker fall back to their local twins. A reply that is an error (a missing script, say) is an
answer, not an absence.
"""

from __future__ import annotations

from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from schema.clock import Clock

CACHE_S = 0.25  # the shared breaker state and the shared limit state are trusted this long
HOLD_S = 1.0  # after Redis failed to answer, it is not asked again for this long
POOL = 32  # connections a process's limiters and breakers share


class RedisAway(RedisConnectionError):
    """Redis failed to answer moments ago; it is not asked again yet."""


class GuardedRedis(aioredis.Redis):
    clock: Clock | None = None
    _down_until = float("-inf")

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        now = self.clock.monotonic() if self.clock is not None else 0.0
        if now < self._down_until:
            raise RedisAway("Redis failed to answer moments ago")
        try:
            return await super().execute_command(*args, **options)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            self._down_until = (self.clock.monotonic() if self.clock is not None else 0.0) \
                + HOLD_S
            raise


def connect(url: str, clock: Clock, connections: int = POOL) -> GuardedRedis:
    """A client whose commands share `connections` connections, waiting for a free one: at a
    slot's start hundreds of calls may ask at once, and an unbounded pool would open a
    connection each (redis-py's default pool refuses past 100, which would read as Redis
    being away)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=connections, timeout=1, socket_timeout=1,
        socket_connect_timeout=1)
    client = cast(GuardedRedis, GuardedRedis.from_pool(pool))  # closing it closes the pool
    client.clock = clock
    return client


def text_of(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
