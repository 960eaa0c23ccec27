"""Provider limits and breakers shared by the fleet, in Redis, asked only when the answer could
differ from what this process already knows.

`RedisLimiter` keeps a provider's minute in a sorted set (`{prefix}limit:{provider}:{model}`:
one member per request granted against a configured limit, scored by Redis's own clock,
carrying its tokens) and what the provider last reported (x-ratelimit-* headers, 429s) in a
hash beside it. `RedisBreaker` keeps a provider's breaker in a hash
(`{prefix}breaker:{provider}:{model}`): failures seen by any process open it for all, and the
half-open probe is a short lease only one process gets.

What needs Redis, and what does not:

- A request granted against a configured limit (rpm/tpm) is one atomic script that prunes,
  checks and reserves, so the whole fleet stays under the limit however many workers ask at
  once. Its refusal says when the minute frees: a full minute of requests is refused here,
  without Redis, until then (nothing but time frees a request); a full minute of tokens for
  `CACHE_S` at most (another worker's settlement may free tokens sooner), and only for calls
  needing as many tokens.
- A provider without a configured limit needs Redis only when its headers make a refusal
  possible. Each process keeps what the provider's headers and 429s told it, and the shared
  state as last read (at most every `CACHE_S`); while every count known is at least the margin
  above what this call needs, the call is granted here. The margin is the largest of
  `MARGIN_CALLS` calls (requests, or tokens of calls this size), `MARGIN_SHARE` of the limit the
  provider states, and what this process was granted over the last one to two seconds: well
  above what this process can spend before its next look, with room for the rest of the fleet.
  Near the limit, grants go through the script as above, which counts them fleet-wide.
- Headers are written only when they change a decision (remaining below the margin, or back
  above it where the fleet's state said otherwise), at most once per kind per
  `HEADER_WRITE_S` per process, both kinds in one script. A 429 is always written.
- A reservation is settled (its estimate replaced by the tokens used) only against a configured
  token limit, and only when the call used more than estimated or the estimate was
  `SETTLE_SHARE` of the limit too high; a smaller overestimate just keeps the fleet a little
  conservative.
- What this process learnt itself (a 429's retry-after, headers saying nothing is left) refuses
  here until it runs out; a 429 seen by another worker, once read, too (blocks only grow);
  another worker's headers saying nothing is left, for `CACHE_S` (a 429's retry-after may
  shorten them in Redis meanwhile).
- The breaker's state is cached for `CACHE_S`: known closed with no failures, calls pass and
  successes write nothing; known open, calls are skipped until its open-until, when Redis is
  asked for the probe (one process gets it fleet-wide). Once the cache is stale, one call asks
  Redis again while the others go on what was seen (closed) meanwhile. Failures are always
  written, and a success after failures resets the shared count; failures seen by any worker
  open the breaker in every worker within `CACHE_S`.

Redis being away turns each into its local twin (`ratelimit.RateLimiter`,
`breaker.CircuitBreaker`), the limiter with a conservative share: the configured budget divided
by the live workers of the fleet. That share keeps its own minute across Redis coming and
going, so a flapping Redis never hands a worker a fresh minute. The interfaces are those of the
local ones.

One module each: `limiter.py` (`RedisLimiter`), `breaker.py` (`RedisBreaker`), and `client.py`
(the Redis client they share, which stops asking for `HOLD_S` once Redis failed to answer).
"""

from __future__ import annotations

from collections.abc import Callable

from agents.llm.shared.breaker import RedisBreaker
from agents.llm.shared.client import CACHE_S, HOLD_S, GuardedRedis, connect
from agents.llm.shared.limiter import RedisLimiter, SharedReservation
from schema.clock import Clock

__all__ = ["CACHE_S", "HOLD_S", "GuardedRedis", "RedisBreaker", "RedisLimiter",
           "SharedLimits", "SharedReservation"]


class SharedLimits:
    """Where the chain's limiters and breakers live when the fleet shares a Redis."""

    def __init__(self, url: str, clock: Clock, *, prefix: str = "tickwork:",
                 workers: Callable[[], int] = lambda: 1) -> None:
        self._client = connect(url, clock)
        self._clock = clock
        self._prefix = prefix
        self._workers = workers

    def limiter(self, provider: str, model: str, rpm: int | None, tpm: int | None
                ) -> RedisLimiter:
        return RedisLimiter(self._client, f"{self._prefix}limit:{provider}:{model}", rpm, tpm,
                            self._clock, self._workers)

    def breaker(self, provider: str, model: str, threshold: int, cooldown_s: float
                ) -> RedisBreaker:
        return RedisBreaker(self._client, f"{self._prefix}breaker:{provider}:{model}",
                            threshold, cooldown_s, self._clock)

    async def aclose(self) -> None:
        await self._client.aclose()
