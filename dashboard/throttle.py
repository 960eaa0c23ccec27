"""Failed credentials throttled per client address: no guessing the admin token at speed.

A failure is a sign-in refused (`POST /session` answered 401) or a write refused for its bearer
token (a request carrying `Authorization` answered 401). After `FAILURES` of them from one
address within `WINDOW_S` seconds, every further attempt from that address — a sign-in, or a
write with an `Authorization` header, right token or wrong — is answered 429 with Retry-After
until the oldest of those failures is `WINDOW_S` old (a moving window). Successes neither count
nor reset. Reads stay open, and other addresses are not affected.

The counts live in the `limits` library's moving-window storage: in this process, or, with
TICKWORK_REDIS_URL, in Redis (`{prefix}throttle:…`), shared by every dashboard process behind
the load balancer, so adding dashboards does not multiply the guesses an address gets. While
Redis does not answer, each process counts on its own (and asks Redis again after `RETRY_S`).

The client address is the one the server reports: behind a reverse proxy, uvicorn takes it from
X-Forwarded-For only when the proxy's own address is in FORWARDED_ALLOW_IPS (see
`dashboard.security`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter as SharedLimiter
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schema.clock import Clock

log = logging.getLogger("tickwork.dashboard")

FAILURES = 5
WINDOW_S = 60
SIGN_IN_PATH = "/session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _shared_limiter(url: str, prefix: str) -> SharedLimiter:
    """The moving window in Redis. redis-py's blocking client, asked from a worker thread (like
    the sessions' one, it closes its sockets when dropped; the event loop never waits on it),
    briefly: a Redis away is a failed call at once, not retries."""
    pool = redis.ConnectionPool.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.25,
                                         retry=Retry(NoBackoff(), 0))
    scheme_url = url if url.startswith("redis") else "redis+unix://"
    return SharedLimiter(RedisStorage(scheme_url, connection_pool=pool,
                                      key_prefix=f"{prefix}throttle"))


class FailureThrottle:
    """How many credential failures each address had in the last `window_s` seconds."""

    RETRY_S = 5.0

    def __init__(self, clock: Clock, *, failures: int = FAILURES, window_s: int = WINDOW_S,
                 redis_url: str | None = None, prefix: str = "tickwork:") -> None:
        self._clock = clock
        self._item: RateLimitItem = RateLimitItemPerSecond(failures, window_s)
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared = _shared_limiter(redis_url, prefix) if redis_url else None
        self._away_until = 0.0  # on the clock's monotonic time

    @property
    def failures(self) -> int:
        return self._item.amount

    @property
    def window_s(self) -> int:
        return self._item.get_expiry()

    async def _shared_call(self, call: Callable[[SharedLimiter], Any]) -> Any:
        """`call(shared limiter)` in a worker thread; raises LookupError while there is no
        Redis to ask (none configured, or away since a failed call less than RETRY_S ago)."""
        shared = self._shared
        if shared is None or self._clock.monotonic() < self._away_until:
            raise LookupError("no shared counts")
        try:
            return await asyncio.to_thread(call, shared)
        except Exception as exc:
            if self._away_until <= self._clock.monotonic():
                log.warning("Redis did not answer the sign-in throttle (%s); counting failed "
                            "sign-ins in this process for now", type(exc).__name__)
            self._away_until = self._clock.monotonic() + self.RETRY_S
            raise LookupError("Redis away") from exc

    async def retry_after(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None while it may."""
        try:
            reset_at, remaining = await self._shared_call(
                lambda shared: shared.get_window_stats(self._item, address))
        except LookupError:
            reset_at, remaining = await self._local.get_window_stats(self._item, address)
        if remaining > 0:
            return None
        return max(1, math.ceil(reset_at - time.time()))

    async def failed(self, address: str) -> None:
        """Count one failure of `address`."""
        try:
            await self._shared_call(lambda shared: shared.hit(self._item, address))
        except LookupError:
            await self._local.hit(self._item, address)
        if await self.retry_after(address) is not None:
            log.warning("%d failed sign-ins from %s within %d s: its attempts are refused "
                        "until they are older", self.failures, address, self.window_s)


def _is_attempt(scope: Scope) -> bool:
    """Does this request present credentials that will be checked?"""
    if scope["method"] == "POST" and scope["path"] == SIGN_IN_PATH:
        return True
    if scope["method"] in SAFE_METHODS:
        return False
    return any(name == b"authorization" for name, _ in scope["headers"])


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _wants_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";")[0].strip().lower() == b"application/json"
    return scope["path"] != SIGN_IN_PATH  # the API speaks JSON; a sign-in form gets text


class ThrottleFailures:
    """ASGI middleware: refuses the attempts of a throttled address before the app sees them,
    and counts the failed ones."""

    def __init__(self, app: ASGIApp, throttle: FailureThrottle) -> None:
        self.app = app
        self.throttle = throttle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_attempt(scope):
            await self.app(scope, receive, send)
            return
        address = _address(scope)
        wait = await self.throttle.retry_after(address)
        if wait is not None:
            await self._refuse(scope, send, wait)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                await self.throttle.failed(address)
            await send(message)

        await self.app(scope, receive, counting_send)

    @staticmethod
    async def _refuse(scope: Scope, send: Send, wait: int) -> None:
        text = f"too many failed sign-ins from this address: try again in {wait} s"
        if _wants_json(scope):
            body, kind = orjson.dumps({"error": text}), b"application/json"
        else:
            body, kind = (text[0].upper() + text[1:] + "\n").encode(), b"text/plain; charset=utf-8"
        await send({"type": "http.response.start", "status": 429, "headers": [
            (b"content-type", kind), (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(wait).encode()), (b"cache-control", b"no-store"),
        ]})
        await send({"type": "http.response.body", "body": body})
