"""One beat leader: any number of `tickwork beat` processes, one of which fans out.

A leader holds a lease it renews every third of its length; a beat that finds the lease free
(expired, or never taken) takes it with a new fencing token, a number that only grows. The
lease lives in Redis (`{prefix}beat:leader`, one atomic script per attempt) when Redis is
configured, and in the database (`meta`, on the leases' clock) when it is not or while it is
away. The fan-out stays insert-if-absent, so even two beats that both believe they lead, for
the moment a lease changes hands, insert every (stack, slot) once; and a fan-out whose token is
older than the newest recorded one writes nothing.

A new leader catches up the slots missed since the last one fanned out (the slot recorded with
each fan-out), up to TICKWORK_CATCHUP_SLOTS, as a late beat does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from sqlalchemy import Connection, select, update

from orchestrator.store.abc import Store
from orchestrator.store.hooks import dialect_of
from schema import tables as t
from schema.clock import Clock

log = logging.getLogger("tickwork.leadership")

LEADER_KEY = "beat_leader"


class Elector(Protocol):
    async def attempt(self) -> int | None:
        """Take or renew the lease: the fencing token while this process leads, else None."""

    async def resign(self) -> None: ...


def _take(conn: Connection, me: str, ttl_s: float, now: float) -> int | None:
    """The database lease: take it when free or ours, renew it; the token, or None."""
    now_ = dialect_of(conn).lease_now()
    m = t.meta.c
    row = conn.execute(select(m.value).where(m.key == LEADER_KEY).with_for_update()
                       ).scalar_one_or_none()
    current = orjson.loads(row) if row else None
    db_now = float(conn.execute(select(now_), {"now": now}).scalar_one())
    if current is not None and current["holder"] != me and current["until"] > db_now:
        return None
    token = current["token"] if current is not None and current["holder"] == me else \
        (current["token"] + 1 if current is not None else 1)
    value = orjson.dumps({"holder": me, "token": token, "until": db_now + ttl_s}).decode()
    if row is None:  # the first beat ever: whoever inserts first leads
        won = conn.execute(dialect_of(conn).insert(t.meta).values(
            key=LEADER_KEY, value=value, updated_at=now).on_conflict_do_nothing()
            .returning(m.key)).first()
        return int(token) if won is not None else None
    else:
        conn.execute(update(t.meta).where(m.key == LEADER_KEY)
                     .values(value=value, updated_at=now))
    return int(token)


def _give_up(conn: Connection, me: str) -> None:
    m = t.meta.c
    row = conn.execute(select(m.value).where(m.key == LEADER_KEY).with_for_update()
                       ).scalar_one_or_none()
    if row and orjson.loads(row)["holder"] == me:
        current = orjson.loads(row)
        current["until"] = 0
        conn.execute(update(t.meta).where(m.key == LEADER_KEY)
                     .values(value=orjson.dumps(current).decode()))


class DatabaseElector:
    def __init__(self, store: Store, clock: Clock, me: str, ttl_s: float) -> None:
        self._store, self._clock, self._me, self._ttl = store, clock, me, ttl_s

    async def attempt(self) -> int | None:
        return await self._store.transact(_take, self._me, self._ttl, self._clock.now())

    async def resign(self) -> None:
        await self._store.transact(_give_up, self._me)


# KEYS: the lease, the token counter. ARGV: this process, the lease in ms.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder then
  local who, token = string.match(holder, '^(.*):(%d+)$')
  if who == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. token, 'PX', ARGV[2])
return token
"""
_RESIGN = """
local holder = redis.call('GET', KEYS[1])
if holder and string.sub(holder, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. ':' then
  redis.call('DEL', KEYS[1])
end
return 1
"""


class RedisElector:
    """The lease in Redis; while Redis is away, the database's lease decides instead."""

    def __init__(self, client: Any, prefix: str, me: str, ttl_s: float,
                 fallback: Elector) -> None:
        self._client, self._me, self._ttl = client, me, ttl_s
        self._keys = [f"{prefix}beat:leader", f"{prefix}beat:token"]
        self._take = client.register_script(_TAKE)
        self._resign = client.register_script(_RESIGN)
        self._fallback = fallback
        self._away = False

    async def attempt(self) -> int | None:
        try:
            token = await self._take(keys=self._keys, args=[self._me, int(self._ttl * 1000)])
        except Exception as exc:
            if not self._away:
                log.warning("Redis is away (%s); the beat leader is chosen in the database "
                            "meanwhile", type(exc).__name__)
            self._away = True
            return await self._fallback.attempt()
        self._away = False
        return int(token) if token else None

    async def resign(self) -> None:
        with contextlib.suppress(Exception):
            await self._resign(keys=self._keys, args=[self._me])
        await self._fallback.resign()


class Leadership:
    """Keeps trying for the lease; `token` is set while this process leads. `on_lead` runs
    each time this process becomes the leader (the beat catches up at once)."""

    def __init__(self, elector: Elector, clock: Clock, ttl_s: float,
                 on_lead: Callable[[], Awaitable[object]] | None = None) -> None:
        self._elector = elector
        self._clock = clock
        self._ttl = ttl_s
        self.on_lead = on_lead
        self.token: int | None = None
        self._since = 0.0

    @property
    def leading(self) -> bool:
        return self.token is not None and self._clock.monotonic() - self._since < self._ttl

    async def attempt_once(self) -> None:
        started = self._clock.monotonic()
        try:
            token = await self._elector.attempt()
        except Exception as exc:
            log.warning("could not reach the beat lease (%s)", type(exc).__name__)
            token = None
        became = token is not None and self.token is None
        if became:
            log.info("this beat leads now (fencing token %d)", token)
        elif token is None and self.token is not None:
            log.info("this beat no longer leads")
        self.token = token
        if token is not None:
            self._since = started
        if became and self.on_lead is not None:
            await self.on_lead()

    async def run(self) -> None:
        while True:
            await self.attempt_once()
            await self._clock.sleep(self._ttl / 3)

    async def resign(self) -> None:
        if self.token is not None:
            self.token = None
            with contextlib.suppress(Exception):
                await asyncio.shield(self._elector.resign())
