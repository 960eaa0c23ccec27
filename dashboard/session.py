"""Signed-in browsers: a signed cookie session exchanged for the admin token, with a CSRF token.

`POST /session` takes the admin token (form field or JSON `{"token": ...}`). On success the
server makes a session — a random id, its own random CSRF token, an expiry — and sets it as the
`tickwork_session` cookie, signed (itsdangerous, HMAC-SHA256 under a key derived from the admin
token): HttpOnly (page scripts cannot read it), SameSite=Strict (other sites cannot make the
browser send it), Path=/. A signed session needs no server-side state, so every dashboard
process that shares the admin token honours it, with or without Redis, and across restarts;
the signature reveals nothing about the token. Signing out revokes the session's id until it
would have expired: in this process, and, with Redis, for every process (checked while Redis
answers). Changing the admin token ends every session at once.

The CSRF token is embedded in each page the session renders (`<meta name="csrf-token">`) and
returned by a JSON sign-in. Every write made with the cookie must carry it back as the
`X-CSRF-Token` header: a write with the cookie and without it, or with another value, is
refused with 403. API clients keep using `Authorization: Bearer`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import Request
from itsdangerous import BadData, URLSafeSerializer
from starlette.exceptions import HTTPException
from starlette.responses import Response

from dashboard.auth import Principal
from schema.clock import Clock

SESSION_COOKIE = "tickwork_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600.0
MAX_FORM_BYTES = 8192
SALT = "tickwork.session"

CSRF_MISSING = ("missing X-CSRF-Token header: writes made with the session cookie must send "
                "the page's CSRF token")
CSRF_WRONG = "the X-CSRF-Token header does not match this session's CSRF token"


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    expires_at: float


class SessionStore:
    """Signed sessions, and the ids signed out before they expired (in this process; with
    Redis, `RedisSessionStore` shares them with every dashboard process)."""

    def __init__(self, admin_token: str, clock: Clock, ttl_s: float = SESSION_TTL_S) -> None:
        self._token = admin_token.encode()
        self._clock = clock
        self._ttl = ttl_s
        self._signer = URLSafeSerializer(admin_token, salt=SALT)
        self._revoked: dict[str, float] = {}  # session id -> when it would have expired

    def token_matches(self, token: str) -> bool:
        return secrets.compare_digest(token.encode(), self._token)

    def open(self) -> tuple[str, Session]:
        """A new session: (the cookie's value, the session)."""
        sid = secrets.token_urlsafe(16)
        session = Session(secrets.token_urlsafe(32), self._clock.now() + self._ttl)
        return self._signer.dumps([sid, session.csrf, session.expires_at]), session

    def _read(self, value: str) -> tuple[str, Session] | None:
        try:
            sid, csrf, expires_at = self._signer.loads(value)
        except (BadData, TypeError, ValueError):
            return None
        if not (isinstance(sid, str) and isinstance(csrf, str)
                and isinstance(expires_at, int | float)):
            return None
        return sid, Session(csrf, float(expires_at))

    def get(self, value: str | None) -> Session | None:
        read = self._read(value) if value else None
        if read is None:
            return None
        sid, session = read
        if session.expires_at <= self._clock.now() or self.revoked(sid):
            return None
        return session

    def revoked(self, sid: str) -> bool:
        return sid in self._revoked

    def close(self, value: str | None) -> None:
        """Sign out: the session's id is refused until it would have expired."""
        read = self._read(value) if value else None
        if read is None:
            return
        sid, session = read
        now = self._clock.now()
        self._revoked = {k: t for k, t in self._revoked.items() if t > now}
        self._revoked[sid] = session.expires_at
        self._revoke_elsewhere(sid, session.expires_at - now)

    def _revoke_elsewhere(self, sid: str, ttl_s: float) -> None:
        return None

    def of(self, request: Request) -> Session | None:
        """The live session the request's cookie names, if any."""
        return self.get(request.cookies.get(SESSION_COOKIE))

    def check(self, request: Request) -> Principal | None:
        """An `Authenticator` check: a live session cookie plus the matching CSRF header."""
        session = self.of(request)
        if session is None:
            return None
        sent = request.headers.get(CSRF_HEADER)
        if not sent:
            raise HTTPException(403, CSRF_MISSING)
        if not secrets.compare_digest(sent.encode(), session.csrf.encode()):
            raise HTTPException(403, CSRF_WRONG)
        return Principal("admin", "session")

    def set_cookie(self, response: Response, sid: str) -> None:
        response.set_cookie(SESSION_COOKIE, sid, max_age=int(self._ttl), path="/",
                            httponly=True, samesite="strict")

    @staticmethod
    def clear_cookie(response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip() == "application/json"


async def sign_in_fields(request: Request) -> dict[str, str]:
    """The sign-in request's fields, from a form or a JSON object (unknown shapes: empty)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    if is_json(request):
        try:
            data: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}
    try:
        form = parse_qs(body.decode(), keep_blank_values=True)
    except UnicodeDecodeError:
        return {}
    return {k: v[0] for k, v in form.items() if v}


def local_path(value: str | None) -> str:
    """Where to go back to after signing in: a path on this site, never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


class RedisSessionStore(SessionStore):
    """Sign-outs shared through Redis (`{prefix}session-revoked:{id}`, expiring with the
    session), so signing out on one dashboard process ends the session on every one. Sessions
    themselves need no Redis: while it is away they keep working (after a failed call, Redis
    is not asked again for `RETRY_S`, so a request waits on it at most once in that time), and
    a sign-out made meanwhile holds in the process it was made in."""

    RETRY_S = 5.0

    def __init__(self, admin_token: str, clock: Clock, url: str, *, prefix: str = "tickwork:",
                 ttl_s: float = SESSION_TTL_S) -> None:
        import redis

        super().__init__(admin_token, clock, ttl_s)
        self._redis = redis.Redis.from_url(url, socket_timeout=0.25,
                                           socket_connect_timeout=0.25)
        self._prefix = prefix
        self._away_until = 0.0  # on the clock's monotonic time

    def _key(self, sid: str) -> str:
        return f"{self._prefix}session-revoked:{sid}"

    def revoked(self, sid: str) -> bool:
        if super().revoked(sid):
            return True
        return bool(self._ask(lambda: self._redis.exists(self._key(sid))))

    def _revoke_elsewhere(self, sid: str, ttl_s: float) -> None:
        if ttl_s > 0:
            self._ask(lambda: self._redis.set(self._key(sid), b"1",
                                              px=max(1, int(ttl_s * 1000))))

    def _ask(self, call: Callable[[], Any]) -> Any:
        """`call()`, or None while Redis is away (not asked again for RETRY_S)."""
        if self._clock.monotonic() < self._away_until:
            return None
        try:
            return call()
        except Exception:
            self._away_until = self._clock.monotonic() + self.RETRY_S
            return None
