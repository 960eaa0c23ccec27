"""The HTML pages and browser sign-in, on SQLite and PostgreSQL: what a visitor sees, what a
signed-in page may change, and that nothing from a stack or a model reaches the page unescaped.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from dashboard.api import create_app
from dashboard.render import Renderer
from dashboard.session import SESSION_COOKIE
from orchestrator.runtime import Runtime
from orchestrator.store import outbox
from schema.clock import FakeClock
from schema.models import AttemptOut, StepOut, TickDetail, ts
from tests.conftest import make_settings, wait_for

ADMIN = {"Authorization": "Bearer test-token"}
HOSTILE = "<img src=x onerror=alert(1)>"
TEAM = ["planner", "builder", "communicator", "reviewer"]


@asynccontextmanager
async def site(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://tickwork.test") as client:
        yield client


def run(rt: Runtime, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with site(rt) as client:
            await scenario(client)

    asyncio.run(main())


async def create(client: httpx.AsyncClient, name: str, **spec: Any) -> dict[str, Any]:
    r = await client.post("/api/stacks", json={"name": name, **spec}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()


async def run_queued_ticks(rt: Runtime) -> None:
    assert await rt.worker.claim_once()
    await wait_for(lambda: rt.worker.running == 0, what="the claimed ticks to finish")


async def sign_in(client: httpx.AsyncClient) -> str:
    """Sign in as a page does (a form post); returns the CSRF token the next page carries."""
    r = await client.post("/session", data={"token": "test-token", "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "test-token" not in r.headers["set-cookie"]
    page = (await client.get("/")).text
    marker = '<meta name="csrf-token" content="'
    assert marker in page
    return page.split(marker, 1)[1].split('"', 1)[0]


def html_of(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    return r.text


# -- pages ----------------------------------------------------------------------------------


def test_stacks_page_lists_each_stack_with_state_and_last_tick(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        alpha = await create(client, "alpha", goal="write the docs")
        await create(client, "beta", paused=True)
        await run_queued_ticks(runtime)
        page = html_of(await client.get("/"))
        assert f'href="/stacks/{alpha["id"]}">alpha</a>' in page
        assert ">beta</a>" in page
        assert '<span class="badge running">running</span>' in page
        assert '<span class="badge paused">paused</span>' in page
        assert '<span class="badge succeeded">succeeded</span>' in page  # alpha's last tick
        assert "100%" in page  # alpha: one tick, succeeded
        assert 'data-action="play-all"' in page and 'data-action="pause-all"' in page
        assert 'id="create-stack"' in page
        assert 'href="/system"' in page
        assert '<script src="/static/app.js"' in page
        # the page's script resumes the event stream after the last event the page reflects
        after = await runtime.store.query(outbox.last_event_id)
        assert after > 0 and f'<body data-page="stacks" data-after="{after}">' in page

    run(runtime, scenario)


def test_the_simulated_model_is_labelled_on_the_page(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        page = html_of(await client.get("/"))
        assert '<span class="badge simulated">simulated</span>' in page
        assert runtime.llm.simulated

    run(runtime, scenario)


def test_next_tick_is_the_next_beat_for_running_stacks_only(runtime: Runtime,
                                                            clock: FakeClock) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await create(client, "alpha")
        await create(client, "beta", paused=True)
        page = html_of(await client.get("/"))
        rows = {name: page.split(f">{name}</a>", 1)[1].split("</tr>", 1)[0]
                for name in ("alpha", "beta")}
        # the fake clock sits at 1_800_000_000 (+ nothing): the next 10 s beat is +10 s
        assert '<td class="next"><time datetime="2027-01-15T08:00:10+00:00"' in rows["alpha"]
        assert '<td class="next">—</td>' in rows["beta"]

    run(runtime, scenario)


def test_stack_page_shows_timeline_memory_messages_and_artifacts(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client, "alpha", goal="ship it")
        await run_queued_ticks(runtime)
        await client.post(f"/api/stacks/{stack['id']}/pause", headers=ADMIN,
                          json={"reason": "lunch break"})
        ticks = (await client.get(f"/api/stacks/{stack['id']}/ticks")).json()
        memory = (await client.get(f"/api/stacks/{stack['id']}/memory")).json()
        messages = (await client.get(f"/api/stacks/{stack['id']}/messages")).json()
        page = html_of(await client.get(f"/stacks/{stack['id']}"))
        assert '<span class="badge paused">paused</span>' in page
        assert "paused: lunch break" in page and "ship it" in page
        for tick in ticks:
            assert f'href="/ticks/{tick["id"]}">#{tick["id"]}</a>' in page
        assert memory and messages
        assert f"<dt>{memory[0]['key']}</dt>" in page
        assert "No messages yet" not in page
        assert "<h2>Artifacts</h2>" in page

    run(runtime, scenario)


def test_skipped_ticks_show_with_their_reason(runtime: Runtime, clock: FakeClock) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client, "alpha")  # its first tick is queued, not run
        await runtime.beat.fire()  # the previous tick is still queued: this slot is skipped
        ticks = (await client.get(f"/api/stacks/{stack['id']}/ticks")).json()
        skipped = [t for t in ticks if t["status"] == "skipped"]
        assert skipped and skipped[0]["reason"]
        page = html_of(await client.get(f"/stacks/{stack['id']}"))
        assert '<span class="badge skipped">skipped</span>' in page
        assert f'<td class="reason">{skipped[0]["reason"]}</td>' in page

    run(runtime, scenario)


def test_tick_page_shows_each_step_with_prompt_output_and_attempts(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client, "alpha")
        await run_queued_ticks(runtime)
        tick = (await client.get(f"/api/stacks/{stack['id']}/ticks")).json()[0]
        page = html_of(await client.get(f"/ticks/{tick['id']}"))
        assert '<span class="badge succeeded">succeeded</span>' in page
        for agent in TEAM:
            assert f'<section class="step" id="step-{TEAM.index(agent)}" data-agent="{agent}">'\
                in page
            assert f'<div class="wf-row" data-agent="{agent}">' in page
        assert page.count('<tr class="attempt"><td class="provider">sim</td>') == 4
        assert page.count('class="wf-bar succeeded" data-left="') == 4
        assert ' style=' not in page  # widths are data, applied by the page script
        assert 'class="role">system</span>' in page  # the prompt's chat messages
        assert '<pre class="output">' in page
        assert "fallback" not in page  # one provider: nothing fell back

    run(runtime, scenario)


def _attempt(provider: str, status: str, **extra: Any) -> AttemptOut:
    values: dict[str, Any] = {
        "provider": provider, "model": f"{provider}-model", "status": status,
        "latency_ms": 12.0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0,
        "error": None, "retry_after_s": None}
    values.update(extra)
    return AttemptOut(**values)


def test_fallback_and_skipped_attempts_are_marked_plainly() -> None:
    attempts = [
        _attempt("groq", "rate_limited", retry_after_s=2.5, error="429 from groq"),
        _attempt("groq", "skipped_open_breaker"),
        _attempt("openai", "ok", input_tokens=10, output_tokens=5, cost_usd=0.0001),
    ]
    step = StepOut(index=0, agent="planner", status="succeeded", started_at=ts(100.0),
                   finished_at=ts(101.0), duration_ms=1000.0,
                   prompt=[{"role": "user", "content": "<b>plan</b>"}],
                   output={"task": "</pre><script>x()</script>"}, raw_output=None,
                   error=None, attempts=attempts)
    tick = TickDetail(id=7, stack_id=1, slot=10, trigger="beat", status="succeeded",
                      attempt=1, reason=None, queued_at=ts(100.0), scheduled_at=ts(100.0),
                      started_at=ts(100.0), finished_at=ts(101.0), lateness_ms=0.0,
                      duration_ms=1000.0, stack_name="alpha", steps=[step])
    page = Renderer().html("parts/tick_detail.html", {"tick": tick})
    rows = page.split('<tr class="attempt">')[1:]
    assert len(rows) == 3
    assert "fallback" not in rows[0] and "2.5 s" in rows[0] and "429 from groq" in rows[0]
    assert "skipped: breaker open" in rows[1] and "fallback" not in rows[1]
    assert '<span class="tag fallback">fallback</span>' in rows[2]
    assert "1.00 s" in page  # the step's duration
    assert "&lt;b&gt;plan&lt;/b&gt;" in page and "<script>" not in page


def test_unknown_pages_answer_404_html(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        for path in ("/stacks/999", "/ticks/999"):
            r = await client.get(path)
            assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
        index = await client.get("/api")
        assert index.status_code == 200 and index.json()["links"]["stacks"] == "/api/stacks"

    run(runtime, scenario)


# -- escaping -------------------------------------------------------------------------------


def test_a_hostile_stack_name_is_shown_as_text_on_every_page(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client, HOSTILE, goal='"><script>alert(2)</script>')
        await run_queued_ticks(runtime)
        tick = (await client.get(f"/api/stacks/{stack['id']}/ticks")).json()[0]
        for path in ("/", f"/stacks/{stack['id']}", f"/ticks/{tick['id']}"):
            page = html_of(await client.get(path))
            assert "&lt;img src=x onerror=alert(1)&gt;" in page, path
            assert "<img src=x" not in page and "<script>alert" not in page, path

    run(runtime, scenario)


def test_the_admin_token_is_never_rendered(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client, "alpha")
        await run_queued_ticks(runtime)
        csrf = await sign_in(client)
        tick = (await client.get(f"/api/stacks/{stack['id']}/ticks")).json()[0]
        for path in ("/", f"/stacks/{stack['id']}", f"/ticks/{tick['id']}"):
            page = html_of(await client.get(path))
            assert runtime.admin_token not in page
            assert csrf in page  # a signed-in page carries its CSRF token instead

    run(runtime, scenario)


# -- sign-in and CSRF -----------------------------------------------------------------------


def test_visitors_see_write_buttons_disabled(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await create(client, "alpha")
        page = html_of(await client.get("/"))
        assert 'name="csrf-token"' not in page
        assert 'data-action="pause" data-stack="1" disabled title="sign in to change things"'\
            in page
        assert 'action="/session"' in page
        csrf = await sign_in(client)
        page = html_of(await client.get("/"))
        assert csrf and 'data-action="pause" data-stack="1">' in page
        assert 'action="/session/logout"' in page

    run(runtime, scenario)


def test_cookie_writes_need_the_matching_csrf_header(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client, "alpha")
        pause = f"/api/stacks/{stack['id']}/pause"
        assert (await client.post(pause, json={})).status_code == 401  # a visitor

        csrf = await sign_in(client)
        r = await client.post(pause, json={"reason": "no csrf"})
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["error"]
        r = await client.post(pause, json={}, headers={"X-CSRF-Token": csrf + "x"})
        assert r.status_code == 403 and "does not match" in r.json()["error"]
        assert (await client.get(f"/api/stacks/{stack['id']}")).json()[
            "execution_state"] == "running"

        r = await client.post(pause, json={"reason": "signed in"},
                              headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        assert r.json()["pause_reason"] == "signed in"
        r = await client.post("/api/stacks", json={"name": "beta"},
                              headers={"X-CSRF-Token": csrf})
        assert r.status_code == 201

    run(runtime, scenario)


def test_bearer_token_still_works_beside_sessions(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await sign_in(client)
        client.cookies.clear()
        r = await client.post("/api/stacks", json={"name": "alpha"}, headers=ADMIN)
        assert r.status_code == 201
        r = await client.post("/api/stacks", json={"name": "beta"},
                              headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401

    run(runtime, scenario)


def test_sign_in_with_a_wrong_token_is_refused(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.post("/session", data={"token": "nope", "next": "/stacks/1"})
        assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
        assert "wrong admin token" in r.text and 'role="alert"' in r.text
        assert '<input type="hidden" name="next" value="/stacks/1">' in r.text  # try again
        assert SESSION_COOKIE not in r.headers.get("set-cookie", "")
        r = await client.post("/session", json={"token": "nope"})
        assert r.status_code == 401 and "wrong admin token" in r.json()["error"]
        assert not client.cookies

    run(runtime, scenario)


def test_json_sign_in_returns_the_csrf_token(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.post("/session", json={"token": "test-token"})
        assert r.status_code == 200
        csrf = r.json()["csrf_token"]
        r = await client.post("/api/stacks", json={"name": "alpha"},
                              headers={"X-CSRF-Token": csrf})
        assert r.status_code == 201

    run(runtime, scenario)


def test_sign_in_only_redirects_within_the_site(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        for target, expected in (("/stacks/1", "/stacks/1"), ("//evil.test/", "/"),
                                 ("https://evil.test/", "/")):
            r = await client.post("/session", data={"token": "test-token", "next": target})
            assert r.status_code == 303 and r.headers["location"] == expected

    run(runtime, scenario)


def test_logout_ends_the_session(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        csrf = await sign_in(client)
        sid = client.cookies[SESSION_COOKIE]

        async def write_with_old_cookie(name: str) -> int:
            client.cookies.clear()
            client.cookies.set(SESSION_COOKIE, sid, domain="tickwork.test")
            r = await client.post("/api/stacks", json={"name": name},
                                  headers={"X-CSRF-Token": csrf})
            return r.status_code

        assert await write_with_old_cookie("alpha") == 201
        r = await client.post("/session/logout")
        assert r.status_code == 303
        assert SESSION_COOKIE not in client.cookies
        assert 'name="csrf-token"' not in (await client.get("/")).text
        # the old cookie, replayed with its CSRF token, no longer signs anyone in
        assert await write_with_old_cookie("beta") == 401

    run(runtime, scenario)


def test_sessions_expire(runtime: Runtime, clock: FakeClock) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        csrf = await sign_in(client)
        clock.advance(13 * 3600)
        r = await client.post("/api/stacks", json={"name": "alpha"},
                              headers={"X-CSRF-Token": csrf})
        assert r.status_code == 401

    run(runtime, scenario)


def test_provider_keys_never_reach_the_page(db_url: str, clock: FakeClock) -> None:
    keys = {"GROQ_API_KEY": "gsk_secret_groq_key_123", "OPENAI_API_KEY": "sk-secret-openai-456"}
    rt = Runtime.build(make_settings(db_url), clock, env=keys)
    try:
        async def scenario(client: httpx.AsyncClient) -> None:
            await create(client, "alpha")
            page = html_of(await client.get("/"))
            assert "LLM chain:" in page and 'class="badge simulated"' not in page
            index = (await client.get("/api")).text
            for key in keys.values():
                assert key not in page and key not in index

        run(rt, scenario)
    finally:
        rt.close()
