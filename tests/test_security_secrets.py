"""A configured admin token is never shown: not in any answer (errors, refusals, /api, the
OpenAPI document, the system views, /metrics, the pages) nor in any log line, whatever is
sent with it or instead of it. (The startup banner's own tests are in tests/test_e2e_up.py: a
configured token is "not shown" there either.)"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx
import pytest

from dashboard.api import create_app
from orchestrator.runtime import Runtime
from schema.clock import FakeClock
from tests.conftest import make_settings

TOKEN = "Zq7-configured-admin-token-9fX2"


def test_a_configured_token_appears_in_no_answer_and_no_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'tickwork.db'}", admin_token=TOKEN)
    rt = Runtime.build(settings, FakeClock(1_800_000_000.0), env={})
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.model_dump())
    admin = {"Authorization": f"Bearer {TOKEN}"}
    answers: list[httpx.Response] = []

    async def scenario() -> None:
        app = create_app(rt)
        transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as c:
            r = await c.post("/api/stacks", json={"name": "s"}, headers=admin)
            assert r.status_code == 201
            answers.append(r)
            for path in ("/", "/system", "/api", "/api/stacks", "/api/system",
                         "/api/system/health", "/openapi.json", "/metrics", "/readyz",
                         "/stacks/1", "/ticks/1"):
                answers.append(await c.get(path, headers=admin))
            # Writes whose bodies are wrong, sent with the token or with the token in them.
            answers.extend([
                await c.post("/api/stacks", json={"name": TOKEN[:5], "x": TOKEN},
                             headers=admin),
                await c.post("/api/stacks", json={"name": 5}, headers=admin),
                await c.post("/api/stacks", content=TOKEN.encode(),
                             headers={**admin, "Content-Type": "application/json"}),
                await c.post("/api/stacks", json={"name": "t"},
                             headers={"Authorization": f"Bearer {TOKEN}x"}),
                await c.post("/api/stacks", json={"name": "t"},
                             headers={"Authorization": f"Basic {TOKEN}"}),
                await c.post("/session", json={"token": TOKEN}),  # signed in
                await c.post("/session", data={"token": TOKEN + "x", "next": "/"}),
            ])
            # Wrong guesses until refused; then the right token, refused too.
            for _ in range(6):
                answers.append(await c.post("/session", json={"token": TOKEN[:-1]}))
            answers.append(await c.post("/session", json={"token": TOKEN}))
            answers.append(await c.post("/api/stacks", json={"name": "u"}, headers=admin))
            assert answers[-1].status_code == 429

            async def broken(*_: object, **__: object) -> None:
                raise RuntimeError("the database is away")

            rt.db.query = broken  # type: ignore[method-assign]
            answers.append(await c.get("/api/stacks"))
            assert answers[-1].status_code == 500

    try:
        with caplog.at_level(logging.DEBUG):
            asyncio.run(scenario())
    finally:
        rt.close()
    for r in answers:
        shown = r.text + "".join(f"{k}: {v}\n" for k, v in r.headers.items())
        assert TOKEN not in shown, (r.request.method, r.request.url.path, r.status_code)
    assert caplog.records  # the throttle and the 500 were logged
    for record in caplog.records:
        assert TOKEN not in record.getMessage() + (record.exc_text or ""), record.getMessage()
