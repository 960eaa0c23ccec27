"""Hostile values on every page, in a real browser: markup, a quote break with a script, and
template syntax in every field a user or a model controls — a stack's name and goal, a pause
reason, a failure reason, memory keys and values, messages, artifact titles and contents, a
model's output, a refused answer and its error, a prompt — shown as text, as the page first
renders them and after each live update. No element is created from them and no script runs.

The values come from where they would in use: the API, agents (`tests.hostile_agents`, loaded
through TICKWORK_AGENTS's setting) whose model answers are hostile, and a write to the database
from outside the server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.live_server import LiveServer
from tests.services import need, required

try:
    from playwright.sync_api import Browser, Page, expect

    from tests.browser_helpers import (
        assert_not_reloaded,
        chromium,
        context,
        live,
        mark_not_reloaded,
        sign_in,
        watch_dialogs,
        with_settings,
        write_directly,
    )
except ImportError:  # pragma: no cover - depends on the machine
    if required():
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

from orchestrator import stacks
from tests.hostile_agents import (
    ARTIFACT_CONTENT,
    ARTIFACT_TITLE,
    ERROR,
    MEMORY_KEY,
    MEMORY_VALUE,
    MESSAGE,
    OUTPUT,
    PROMPT,
    RAW,
    evil,
)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

AGENTS = "tests.hostile_agents:Hostile,tests.hostile_agents:HostileFail"
NAME, GOAL = evil("name"), evil("goal")
PAUSED, FAILED = evil("pause reason"), evil("failure reason")


def as_json(text: str) -> str:
    """How a string shows inside pretty-printed JSON (a model's output, a raw answer)."""
    return json.dumps(text)[1:-1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Hour-long beats (only the ticks the test asks for) and a model slow enough (about
    1.5 s a call) that a page can watch a tick run."""
    need("chromium")
    live_server = LiveServer(tmp_path_factory.mktemp("hostile") / "tickwork.db",
                             tick_interval=3600, sim_latency_ms="1500,1700")
    with with_settings(live_server, agents=AGENTS) as running:
        yield running


@pytest.fixture(scope="module")
def browser(server: LiveServer) -> Iterator[Browser]:
    with chromium() as b:
        yield b


def shows_only_text(page: Page, *texts: str) -> None:
    """Every text is on the page, visible, and nothing hostile became an element."""
    page.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
    for text in texts:
        expect(page.get_by_text(text).first).to_be_visible()
    assert page.locator("img").count() == 0
    # the page's own scripts alone (the System and Stack pages' charts among them)
    scripts = page.evaluate("Array.from(document.scripts, s => s.getAttribute('src'))")
    assert "/static/app.js" in scripts
    assert set(scripts) <= {"/static/app.js", "/static/vendor/uPlot.iife.min.js",
                            "/static/charts.js"}
    assert page.locator("main script, main [onerror]").count() == 0


def test_hostile_values_show_as_text_on_every_page_and_after_live_updates(
        browser: Browser, server: LiveServer) -> None:
    with server.api() as api:
        stack = api.post("/api/stacks", json={
            "name": NAME, "goal": GOAL, "team": ["hostile", "hostile_fail"],
            "paused": True}).json()
    sid = stack["id"]
    with context(browser, server, timezone_id="UTC") as ctx:
        listing, detail = ctx.new_page(), ctx.new_page()
        seen = [watch_dialogs(p) for p in (listing, detail)]
        sign_in(listing)
        listing.goto("/")
        detail.goto(f"/stacks/{sid}")
        for p in (listing, detail):
            live(p)
            mark_not_reloaded(p)
        shows_only_text(listing, NAME)
        shows_only_text(detail, NAME, GOAL)

        # Played: its tick runs the hostile team while both pages watch, and a third page
        # follows the tick itself.
        with server.api() as api:
            api.post(f"/api/stacks/{sid}/play").raise_for_status()
            tick = max(api.get(f"/api/stacks/{sid}/ticks").json(), key=lambda t: t["id"])
        ticking = ctx.new_page()
        seen.append(watch_dialogs(ticking))
        ticking.goto(f"/ticks/{tick['id']}")
        live(ticking)
        mark_not_reloaded(ticking)
        expect(ticking.locator("#tick h1 .badge")).to_have_text("failed")
        expect(ticking.locator("section.step")).to_have_count(2)
        shows_only_text(ticking, NAME, as_json(OUTPUT), as_json(RAW), ERROR, PROMPT)
        expect(ticking.locator("#tick dd.reason")).to_contain_text(ERROR)

        row = detail.locator(f'#timeline tr[data-tick-id="{tick["id"]}"]')
        expect(row.locator("td.status")).to_have_text("failed")
        expect(row.locator("td.reason")).to_contain_text(ERROR)
        expect(detail.locator("#stack-extras")).to_contain_text(ARTIFACT_CONTENT)
        shows_only_text(detail, NAME, GOAL, MEMORY_KEY, MEMORY_VALUE, MESSAGE, ARTIFACT_TITLE,
                        ARTIFACT_CONTENT, ERROR)

        # Paused with a hostile reason, then failed with one from outside the server.
        with server.api() as api:
            api.post(f"/api/stacks/{sid}/pause", json={"reason": PAUSED}).raise_for_status()
        mine = listing.locator(f'#stacks tr[data-stack-id="{sid}"]')
        expect(mine.locator("td.why")).to_have_text(PAUSED)
        expect(detail.locator("#stack-head .reason")).to_have_text(f"paused: {PAUSED}")
        shows_only_text(listing, NAME, PAUSED)
        write_directly(server, stacks.fail, sid, FAILED)
        expect(mine.locator("td.state")).to_have_text("failed")
        expect(mine.locator("td.why")).to_have_text(FAILED)
        expect(detail.locator("#stack-head .reason")).to_have_text(f"failed: {FAILED}")
        shows_only_text(listing, NAME, FAILED)
        shows_only_text(detail, NAME, GOAL, FAILED, MESSAGE)
        for p in (listing, detail, ticking):
            assert_not_reloaded(p)

        # A refused write echoing the hostile name: the flash shows it as text.
        listing.fill('#create-stack input[name="name"]', NAME)
        listing.click('#create-stack button[type="submit"]')
        flash = listing.locator("#flash")
        expect(flash).to_contain_text("already exists")
        expect(flash).to_contain_text("\"><script>alert(")  # the name, quoted by the API
        shows_only_text(listing, NAME)

        # Rendered afresh, every page again, the System page too.
        for p, path in ((listing, "/"), (detail, f"/stacks/{sid}"),
                        (ticking, f"/ticks/{tick['id']}"), (ticking, "/system")):
            p.goto(path)
            live(p)
            shows_only_text(p, *(() if path == "/system" else (NAME,)))
        assert all(s == [] for s in seen)
