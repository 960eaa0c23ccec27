"""The dashboard reflects state, in a real browser: buttons live only when the API would do
what they ask, and changing as the stack changes; why a stack stopped; what a refused form
was refused for; times in the browser's own zone, the zone named; every page working under a
Content-Security-Policy without 'unsafe-inline'.

The server beats once an hour, so only the ticks a test asks for run, and its simulated model
takes about 0.8 s a call, so a page can see a tick queued and running.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, update

from orchestrator import stacks
from orchestrator.store.outbox import emit_many
from schema import read
from schema import tables as t
from schema.events import STACK_UPDATED
from tests.live_server import LiveServer
from tests.services import need, required

try:
    from playwright.sync_api import Browser, Locator, Page, Route, expect

    from tests.browser_helpers import (
        assert_not_reloaded,
        chromium,
        context,
        live,
        mark_not_reloaded,
        sign_in,
        write_directly,
    )
except ImportError:  # pragma: no cover - depends on the machine
    if required():
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

NEW_YORK = "America/New_York"
CSP = ("default-src 'self'; base-uri 'none'; object-src 'none'; frame-ancestors 'none'; "
       "form-action 'self'")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    need("chromium")
    with LiveServer(tmp_path_factory.mktemp("state") / "tickwork.db", tick_interval=3600,
                    sim_latency_ms="800,900") as live_server:
        yield live_server


@pytest.fixture(scope="module")
def browser(server: LiveServer) -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Browser, server: LiveServer) -> Iterator[Page]:
    with context(browser, server) as ctx:
        yield ctx.new_page()


def buttons(scope: Locator) -> tuple[Locator, Locator, Locator]:
    return tuple(scope.locator(f'button[data-action="{a}"]')  # type: ignore[return-value]
                 for a in ("play", "pause", "tick"))


def create_paused(server: LiveServer, name: str) -> dict[str, Any]:
    with server.api() as api:
        return api.post("/api/stacks", json={"name": name, "paused": True}).json()


def complete(conn: Connection, stack_id: int, now: float) -> None:
    """The stack met its goal (as a reviewer's answer would say), with its event."""
    row = conn.execute(update(t.stacks).where(t.stacks.c.id == stack_id)
                       .values(execution_state="completed", pause_reason=None, updated_at=now)
                       .returning(*t.stacks.c)).mappings().one()
    emit_many(conn, now, [(STACK_UPDATED, stack_id, None, read.stack_patch(row))])


def test_buttons_follow_the_stack_as_it_changes(page: Page, server: LiveServer) -> None:
    with server.api() as api:
        api.post("/api/stacks/pause-all").raise_for_status()
    sign_in(page)
    live(page)
    mark_not_reloaded(page)
    page.fill('#create-stack input[name="name"]', "steady")
    page.click('#create-stack button[type="submit"]')
    row = page.locator("#stacks tbody tr", has=page.get_by_role("link", name="steady"))
    last = row.locator("td.last .badge")
    play, pause, run = buttons(row)

    # Created running, its first tick queued at once: nothing to play, no tick to add.
    expect(last).to_have_text("running")
    expect(play).to_be_disabled()
    expect(pause).to_be_enabled()
    expect(run).to_be_disabled()
    expect(run).to_have_attribute("title", "a tick is already queued or running")
    expect(last).to_have_text("succeeded")
    expect(run).to_be_enabled()  # idle now: a tick can run
    run.click()
    expect(last).to_have_text("running")
    expect(run).to_be_disabled()
    expect(last).to_have_text("succeeded")
    expect(run).to_be_enabled()

    page.once("dialog", lambda dialog: dialog.accept("tea"))
    pause.click()
    expect(row.locator("td.state")).to_have_text("paused")
    expect(play).to_be_enabled()
    expect(pause).to_be_disabled()
    expect(run).to_have_attribute("title", "the stack is paused: play it first")

    # Changed elsewhere, followed here.
    play_all = page.locator('#stacks-toolbar button[data-action="play-all"]')
    pause_all = page.locator('#stacks-toolbar button[data-action="pause-all"]')
    expect(pause_all).to_be_disabled()
    expect(play_all).to_be_enabled()
    sid = row.get_attribute("data-stack-id")
    with server.api() as api:
        api.post(f"/api/stacks/{sid}/play").raise_for_status()
    expect(play).to_be_disabled()
    expect(pause).to_be_enabled()
    expect(pause_all).to_be_enabled()
    expect(play_all).to_be_disabled()  # every stack runs
    assert_not_reloaded(page)

    # The Stack page's header too.
    page.goto(f"/stacks/{sid}")
    live(page)
    play, pause, run = buttons(page.locator("#stack-head"))
    expect(pause).to_be_enabled()
    with server.api() as api:
        api.post(f"/api/stacks/{sid}/pause", json={"reason": "done for today"})
    expect(page.locator("#stack-head .reason")).to_have_text("paused: done for today")
    expect(play).to_be_enabled()
    expect(pause).to_be_disabled()
    expect(run).to_be_disabled()


def test_the_list_and_the_header_say_why_a_stack_stopped(page: Page,
                                                        server: LiveServer) -> None:
    stack = create_paused(server, "resting")
    sid = stack["id"]
    with server.api() as api:
        api.post(f"/api/stacks/{sid}/pause", json={"reason": "out for lunch"})
    page.goto("/")
    live(page)
    row = page.locator(f'#stacks tr[data-stack-id="{sid}"]')
    expect(row.locator("td.state")).to_have_text("paused")
    expect(row.locator("td.why")).to_have_text("out for lunch")
    head_page = page.context.new_page()
    head_page.goto(f"/stacks/{sid}")
    live(head_page)
    head = head_page.locator("#stack-head")
    expect(head.locator(".reason")).to_have_text("paused: out for lunch")

    write_directly(server, stacks.fail, sid, "no agent named poet")
    expect(row.locator("td.state")).to_have_text("failed")
    expect(row.locator("td.why")).to_have_text("no agent named poet")
    expect(head.locator("h1 .badge")).to_have_text("failed")
    expect(head.locator(".reason")).to_have_text("failed: no agent named poet")
    expect(head.locator('button[data-action="play"]')).to_have_attribute(
        "title", "sign in to change things")

    write_directly(server, complete, sid)
    expect(row.locator("td.state")).to_have_text("completed")
    expect(row.locator("td.why")).to_have_text("goal met")
    expect(head.locator(".reason")).to_have_text("completed: goal met")


def test_a_refused_form_says_what_was_wrong(page: Page) -> None:
    sign_in(page)
    page.fill('#create-stack input[name="name"]', "   ")  # nothing once trimmed
    page.click('#create-stack button[type="submit"]')
    flash = page.locator("#flash")
    expect(flash).to_have_class(re.compile(r"\berror\b"))
    expect(flash).to_contain_text("name: String should have at least 1 character")


def _local(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(ZoneInfo(NEW_YORK)).strftime("%H:%M:%S")


def _times_are_local(page: Page, at_least: int) -> None:
    shown: list[list[str]] = page.evaluate(
        "Array.from(document.querySelectorAll('time')).map(t => [t.dateTime, t.textContent])")
    assert len(shown) >= at_least, shown
    for iso, text in shown:
        assert re.search(r"\b\d\d:\d\d:\d\d E[SD]T$", text), (iso, text)
        assert _local(iso) in text, (iso, text)


def test_times_show_in_the_browsers_zone_on_every_page(browser: Browser,
                                                       server: LiveServer) -> None:
    with context(browser, server, timezone_id=NEW_YORK, locale="en-US") as ctx:
        page = ctx.new_page()
        with server.api() as api:
            stack = api.post("/api/stacks", json={"name": "clockwork"}).json()
        page.goto(f"/stacks/{stack['id']}")
        live(page)
        done = page.locator("#timeline tbody tr", has=page.locator(".badge.succeeded"))
        expect(done).to_have_count(1)
        _times_are_local(page, at_least=2)  # the next tick and the tick's start (+ messages)
        tick = done.get_attribute("data-tick-id")
        for path, at_least in (("/", 1), (f"/ticks/{tick}", 3), ("/system", 0)):
            page.goto(path)
            live(page)
            _times_are_local(page, at_least)

        # A row that arrives live is shown the same way.
        page.goto("/")
        live(page)
        with server.api() as api:
            later = api.post("/api/stacks", json={"name": "latecomer"}).json()
        cell = page.locator(f'#stacks tr[data-stack-id="{later["id"]}"] td.last time')
        expect(cell).to_have_text(re.compile(r"\d\d:\d\d:\d\d E[SD]T$"))
        _times_are_local(page, at_least=2)


def test_every_page_works_under_a_strict_content_security_policy(
        browser: Browser, server: LiveServer) -> None:
    with server.api() as api:
        stack = api.post("/api/stacks", json={"name": "strict"}).json()
    with context(browser, server, timezone_id="Asia/Tokyo") as ctx:
        page = ctx.new_page()
        refused: list[str] = []
        page.on("console", lambda m: refused.append(m.text)
                if "Content Security Policy" in m.text else None)

        def strict(route: Route) -> None:
            response = route.fetch()
            route.fulfill(response=response,
                          headers={**response.headers, "content-security-policy": CSP})

        pages = {"/", f"/stacks/{stack['id']}", "/system", "/session"}
        page.route(lambda url: urlsplit(url).path in pages or "/ticks/" in url, strict)
        sign_in(page)
        live(page)
        page.goto(f"/stacks/{stack['id']}")
        live(page)
        done = page.locator("#timeline tbody tr", has=page.locator(".badge.succeeded")).first
        expect(done).to_be_visible()
        expect(page.locator("#stack-head time").first).to_have_text(re.compile(r"GMT\+9$"))
        done.locator("a").click()
        live(page)
        bars = page.locator(".waterfall .wf-bar")
        expect(bars).to_have_count(4)
        assert all(w > 0 for w in bars.evaluate_all(
            "bars => bars.map(b => b.getBoundingClientRect().width)"))
        page.goto("/system")
        live(page)
        page.goto("/")
        live(page)
        page.once("dialog", lambda dialog: dialog.accept("strictly"))
        row = page.locator(f'#stacks tr[data-stack-id="{stack["id"]}"]')
        row.locator('button[data-action="pause"]').click()
        expect(row.locator("td.why")).to_have_text("strictly")
        assert refused == []


def _trace(conn: Connection, tick_id: int, trace_id: str, now: float) -> None:
    conn.execute(update(t.ticks).where(t.ticks.c.id == tick_id).values(trace_id=trace_id))


def test_the_tick_page_shows_its_trace_id_to_copy(browser: Browser, server: LiveServer) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    with server.api() as api:
        stack = api.post("/api/stacks", json={"name": "traced", "paused": True}).json()
        tick = api.post(f"/api/stacks/{stack['id']}/play").json()["last_tick"]
    with context(browser, server) as ctx:
        ctx.grant_permissions(["clipboard-read", "clipboard-write"])
        page = ctx.new_page()
        page.goto(f"/ticks/{tick['id']}")
        expect(page.locator("#tick h1 .badge")).to_have_text("succeeded")
        expect(page.locator("#tick .trace")).to_have_count(0)  # not traced
        write_directly(server, _trace, tick["id"], trace)
        page.reload()
        expect(page.locator("#tick .trace code")).to_have_text(trace)
        page.locator("#tick .trace button").click()
        expect(page.locator("#flash")).to_have_text(f"copied {trace}")
        assert page.evaluate("navigator.clipboard.readText()") == trace
