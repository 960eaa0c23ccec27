"""Signed-in browsers: a cookie session exchanged for the admin token, with a CSRF token.

`POST /session` takes the admin token (form field or JSON `{"token": ...}`). On success the
server makes a random session id (kept here, in memory, with its own random CSRF token and an
expiry) and sets it as the `tickwork_session` cookie: HttpOnly (page scripts cannot read it),
SameSite=Strict (other sites cannot make the browser send it), Path=/. The session id is not
derived from the admin token, so the cookie reveals nothing about it, and logging out or
restarting the server ends the session for good.

The CSRF token is embedded in each page the session renders (`<meta name="csrf-token">`) and
returned by a JSON sign-in. Every write made with the cookie must carry it back as the
`X-CSRF-Token` header: a write with the cookie and without it, or with another value, is
refused with 403. API clients keep using `Authorization: Bearer`.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

from dashboard.auth import Principal
from schema.clock import Clock

SESSION_COOKIE = "tickwork_session"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 1000
MAX_FORM_BYTES = 8192

CSRF_MISSING = ("missing X-CSRF-Token header: writes made with the session cookie must send "
                "the page's CSRF token")
CSRF_WRONG = "the X-CSRF-Token header does not match this session's CSRF token"


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    expires_at: float


class SessionStore:
    """Sessions of this process, by id; the oldest goes when there are too many. (With Redis,
    `RedisSessionStore` keeps them where every dashboard process sees them.)"""

    def __init__(self, admin_token: str, clock: Clock, ttl_s: float = SESSION_TTL_S) -> None:
        self._token = admin_token.encode()
        self._clock = clock
        self._ttl = ttl_s
        self._sessions: dict[str, Session] = {}

    def token_matches(self, token: str) -> bool:
        return secrets.compare_digest(token.encode(), self._token)

    def open(self) -> tuple[str, Session]:
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        sid = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), self._clock.now() + self._ttl)
        self._sessions[sid] = session
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        if session.expires_at <= self._clock.now():
            self._sessions.pop(sid, None)
            return None
        return session

    def close(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

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
    """Sessions kept in Redis (`{prefix}session:{id}`, expiring with the session), so a browser
    signed in on one dashboard process is signed in on every other. Redis being away costs
    only new sign-ins' reach: they are kept in this process meanwhile, and a session Redis
    lost means signing in again; no data is lost either way."""

    def __init__(self, admin_token: str, clock: Clock, url: str, *, prefix: str = "tickwork:",
                 ttl_s: float = SESSION_TTL_S) -> None:
        import redis

        super().__init__(admin_token, clock, ttl_s)
        self._redis = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._prefix = prefix

    def _key(self, sid: str) -> str:
        return f"{self._prefix}session:{sid}"

    def open(self) -> tuple[str, Session]:
        sid, session = super().open()
        try:
            self._redis.set(self._key(sid), orjson.dumps(
                {"csrf": session.csrf, "expires_at": session.expires_at}), px=int(self._ttl * 1000))
        except Exception:  # Redis away: the session lives in this process only
            return sid, session
        self._sessions.pop(sid, None)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        local = super().get(sid)
        if local is not None or not sid:
            return local
        try:
            raw = self._redis.get(self._key(sid))
        except Exception:
            return None
        if raw is None:
            return None
        data = orjson.loads(raw)
        if data["expires_at"] <= self._clock.now():
            return None
        return Session(data["csrf"], data["expires_at"])

    def close(self, sid: str | None) -> None:
        super().close(sid)
        if sid:
            with contextlib.suppress(Exception):
                self._redis.delete(self._key(sid))
