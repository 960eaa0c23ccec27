"""Provider limits and breakers shared by the fleet, in Redis: one atomic script per decision.

`RedisLimiter` keeps a provider's minute in a sorted set (`{prefix}limit:{provider}:{model}`:
one member per request granted, scored by Redis's own clock, carrying its tokens) and what the
provider last reported (x-ratelimit-* headers, 429s) in a hash beside it; `acquire` prunes,
checks and reserves in one script, so the whole fleet stays under a provider's limit however
many workers ask at once. `RedisBreaker` keeps a provider's breaker in a hash
(`{prefix}breaker:{provider}:{model}`): failures seen by any process open it for all, and the
half-open probe is a short lease only one process gets.

Redis being away turns each into its local twin (`ratelimit.RateLimiter`,
`breaker.CircuitBreaker`), the limiter with a conservative share: the configured budget divided
by the live workers of the fleet. The interfaces are those of the local ones.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from agents.llm.breaker import BreakerState, CircuitBreaker, Permit
from agents.llm.ratelimit import (
    BLOCK_WITHOUT_RETRY_AFTER_S,
    HEADER_VALID_S,
    Headroom,
    RateLimiter,
    Refusal,
    Reservation,
    _int,
    parse_duration,
)
from schema.clock import Clock

log = logging.getLogger("tickwork.llm")

# KEYS: window, state. ARGV: rpm (0: none), tpm (0: none), tokens, member.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, need = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
-- A request counts for 60 s and a little more: it reaches the provider a moment after it is
-- granted, and the provider's own minute must have let it go before the next one arrives.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60250)
local st = redis.call('HMGET', KEYS[2], 'blocked_until', 'req_left', 'req_until', 'tok_left',
                      'tok_until')
local blocked = tonumber(st[1] or '0')
if blocked > now then
  return {0, blocked - now, 'the provider answered 429; holding off until its retry-after'}
end
local n = redis.call('ZCARD', KEYS[1])
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local frees = 0
if oldest[2] then frees = tonumber(oldest[2]) + 60250 - now end
if rpm > 0 and n >= rpm then
  return {0, frees, rpm .. ' requests per minute used by the fleet'}
end
local used = 0
if tpm > 0 and n > 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    used = used + tonumber(string.match(m, ':(%d+)$'))
  end
  if used + need > tpm then
    return {0, frees, tpm .. ' tokens per minute used by the fleet (this call needs about '
            .. need .. ')'}
  end
end
local req_until, req_left = tonumber(st[3] or '0'), tonumber(st[2] or '1')
if req_until > now and req_left <= 0 then
  return {0, req_until - now, 'the provider reports no requests left'}
end
local tok_until, tok_left = tonumber(st[5] or '0'), tonumber(st[4] or '0')
if tok_until > now and tok_left < need then
  return {0, tok_until - now, 'the provider reports ' .. math.max(0, tok_left) ..
          ' tokens left (this call needs about ' .. need .. ')'}
end
redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. need)
redis.call('PEXPIRE', KEYS[1], 61000 + 250)
if req_until > now then redis.call('HINCRBY', KEYS[2], 'req_left', -1) end
if tok_until > now then redis.call('HINCRBY', KEYS[2], 'tok_left', -need) end
return {1, n + 1, used + need}
"""
# KEYS: window. ARGV: the reservation's member as granted, the member with the tokens used.
_SETTLE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[1], score, ARGV[2])
end
return 1
"""
# KEYS: state. ARGV: kind ('req' | 'tok'), remaining, valid for ms.
_HEADERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1] .. '_left', ARGV[2], ARGV[1] .. '_until', now + ARGV[3])
redis.call('PEXPIRE', KEYS[1], 3600000)
return 1
"""
# KEYS: state. ARGV: hold for ms, whether the provider gave a retry-after (1/0).
_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local hold_until = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('HGET', KEYS[1], 'blocked_until') or '0')
if hold_until > cur then redis.call('HSET', KEYS[1], 'blocked_until', hold_until) end
if ARGV[2] == '1' then
  for _, k in ipairs({'req_until', 'tok_until'}) do
    local v = tonumber(redis.call('HGET', KEYS[1], k) or '0')
    if v > hold_until then redis.call('HSET', KEYS[1], k, hold_until) end
  end
end
redis.call('PEXPIRE', KEYS[1], 3600000)
return 1
"""


@dataclass(slots=True)
class SharedReservation(Reservation):
    member: str = ""


class RedisLimiter:
    def __init__(self, client: Any, key: str, rpm: int | None, tpm: int | None, clock: Clock,
                 workers: Callable[[], int] = lambda: 1) -> None:
        self.rpm, self.tpm, self._clock = rpm, tpm, clock
        self._client = client
        self._window, self._state = f"{key}:window", f"{key}:state"
        self._acquire = client.register_script(_ACQUIRE)
        self._settle = client.register_script(_SETTLE)
        self._headers = client.register_script(_HEADERS)
        self._block = client.register_script(_BLOCK)
        self._workers = workers
        self._local: RateLimiter | None = None  # while Redis is away: this process's share
        self._known = Headroom(None, None, None, None, None, rpm, tpm)

    def _fallback(self) -> RateLimiter:
        n = max(1, self._workers())
        rpm, tpm = (None if v is None else max(1, v // n) for v in (self.rpm, self.tpm))
        if self._local is None or (self._local.rpm, self._local.tpm) != (rpm, tpm):
            self._local = RateLimiter(rpm, tpm, self._clock)
        return self._local

    def _away(self, exc: BaseException) -> None:
        if self._local is None:
            log.warning("Redis is away (%s): each worker now keeps 1/%d of the provider's "
                        "limit on its own", type(exc).__name__, max(1, self._workers()))

    async def acquire(self, tokens: int) -> Reservation | Refusal:
        member = secrets.token_hex(8)
        try:
            granted, a, b = await self._acquire(
                keys=[self._window, self._state],
                args=[self.rpm or 0, self.tpm or 0, max(0, int(tokens)), member])
        except Exception as exc:
            self._away(exc)
            return await self._fallback().acquire(tokens)
        self._local = None
        if not granted:
            reason = b.decode() if isinstance(b, bytes) else str(b)
            return Refusal(reason, max(0.0, int(a) / 1000))
        self._known = Headroom(
            requests_left=None if self.rpm is None else max(0, self.rpm - int(a)),
            tokens_left=None if self.tpm is None else max(0, self.tpm - int(b)),
            requests_reset_s=None, tokens_reset_s=None, blocked_for_s=None,
            rpm=self.rpm, tpm=self.tpm)
        return SharedReservation(self._clock.monotonic(), tokens, member)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        if not isinstance(reservation, SharedReservation):
            await self._fallback().settle(reservation, used_tokens)
            return
        granted = f"{reservation.member}:{reservation.tokens}"
        reservation.tokens = max(0, used_tokens)
        try:
            await self._settle(keys=[self._window], args=[
                granted, f"{reservation.member}:{reservation.tokens}"])
        except Exception as exc:
            self._away(exc)

    async def observe_headers(self, headers: Mapping[str, str]) -> None:
        try:
            for kind, short in (("requests", "req"), ("tokens", "tok")):
                remaining = _int(headers.get(f"x-ratelimit-remaining-{kind}"))
                if remaining is None:
                    continue
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                valid_ms = int((HEADER_VALID_S if reset is None else reset) * 1000)
                await self._headers(keys=[self._state], args=[short, remaining, valid_ms])
        except Exception as exc:
            self._away(exc)
            await self._fallback().observe_headers(headers)

    async def rate_limited(self, retry_after_s: float | None) -> None:
        hold = BLOCK_WITHOUT_RETRY_AFTER_S if retry_after_s is None else max(0.0, retry_after_s)
        try:
            await self._block(keys=[self._state],
                              args=[int(hold * 1000), 1 if retry_after_s is not None else 0])
        except Exception as exc:
            self._away(exc)
            await self._fallback().rate_limited(retry_after_s)

    def headroom(self) -> Headroom:
        return self._local.headroom() if self._local is not None else self._known


# KEYS: breaker. ARGV: probe lease ms.
_ALLOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'open_until', 'probe_until')
local open_until, probe_until = tonumber(st[1] or '0'), tonumber(st[2] or '0')
if open_until == 0 then return 'call' end
if now < open_until or probe_until > now then return 'skip' end
redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[1]))
return 'probe'
"""
# KEYS: breaker. ARGV: outcome (ok | failed | released), permit (call | probe), threshold,
# cool-down ms, epoch seconds now (for opened_at).
_REPORT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local st = redis.call('HMGET', KEYS[1], 'failures', 'open_until')
local failures, open_until = tonumber(st[1] or '0'), tonumber(st[2] or '0')
local outcome, permit = ARGV[1], ARGV[2]
if permit == 'probe' then redis.call('HSET', KEYS[1], 'probe_until', 0) end
if outcome == 'ok' then
  if permit == 'probe' then
    redis.call('HSET', KEYS[1], 'failures', 0, 'open_until', 0)
  elseif open_until == 0 then
    redis.call('HSET', KEYS[1], 'failures', 0)
  end
elseif outcome == 'failed' then
  if permit == 'probe' or open_until == 0 then
    failures = failures + 1
    redis.call('HSET', KEYS[1], 'failures', failures)
    if permit == 'probe' or failures >= tonumber(ARGV[3]) then
      redis.call('HSET', KEYS[1], 'open_until', now + tonumber(ARGV[4]), 'opened_at', ARGV[5])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], 86400000)
return 1
"""
PROBE_LEASE_S = 30.0  # a probe whose process died frees the half-open state after this


class RedisBreaker:
    """The breaker's state in Redis; the interface of `CircuitBreaker`."""

    def __init__(self, client: Any, key: str, threshold: int, cooldown_s: float,
                 clock: Clock) -> None:
        self.threshold, self.cooldown_s, self._clock = threshold, cooldown_s, clock
        self._key = key
        self._allow = client.register_script(_ALLOW)
        self._report = client.register_script(_REPORT)
        self._client = client
        self._local = CircuitBreaker(threshold, cooldown_s, clock)
        self._shared = True
        self._last = BreakerState("closed", 0, None, None, False)

    def _away(self, exc: BaseException) -> None:
        if self._shared:
            log.warning("Redis is away (%s): this process's breaker decides alone",
                        type(exc).__name__)
        self._shared = False

    async def allow(self) -> Permit | None:
        try:
            verdict = await self._allow(keys=[self._key], args=[int(PROBE_LEASE_S * 1000)])
        except Exception as exc:
            self._away(exc)
            return await self._local.allow()
        self._shared = True
        verdict = verdict.decode() if isinstance(verdict, bytes) else str(verdict)
        return {"call": Permit.CALL, "probe": Permit.PROBE}.get(verdict)

    async def _tell(self, outcome: str, permit: Permit) -> None:
        try:
            await self._report(keys=[self._key], args=[
                outcome, permit.value, self.threshold, int(self.cooldown_s * 1000),
                self._clock.now()])
        except Exception as exc:
            self._away(exc)
            await getattr(self._local, {"ok": "succeeded", "failed": "failed",
                                        "released": "released"}[outcome])(permit)

    async def succeeded(self, permit: Permit) -> None:
        await self._tell("ok", permit)

    async def failed(self, permit: Permit) -> None:
        await self._tell("failed", permit)

    async def released(self, permit: Permit) -> None:
        await self._tell("released", permit)

    async def refresh(self) -> BreakerState:
        """Read the shared state (for health views)."""
        try:
            raw = await self._client.hmget(self._key, "failures", "open_until", "probe_until",
                                           "opened_at")
            now_ms = self._clock.now() * 1000
        except Exception as exc:
            self._away(exc)
            return self._local.snapshot()
        failures, open_until, probe_until, opened_at = (float(v) if v else 0.0 for v in raw)
        if not open_until:
            state = "closed"
        elif now_ms < open_until:
            state = "open"
        else:
            state = "half_open"
        self._last = BreakerState(state, int(failures), opened_at or None,  # type: ignore[arg-type]
                                  (open_until - now_ms) / 1000 if state == "open" else None,
                                  state == "half_open" and probe_until > now_ms)
        return self._last

    def snapshot(self) -> BreakerState:
        return self._last if self._shared else self._local.snapshot()


class SharedLimits:
    """Where the chain's limiters and breakers live when the fleet shares a Redis."""

    def __init__(self, url: str, clock: Clock, *, prefix: str = "tickwork:",
                 workers: Callable[[], int] = lambda: 1) -> None:
        import redis.asyncio as aioredis

        self._client = aioredis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
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
