"""A provider's circuit breaker shared by the fleet, in Redis: `RedisBreaker`, the interface of
`breaker.CircuitBreaker` (see the package's docstring)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents.llm.breaker import BreakerState, CircuitBreaker, Permit
from agents.llm.shared.client import CACHE_S, text_of
from schema.clock import Clock

log = logging.getLogger("tickwork.llm")

# Every breaker script returns {verdict, failures, open (1/0), ms until open-until, ms until
# the probe's lease ends, opened_at}, relative to Redis's clock.
_BREAKER_STATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function state(verdict)
  local st = redis.call('HMGET', KEYS[1], 'failures', 'open_until', 'probe_until', 'opened_at')
  local open_until = tonumber(st[2] or '0')
  local opened = 0
  if open_until > 0 then opened = 1 end
  return {verdict, tonumber(st[1] or '0'), opened, math.max(0, open_until - now),
          math.max(0, tonumber(st[3] or '0') - now), st[4] or ''}
end
"""
# KEYS: breaker. ARGV: probe lease ms.
_ALLOW = _BREAKER_STATE + """
local st = redis.call('HMGET', KEYS[1], 'open_until', 'probe_until')
local open_until, probe_until = tonumber(st[1] or '0'), tonumber(st[2] or '0')
if open_until == 0 then return state('call') end
if now < open_until or probe_until > now then return state('skip') end
redis.call('HSET', KEYS[1], 'probe_until', now + tonumber(ARGV[1]))
return state('probe')
"""
# KEYS: breaker. ARGV: outcome (ok | failed | released), permit (call | probe), threshold,
# cool-down ms, epoch seconds now (for opened_at).
_REPORT = _BREAKER_STATE + """
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
return state('')
"""
# KEYS: breaker.
_READ_BREAKER = _BREAKER_STATE + """
return state('')
"""
PROBE_LEASE_S = 30.0  # a probe whose process died frees the half-open state after this


@dataclass(frozen=True, slots=True)
class _Seen:
    """The shared breaker as last read, on this process's monotonic clock."""

    failures: int
    open: bool
    open_until: float
    probe_until: float
    opened_at: float | None
    at: float

    def state(self, now: float) -> BreakerState:
        if not self.open:
            return BreakerState("closed", self.failures, self.opened_at, None, False)
        if now < self.open_until:
            return BreakerState("open", self.failures, self.opened_at, self.open_until - now,
                                False)
        return BreakerState("half_open", self.failures, self.opened_at, None,
                            now < self.probe_until)


class RedisBreaker:
    """The breaker's state in Redis, cached here for `CACHE_S`; the interface of
    `CircuitBreaker`."""

    def __init__(self, client: Any, key: str, threshold: int, cooldown_s: float,
                 clock: Clock) -> None:
        self.threshold, self.cooldown_s, self._clock = threshold, cooldown_s, clock
        self._key = key
        self._allow = client.register_script(_ALLOW)
        self._report = client.register_script(_REPORT)
        self._read = client.register_script(_READ_BREAKER)
        self._client = client
        self._local = CircuitBreaker(threshold, cooldown_s, clock)
        self._shared = True
        self._seen: _Seen | None = None
        self._asking = False  # an allow() is asking Redis: the others go on what was seen

    def _away(self, exc: BaseException) -> None:
        if self._shared:
            log.warning("Redis is away (%s): this process's breaker decides alone",
                        type(exc).__name__)
        self._shared = False

    def _heard(self, reply: Sequence[Any]) -> str:
        """Cache the state a script returned; its verdict."""
        verdict, failures, opened, open_ms, probe_ms, opened_at = reply
        now = self._clock.monotonic()
        self._shared = True
        self._seen = _Seen(int(failures), bool(int(opened)), now + int(open_ms) / 1000,
                           now + int(probe_ms) / 1000, float(text_of(opened_at) or 0) or None, now)
        return text_of(verdict)

    def _known(self, now: float) -> _Seen | None:
        """The cached state while it may be trusted: open until its open-until, else for
        `CACHE_S`."""
        seen = self._seen if self._shared else None
        if seen is None:
            return None
        if (seen.open and now < seen.open_until) or now < seen.at + CACHE_S:
            return seen
        return None

    async def allow(self) -> Permit | None:
        now = self._clock.monotonic()
        seen = self._known(now)
        if seen is not None:
            if not seen.open and seen.failures == 0:
                return Permit.CALL
            if seen.open and (now < seen.open_until or now < seen.probe_until):
                return None  # open, or half-open with a probe in flight
        elif self._asking and self._seen is not None and not self._seen.open \
                and self._seen.failures == 0 and self._shared:
            return Permit.CALL  # closed when last seen, and already being asked again
        self._asking = True
        try:
            reply = await self._allow(keys=[self._key], args=[int(PROBE_LEASE_S * 1000)])
        except Exception as exc:
            self._away(exc)
            return await self._local.allow()
        finally:
            self._asking = False
        return {"call": Permit.CALL, "probe": Permit.PROBE}.get(self._heard(reply))

    async def _tell(self, outcome: str, permit: Permit) -> None:
        try:
            reply = await self._report(keys=[self._key], args=[
                outcome, permit.value, self.threshold, int(self.cooldown_s * 1000),
                self._clock.now()])
        except Exception as exc:
            self._away(exc)
            await getattr(self._local, {"ok": "succeeded", "failed": "failed",
                                        "released": "released"}[outcome])(permit)
            return
        self._heard(reply)

    async def succeeded(self, permit: Permit) -> None:
        seen = self._seen if self._shared else None
        if permit is Permit.CALL and seen is not None and (seen.open or seen.failures == 0):
            return  # nothing to reset; and only the probe closes an open breaker
        await self._tell("ok", permit)

    async def failed(self, permit: Permit) -> None:
        await self._tell("failed", permit)

    async def released(self, permit: Permit) -> None:
        if permit is Permit.PROBE:  # an ordinary call ending without a verdict changes nothing
            await self._tell("released", permit)

    async def refresh(self) -> BreakerState:
        """The shared state (for health views): as cached while it may be trusted, else read."""
        now = self._clock.monotonic()
        seen = self._known(now)
        if seen is not None:
            return seen.state(now)
        try:
            reply = await self._read(keys=[self._key])
        except Exception as exc:
            self._away(exc)
            return self._local.snapshot()
        self._heard(reply)
        return self.snapshot()

    def snapshot(self) -> BreakerState:
        if not self._shared:
            return self._local.snapshot()
        if self._seen is None:
            return BreakerState("closed", 0, None, None, False)
        return self._seen.state(self._clock.monotonic())
