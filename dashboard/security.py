"""Hardening of the pages and the API: `install` adds it to the app.

- Every response carries a Content-Security-Policy that allows scripts, styles, images, fetch
  and EventSource from this origin only, and no inline script or style (the pages load
  /static/app.js and /static/app.css), and may not be framed; plus X-Frame-Options,
  Referrer-Policy and X-Content-Type-Options. These replace any a route set itself.
- Cookies are marked `Secure` when the dashboard is served over HTTPS: when TICKWORK_PUBLIC_URL
  is an https:// URL, or when the request itself came over https.
- Failed sign-ins and failed bearer tokens are throttled per client address
  (`dashboard.throttle`).

Behind a reverse proxy, "came over https" and "the client's address" are what the server
reports. uvicorn (which `tickwork up` and `tickwork dashboard` run) takes them from
X-Forwarded-Proto and X-Forwarded-For only when the connection comes from an address listed in
FORWARDED_ALLOW_IPS (default: the loopback addresses, a proxy on the same machine); from anyone
else those headers are ignored, so a client cannot claim https or another address. A proxy on
another machine: set FORWARDED_ALLOW_IPS to its address, or TICKWORK_PUBLIC_URL to the https
address the users see.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard import throttle as throttling
from dashboard.throttle import FailureThrottle, ThrottleFailures
from orchestrator.runtime import Runtime

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "object-src 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'self'",
])

HEADERS: list[tuple[bytes, bytes]] = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
]
# Over HTTPS, browsers are told to come back only over HTTPS (a year; not for subdomains,
# which may be other services).
HSTS = (b"strict-transport-security", b"max-age=31536000")
_OURS = frozenset(name for name, _ in [*HEADERS, HSTS])


def secure_cookie(value: bytes) -> bytes:
    """A Set-Cookie value with the Secure attribute (added when missing)."""
    attributes = (part.strip().lower() for part in value.split(b";")[1:])
    return value if b"secure" in attributes else value + b"; Secure"


class SecureResponses:
    """ASGI middleware: the security headers on every response; Secure cookies and
    Strict-Transport-Security over HTTPS."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self.https = https

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        secure = self.https or scope.get("scheme") == "https"

        async def hardened_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", [])
                           if name.lower() not in _OURS]
                ours = HEADERS
                if secure:
                    headers = [(name, secure_cookie(value) if name.lower() == b"set-cookie"
                                else value) for name, value in headers]
                    ours = [*HEADERS, HSTS]
                message = {**message, "headers": [*headers, *ours]}
            await send(message)

        await self.app(scope, receive, hardened_send)


def install(app: FastAPI, rt: Runtime) -> None:
    """Add the security headers, Secure cookies over HTTPS and the failure throttle to `app`
    (outermost, so that every answer, errors and refusals included, carries the headers)."""
    throttle = FailureThrottle(rt.clock, failures=throttling.FAILURES,
                               window_s=throttling.WINDOW_S, redis_url=rt.settings.redis_url,
                               prefix=rt.settings.redis_prefix)
    app.state.throttle = throttle
    app.add_middleware(ThrottleFailures, throttle=throttle)
    app.add_middleware(SecureResponses, https=rt.settings.https)
