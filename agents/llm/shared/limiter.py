"""A provider's rate limiter shared by the fleet, in Redis (see the package's docstring for what
needs Redis and what does not): `RedisLimiter`, the interface of `ratelimit.RateLimiter`."""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.llm.ratelimit import (
    BLOCK_WITHOUT_RETRY_AFTER_S,
    HEADER_VALID_S,
    SLACK_S,
    TYPICAL_COMPLETION_TOKENS,
    Headroom,
    RateLimiter,
    Refusal,
    Reservation,
    _int,
    parse_duration,
)
from agents.llm.shared.client import CACHE_S, text_of
from schema.clock import Clock

log = logging.getLogger("tickwork.llm")


HEADER_WRITE_S = 0.1  # a process writes a kind of header count at most this often
MARGIN_CALLS = 50  # below this many calls' worth left, a limit is decided in Redis
MARGIN_SHARE = 0.1  # ... or below this share of the limit the provider states
SPEND_WINDOW_S = 1.0  # what this process spends is counted per second
SETTLE_SHARE = 0.01  # an overestimate smaller than this share of the token limit stays

# Every limiter script ends by returning the provider's state as it stands, relative to
# Redis's clock: ms blocked by a 429, requests left and for how many ms, tokens left and for
# how many ms (0 ms: nothing known).
_NEWS = """
local function news(now)
  local st = redis.call('HMGET', KEYS[2], 'blocked_until', 'req_left', 'req_until',
                        'tok_left', 'tok_until')
  return {math.max(0, tonumber(st[1] or '0') - now), tonumber(st[2] or '0'),
          math.max(0, tonumber(st[3] or '0') - now), tonumber(st[4] or '0'),
          math.max(0, tonumber(st[5] or '0') - now)}
end
local function reply(head, now)
  for _, v in ipairs(news(now)) do table.insert(head, v) end
  return head
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
# KEYS: window, state. ARGV: rpm (0: none), tpm (0: none), tokens, member.
# Returns {granted, requests in the minute | wait ms, tokens in the minute | reason,
# '' | what is full (blocked, rpm, tpm, req, tok), news...}.
_ACQUIRE = _NEWS + """
local rpm, tpm, need = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local limited = rpm > 0 or tpm > 0
-- A request counts for 60 s and a little more: it reaches the provider a moment after it is
-- granted, and the provider's own minute must have let it go before the next one arrives.
if limited then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60250) end
local st = redis.call('HMGET', KEYS[2], 'blocked_until', 'req_left', 'req_until', 'tok_left',
                      'tok_until')
local blocked = tonumber(st[1] or '0')
if blocked > now then
  return reply({0, blocked - now, 'the provider answered 429; holding off until its retry-after',
                'blocked'}, now)
end
local n, used, frees = 0, 0, 0
if limited then
  n = redis.call('ZCARD', KEYS[1])
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if oldest[2] then frees = tonumber(oldest[2]) + 60250 - now end
end
if rpm > 0 and n >= rpm then
  return reply({0, frees, rpm .. ' requests per minute used by the fleet', 'rpm'}, now)
end
if tpm > 0 and n > 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    used = used + tonumber(string.match(m, ':(%d+)$'))
  end
  if used + need > tpm then
    return reply({0, frees, tpm .. ' tokens per minute used by the fleet (this call needs about '
                  .. need .. ')', 'tpm'}, now)
  end
end
local req_until, req_left = tonumber(st[3] or '0'), tonumber(st[2] or '1')
if req_until > now and req_left <= 0 then
  return reply({0, req_until - now, 'the provider reports no requests left', 'req'}, now)
end
local tok_until, tok_left = tonumber(st[5] or '0'), tonumber(st[4] or '0')
if tok_until > now and tok_left < need then
  return reply({0, tok_until - now, 'the provider reports ' .. math.max(0, tok_left) ..
                ' tokens left (this call needs about ' .. need .. ')', 'tok'}, now)
end
if limited then
  redis.call('ZADD', KEYS[1], now, ARGV[4] .. ':' .. need)
  redis.call('PEXPIRE', KEYS[1], 61000 + 250)
end
if req_until > now then redis.call('HINCRBY', KEYS[2], 'req_left', -1) end
if tok_until > now then redis.call('HINCRBY', KEYS[2], 'tok_left', -need) end
return reply({1, n + 1, used + need, ''}, now)
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
# KEYS: window (unused), state. Returns the news.
_READ = _NEWS + """
return news(now)
"""
# KEYS: window (unused), state. ARGV: requests left ('' if not written), valid for ms, tokens
# left ('' if not written), valid for ms. Returns the news.
_HEADERS = _NEWS + """
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[2], 'req_left', ARGV[1], 'req_until', now + tonumber(ARGV[2]))
end
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], 'tok_left', ARGV[3], 'tok_until', now + tonumber(ARGV[4]))
end
redis.call('PEXPIRE', KEYS[2], 3600000)
return news(now)
"""
# KEYS: window (unused), state. ARGV: hold for ms, whether the provider gave a retry-after
# (1/0). Returns the news.
_BLOCK = _NEWS + """
local hold_until = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('HGET', KEYS[2], 'blocked_until') or '0')
if hold_until > cur then redis.call('HSET', KEYS[2], 'blocked_until', hold_until) end
if ARGV[2] == '1' then
  for _, k in ipairs({'req_until', 'tok_until'}) do
    local v = tonumber(redis.call('HGET', KEYS[2], k) or '0')
    if v > hold_until then redis.call('HSET', KEYS[2], k, hold_until) end
  end
end
redis.call('PEXPIRE', KEYS[2], 3600000)
return news(now)
"""


@dataclass(slots=True)
class SharedReservation(Reservation):
    member: str = ""


@dataclass(slots=True)
class _Count:
    """A count the provider reported, less what was granted since; valid until `until`."""

    left: int
    until: float  # on this process's monotonic clock


@dataclass(slots=True)
class _News:
    """What the provider said: a 429's hold, and its counts of requests and tokens left."""

    blocked_until: float = 0.0
    req: _Count | None = None
    tok: _Count | None = None

    def count(self, kind: str, now: float) -> _Count | None:
        known = self.req if kind == "req" else self.tok
        return known if known is not None and now < known.until - SLACK_S else None

    def refusal(self, need: int, now: float, *, counts: bool = True) -> Refusal | None:
        if now < self.blocked_until - SLACK_S:
            return Refusal("the provider answered 429; holding off until its retry-after",
                           self.blocked_until - now)
        if not counts:
            return None
        req = self.count("req", now)
        if req is not None and req.left <= 0:
            return Refusal("the provider reports no requests left", req.until - now)
        tok = self.count("tok", now)
        if tok is not None and tok.left < need:
            return Refusal(f"the provider reports {max(0, tok.left)} tokens left (this call "
                           f"needs about {need})", tok.until - now)
        return None

    def spend(self, need: int) -> None:
        if self.req is not None:
            self.req.left -= 1
        if self.tok is not None:
            self.tok.left -= need

    def cap(self, until: float) -> None:
        """A 429's retry-after is the provider's word on when the next request may go."""
        for known in (self.req, self.tok):
            if known is not None:
                known.until = min(known.until, until)

    def read(self, raw: Sequence[Any], now: float) -> None:
        """Take the state a limiter script returned (see `_NEWS`)."""
        blocked_ms, req_left, req_ms, tok_left, tok_ms = (int(v) for v in raw)
        self.blocked_until = now + blocked_ms / 1000 if blocked_ms > 0 else 0.0
        self.req = _Count(req_left, now + req_ms / 1000) if req_ms > 0 else None
        self.tok = _Count(tok_left, now + tok_ms / 1000) if tok_ms > 0 else None


@dataclass(slots=True)
class _Full:
    """The fleet's configured minute is full for calls of `need` tokens or more (0: for every
    call) until `until`, as the script said."""

    until: float
    need: int
    reason: str


class RedisLimiter:
    def __init__(self, client: Any, key: str, rpm: int | None, tpm: int | None, clock: Clock,
                 workers: Callable[[], int] = lambda: 1) -> None:
        self.rpm, self.tpm, self._clock = rpm, tpm, clock
        self._client = client
        self._window, self._state = f"{key}:window", f"{key}:state"
        self._acquire = client.register_script(_ACQUIRE)
        self._settle = client.register_script(_SETTLE)
        self._read = client.register_script(_READ)
        self._headers = client.register_script(_HEADERS)
        self._block = client.register_script(_BLOCK)
        self._workers = workers
        self._local: RateLimiter | None = None  # this process's share while Redis is away
        self._asking = asyncio.Lock()  # the grant script, one call at a time
        self._away = False
        self._mine = _News()  # what this process's own responses said
        self._fleet = _News()  # the shared state, as last read or written
        self._fleet_at = -math.inf  # when it was
        self._full: _Full | None = None
        self._counted: tuple[int, int] | None = None  # the fleet's minute at the last grant
        self._stated: dict[str, int] = {}  # x-ratelimit-limit-*, by kind
        self._written = {"req": -math.inf, "tok": -math.inf}
        self._need = TYPICAL_COMPLETION_TOKENS  # the last call's tokens
        self._spend_at = -math.inf
        self._spent = (0, 0)  # requests and tokens granted this second
        self._spent_before = (0, 0)  # ... and the second before

    @property
    def _keys(self) -> list[str]:
        return [self._window, self._state]

    # -- Redis away and back ------------------------------------------------------------------

    def _fallback(self) -> RateLimiter:
        n = max(1, self._workers())
        rpm, tpm = (None if v is None else max(1, v // n) for v in (self.rpm, self.tpm))
        if self._local is None:
            self._local = RateLimiter(rpm, tpm, self._clock)
        else:  # the same minute, whatever the share now: Redis coming back does not end it
            self._local.rpm, self._local.tpm = rpm, tpm
        return self._local

    def _went_away(self, exc: BaseException) -> None:
        if not self._away:
            log.warning("Redis is away (%s): each worker now keeps 1/%d of the provider's "
                        "limit on its own", type(exc).__name__, max(1, self._workers()))
        self._away = True

    def _heard(self, news: Sequence[Any]) -> None:
        self._away = False
        self._fleet_at = self._clock.monotonic()
        self._fleet.read(news, self._fleet_at)

    # -- what this process knows --------------------------------------------------------------

    def _recent(self, now: float) -> tuple[int, int]:
        """Requests and tokens this process was granted over the last one to two seconds."""
        if now >= self._spend_at + SPEND_WINDOW_S:
            fresh = now < self._spend_at + 2 * SPEND_WINDOW_S
            self._spent_before = self._spent if fresh else (0, 0)
            self._spent, self._spend_at = (0, 0), now
        return (self._spent[0] + self._spent_before[0], self._spent[1] + self._spent_before[1])

    def _spend(self, need: int, now: float) -> None:
        self._recent(now)
        self._spent = (self._spent[0] + 1, self._spent[1] + need)
        self._mine.spend(need)

    def _margin(self, kind: str, now: float) -> int:
        stated = self._stated.get(kind)
        requests, tokens = self._recent(now)
        return max(MARGIN_CALLS * (1 if kind == "req" else max(1, self._need)),
                   math.ceil(MARGIN_SHARE * stated) if stated else 0,
                   requests if kind == "req" else tokens)

    def _known_refusal(self, need: int, now: float) -> Refusal | None:
        full = self._full
        if full is not None:
            if now >= full.until:
                self._full = None
            elif need >= full.need:
                return Refusal(full.reason, full.until - now)
        return (self._mine.refusal(need, now)
                or self._fleet.refusal(need, now, counts=now < self._fleet_at + CACHE_S))

    def _plenty(self, need: int, now: float) -> bool:
        """Whether every count known is at least the margin above this call."""
        req_margin, tok_margin = self._margin("req", now), self._margin("tok", now)
        for news in (self._mine, self._fleet):
            req, tok = news.count("req", now), news.count("tok", now)
            if req is not None and req.left < req_margin:
                return False
            if tok is not None and tok.left - need < tok_margin:
                return False
        return True

    # -- the Limiter interface ----------------------------------------------------------------

    async def acquire(self, tokens: int) -> Reservation | Refusal:
        now = self._clock.monotonic()
        need = max(0, int(tokens))
        self._need = need
        refusal = self._known_refusal(need, now)
        if refusal is not None:
            return refusal
        if self.rpm is None and self.tpm is None:
            if now >= self._fleet_at + CACHE_S:
                self._fleet_at = now  # one look at a time
                try:
                    self._heard(await self._read(keys=self._keys))
                except Exception as exc:
                    self._went_away(exc)
                    return await self._acquire_alone(tokens)
                now = self._clock.monotonic()
                refusal = self._known_refusal(need, now)
                if refusal is not None:
                    return refusal
            if self._plenty(need, now):
                self._fleet.spend(need)
                self._spend(need, now)
                return Reservation(now, tokens)
        async with self._asking:  # one script at a time: a refusal answers those waiting
            refusal = self._known_refusal(need, self._clock.monotonic())
            if refusal is not None:
                return refusal
            member = secrets.token_hex(8)
            try:
                granted, a, b, full, *news = await self._acquire(
                    keys=self._keys, args=[self.rpm or 0, self.tpm or 0, need, member])
            except Exception as exc:
                self._went_away(exc)
                return await self._acquire_alone(tokens)
            self._heard(news)
            now = self._clock.monotonic()
            if not granted:
                wait, reason, what = max(0.0, int(a) / 1000), text_of(b), text_of(full)
                if what == "rpm":  # only time frees a request
                    self._full = _Full(now + wait, 0, reason)
                elif what == "tpm":  # a settlement elsewhere may free tokens sooner
                    self._full = _Full(now + min(wait, CACHE_S), need, reason)
                return Refusal(reason, wait)
            self._counted = (int(a), int(b))
            self._spend(need, now)
            return SharedReservation(now, tokens, member)

    async def _acquire_alone(self, tokens: int) -> Reservation | Refusal:
        grant = await self._fallback().acquire(tokens)
        if isinstance(grant, Reservation):
            self._spend(max(0, int(tokens)), self._clock.monotonic())
        return grant

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        used = max(0, used_tokens)
        if not isinstance(reservation, SharedReservation) or self.tpm is None:
            # Granted here (or by this process's share): nothing in Redis counts its tokens.
            reservation.tokens = used
            return
        granted = reservation.tokens
        if used <= granted and granted - used < max(1, math.ceil(self.tpm * SETTLE_SHARE)):
            return
        reservation.tokens = used
        try:
            await self._settle(keys=[self._window], args=[
                f"{reservation.member}:{granted}", f"{reservation.member}:{used}"])
        except Exception as exc:
            self._went_away(exc)
            return
        if used < granted and self._full is not None and self._full.need > 0:
            self._full = None  # tokens freed: worth asking again

    async def observe_headers(self, headers: Mapping[str, str]) -> None:
        now = self._clock.monotonic()
        writes: dict[str, tuple[int, int]] = {}
        for kind, short in (("requests", "req"), ("tokens", "tok")):
            stated = _int(headers.get(f"x-ratelimit-limit-{kind}"))
            if stated:
                self._stated[short] = stated
            remaining = _int(headers.get(f"x-ratelimit-remaining-{kind}"))
            if remaining is None:
                continue
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            valid_s = HEADER_VALID_S if reset is None else reset
            known = _Count(remaining, now + valid_s)
            if short == "req":
                self._mine.req = known
            else:
                self._mine.tok = known
            margin = self._margin(short, now) + (0 if short == "req" else self._need)
            shared = self._fleet.count(short, now)
            low = remaining < margin
            lifted = not low and shared is not None and shared.left < margin
            if (low or lifted) and now >= self._written[short] + HEADER_WRITE_S:
                writes[short] = (remaining, int(valid_s * 1000))
        if not writes:
            return
        for short in writes:
            self._written[short] = now
        req, tok = writes.get("req"), writes.get("tok")
        try:
            news = await self._headers(keys=self._keys, args=[
                "" if req is None else req[0], 0 if req is None else req[1],
                "" if tok is None else tok[0], 0 if tok is None else tok[1]])
        except Exception as exc:
            self._went_away(exc)  # what this process saw still decides here
            return
        self._heard(news)

    async def rate_limited(self, retry_after_s: float | None) -> None:
        now = self._clock.monotonic()
        hold = BLOCK_WITHOUT_RETRY_AFTER_S if retry_after_s is None else max(0.0, retry_after_s)
        if retry_after_s is not None:
            self._mine.cap(now + hold)
            self._fleet.cap(now + hold)
        if hold > 0:
            self._mine.blocked_until = max(self._mine.blocked_until, now + hold)
        try:
            news = await self._block(keys=self._keys, args=[
                int(hold * 1000), 1 if retry_after_s is not None else 0])
        except Exception as exc:
            self._went_away(exc)  # this process holds off all the same
            return
        self._heard(news)

    def headroom(self) -> Headroom:
        now = self._clock.monotonic()
        requests_left: list[int] = []
        tokens_left: list[int] = []
        requests_reset: list[float] = []
        tokens_reset: list[float] = []
        if self._away and self._local is not None:
            alone = self._local.headroom()
            for left, lefts in ((alone.requests_left, requests_left),
                                (alone.tokens_left, tokens_left)):
                if left is not None:
                    lefts.append(left)
            for reset, resets in ((alone.requests_reset_s, requests_reset),
                                  (alone.tokens_reset_s, tokens_reset)):
                if reset is not None:
                    resets.append(reset)
        elif self._counted is not None:
            if self.rpm is not None:
                requests_left.append(self.rpm - self._counted[0])
            if self.tpm is not None:
                tokens_left.append(self.tpm - self._counted[1])
        if self._full is not None and now < self._full.until and self._full.need == 0:
            requests_left.append(0)
            requests_reset.append(self._full.until - now)
        for news in (self._mine, self._fleet):
            for kind, lefts, resets in (("req", requests_left, requests_reset),
                                        ("tok", tokens_left, tokens_reset)):
                known = news.count(kind, now)
                if known is not None:
                    lefts.append(known.left)
                    resets.append(known.until - now)
        blocked = max(self._mine.blocked_until, self._fleet.blocked_until)
        return Headroom(
            requests_left=max(0, min(requests_left)) if requests_left else None,
            tokens_left=max(0, min(tokens_left)) if tokens_left else None,
            requests_reset_s=max(requests_reset) if requests_reset else None,
            tokens_reset_s=max(tokens_reset) if tokens_reset else None,
            blocked_for_s=blocked - now if blocked > now else None,
            rpm=self.rpm, tpm=self.tpm)
