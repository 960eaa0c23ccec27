"""Every answer carries the security headers; the session cookie is Secure over HTTPS.

"Over HTTPS" is TICKWORK_PUBLIC_URL being an https:// URL, or the request having come over
https — behind a proxy only one the server trusts (uvicorn's FORWARDED_ALLOW_IPS): its
X-Forwarded-Proto is believed, anyone else's is not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
import pytest
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from dashboard.api import create_app
from dashboard.security import secure_cookie
from dashboard.session import SESSION_COOKIE
from orchestrator.config import Settings
from orchestrator.runtime import Runtime
from schema.clock import FakeClock
from tests.conftest import make_settings

ADMIN = {"Authorization": "Bearer test-token"}
POLICY = {
    "default-src": "'self'", "script-src": "'self'", "style-src": "'self'",
    "img-src": "'self' data:", "connect-src": "'self'", "object-src": "'none'",
    "frame-ancestors": "'none'", "base-uri": "'none'", "form-action": "'self'",
}


@asynccontextmanager
async def client_of(app: Any, base_url: str = "http://tickwork.test",
                    peer: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=(peer, 50000))
    async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
        yield client


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def build(tmp_path: Any, **overrides: object) -> Runtime:
    settings = make_settings(f"sqlite:///{tmp_path / 'tickwork.db'}", **overrides)
    return Runtime.build(settings, FakeClock(1_800_000_000.0), env={})


@pytest.fixture
def rt(tmp_path: Any) -> Any:
    runtime = build(tmp_path)
    yield runtime
    runtime.close()


def assert_hardened(r: httpx.Response) -> None:
    what = f"{r.request.method} {r.request.url.path} -> {r.status_code}"
    policy = dict(part.strip().split(" ", 1)
                  for part in r.headers["content-security-policy"].split(";"))
    assert policy == POLICY, what
    assert "unsafe" not in r.headers["content-security-policy"], what
    assert r.headers["x-frame-options"] == "DENY", what
    assert r.headers["referrer-policy"] == "same-origin", what
    assert r.headers["x-content-type-options"] == "nosniff", what
    assert len(r.headers.get_list("content-security-policy")) == 1, what


def test_every_kind_of_answer_carries_the_security_headers(
        rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        async with client_of(create_app(rt)) as client:
            r = await client.post("/api/stacks", json={"name": "alpha"}, headers=ADMIN)
            assert r.status_code == 201
            assert_hardened(r)
            sid, tid = r.json()["id"], r.json()["last_tick"]["id"]
            for path in ("/", f"/stacks/{sid}", f"/ticks/{tid}", "/system", "/api",
                         "/api/stacks", f"/api/ticks/{tid}", "/openapi.json", "/livez",
                         "/readyz", "/metrics", "/static/app.js", "/static/app.css",
                         "/stacks/999", "/api/stacks/999", "/api/nowhere",
                         "/api/stacks/abc"):
                r = await client.get(path)
                assert r.status_code in (200, 404, 422), (path, r.status_code)
                assert_hardened(r)
            for r in (await client.post("/api/stacks", json={"name": "beta"}),  # 401
                      await client.put("/api/stacks", headers=ADMIN),  # 405
                      await client.post("/session", json={"token": "nope"}),  # 401
                      await client.post("/session", json={"token": "test-token"})):
                assert_hardened(r)

            async def broken(*_: object, **__: object) -> None:
                raise RuntimeError("boom")

            monkeypatch.setattr(rt.db, "query", broken)
            r = await client.get("/api/stacks")
            assert r.status_code == 500
            assert_hardened(r)

    run(scenario)


def test_the_pages_load_nothing_inline_and_nothing_from_elsewhere(rt: Runtime) -> None:
    """What the policy allows is all the pages need: their script and style from /static."""
    async def scenario() -> None:
        async with client_of(create_app(rt)) as client:
            page = (await client.get("/")).text
        assert '<script src="/static/app.js"' in page
        assert "<script>" not in page and "<style" not in page and " style=" not in page
        assert " on" + "click=" not in page and "javascript:" not in page

    run(scenario)


def sign_in_cookie(r: httpx.Response) -> str:
    assert r.status_code in (200, 303), r.text
    cookies = [c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)]
    assert len(cookies) == 1, r.headers
    return cookies[0]


def attributes(cookie: str) -> set[str]:
    return {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}


def test_over_plain_http_the_session_cookie_is_not_secure(rt: Runtime) -> None:
    """A cookie marked Secure would never come back over http: signing in would not stick."""
    async def scenario() -> None:
        async with client_of(create_app(rt)) as client:
            cookie = sign_in_cookie(await client.post("/session",
                                                      json={"token": "test-token"}))
            assert "strict-transport-security" not in (await client.get("/")).headers
        assert "secure" not in attributes(cookie)
        assert {"httponly", "samesite", "path"} <= attributes(cookie)

    run(scenario)


def test_a_request_over_https_gets_a_secure_cookie(rt: Runtime) -> None:
    async def scenario() -> None:
        async with client_of(create_app(rt), base_url="https://tickwork.test") as client:
            cookie = sign_in_cookie(await client.post("/session",
                                                      json={"token": "test-token"}))
            assert {"secure", "httponly", "samesite"} <= attributes(cookie)
            # ...and the browser is told to come back over https only.
            page = await client.get("/")
            assert page.headers["strict-transport-security"] == "max-age=31536000"
            csrf = (await client.post("/session", json={"token": "test-token"})
                    ).json()["csrf_token"]
            # The browser sends it back over https: the session works.
            r = await client.post("/api/stacks", json={"name": "s"},
                                  headers={"X-CSRF-Token": csrf})
            assert r.status_code == 201, r.text
            r = await client.post("/session/logout", json={})
            assert all("secure" in attributes(c) for c in r.headers.get_list("set-cookie"))

    run(scenario)


def test_an_https_public_url_makes_the_cookie_secure_even_over_http(tmp_path: Any) -> None:
    """TLS ended by a proxy that does not say so: the public URL is what the users see."""
    runtime = build(tmp_path, public_url="https://tickwork.example.com/")
    try:
        async def scenario() -> None:
            async with client_of(create_app(runtime)) as client:
                r = await client.post("/session", data={"token": "test-token", "next": "/"})
                assert "secure" in attributes(sign_in_cookie(r))

        run(scenario)
    finally:
        runtime.close()


def test_x_forwarded_proto_is_believed_only_from_a_trusted_proxy(rt: Runtime) -> None:
    """The app as uvicorn serves it (proxy headers on, trusting the loopback addresses)."""
    app = ProxyHeadersMiddleware(cast(Any, create_app(rt)), trusted_hosts="127.0.0.1,::1")
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.7"}

    async def scenario() -> None:
        async with client_of(app, peer="127.0.0.1") as via_proxy:
            r = await via_proxy.post("/session", json={"token": "test-token"},
                                     headers=forwarded)
            assert "secure" in attributes(sign_in_cookie(r))
        async with client_of(app, peer="203.0.113.9") as stranger:
            r = await stranger.post("/session", json={"token": "test-token"},
                                    headers=forwarded)
            assert "secure" not in attributes(sign_in_cookie(r))

    run(scenario)


@pytest.mark.parametrize(("given", "secured"), [
    ("tickwork_session=abc; Path=/; HttpOnly", "tickwork_session=abc; Path=/; HttpOnly; Secure"),
    ("a=b; Secure; HttpOnly", "a=b; Secure; HttpOnly"),
    ("a=b; secure", "a=b; secure"),
    ("secure=1; Path=/", "secure=1; Path=/; Secure"),  # a cookie named so is not the flag
])
def test_secure_is_added_once(given: str, secured: str) -> None:
    assert secure_cookie(given.encode()) == secured.encode()


def test_the_public_url_must_be_an_http_url() -> None:
    for bad in ("tickwork.example.com", "ftp://example.com", "https://", "javascript:x"):
        with pytest.raises(ValueError, match="http:// or https:// URL"):
            Settings(_env_file=None, public_url=bad)  # type: ignore[call-arg]
    ok = Settings(_env_file=None, public_url="https://t.example.com/")  # type: ignore[call-arg]
    assert ok.public_url == "https://t.example.com" and ok.https
    assert not Settings(_env_file=None, public_url="http://t.example.com").https  # type: ignore[call-arg]
    assert Settings(_env_file=None, public_url="").public_url is None  # type: ignore[call-arg]
