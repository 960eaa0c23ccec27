"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a whole
tickwork on the real clock: a 1 s beat and a simulated model answering in 20-60 ms.

Waiting is Playwright's own: `expect(...)` retries its assertion until it holds or the deadline
passes. The browser only learns of changes over the event stream; no test reloads a page to see
one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.live_server import CHROMIUM_ARGS, TOKEN, LiveServer
from tests.services import CHROMIUM, need, required

pytestmark = pytest.mark.browser

HOSTILE = "<img src=x onerror=alert(1)>"
TEAM = ["planner", "builder", "communicator", "reviewer"]
DEADLINE_MS = 15_000

try:
    from playwright.sync_api import Browser, Dialog, Locator, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    if required():
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    need("chromium")
    with LiveServer(tmp_path_factory.mktemp("browser") / "tickwork.db") as live:
        yield live


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A model slow enough (about 1 s a step) that a page can watch a tick run."""
    need("chromium")
    with LiveServer(tmp_path_factory.mktemp("slow") / "tickwork.db",
                    sim_latency_ms="1000,1200") as live:
        yield live


@pytest.fixture(scope="module")
def browser(server: LiveServer) -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, server: LiveServer) -> Iterator[Page]:
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(DEADLINE_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


def sign_in(page: Page) -> None:
    page.goto("/")
    page.fill('form.signin input[name="token"]', TOKEN)
    page.click('form.signin button[type="submit"]')
    expect(page.locator("nav .signed-in")).to_have_text("signed in")


def row(page: Page, name: str) -> Locator:
    return page.locator("#stacks tbody tr", has=page.get_by_role("link", name=name, exact=True))


def live(page: Page) -> None:
    expect(page.locator("#live")).to_have_text("live")


def create_stack(page: Page, name: str) -> Locator:
    page.fill('#create-stack input[name="name"]', name)
    page.fill('#create-stack input[name="goal"]', f"goal of {name}")
    page.click('#create-stack button[type="submit"]')
    return row(page, name)


def test_sign_in_create_a_stack_and_watch_its_first_tick_arrive(page: Page) -> None:
    sign_in(page)
    live(page)
    page.evaluate("window.notReloaded = true")
    alpha = create_stack(page, "alpha")
    expect(alpha).to_have_count(1)
    expect(alpha.locator("td.state")).to_have_text("running")
    expect(alpha.locator("td.last .badge")).to_have_text("succeeded")
    expect(alpha.locator("td.rate")).to_have_text("100%")
    assert page.evaluate("window.notReloaded") is True


def test_pause_with_a_reason_changes_the_badge(page: Page, server: LiveServer) -> None:
    sign_in(page)
    live(page)
    beta = create_stack(page, "beta")
    expect(beta.locator("td.state")).to_have_text("running")
    page.once("dialog", lambda dialog: dialog.accept("lunch break"))
    beta.locator('button[data-action="pause"]').click()
    expect(beta.locator("td.state")).to_have_text("paused")
    expect(beta.locator("td.next")).to_have_text("—")
    with server.api() as api:
        stacks = {s["name"]: s for s in api.get("/api/stacks").json()}
    assert stacks["beta"]["pause_reason"] == "lunch break"
    page.get_by_role("link", name="beta", exact=True).click()
    expect(page.locator("header.stack-head .reason")).to_have_text("paused: lunch break")


def test_a_tick_shows_four_steps_with_their_attempts(page: Page, server: LiveServer) -> None:
    with server.api() as api:
        stack = api.post("/api/stacks", json={"name": "gamma"}).json()
    page.goto(f"/stacks/{stack['id']}")
    live(page)
    shown = page.locator("#timeline tbody tr").count()
    page.wait_for_function(  # the 1 s beat adds ticks; each appears without a reload
        "n => document.querySelectorAll('#timeline tbody tr').length > n", arg=shown)
    done = page.locator("#timeline tbody tr", has=page.locator(".badge.succeeded")).first
    expect(done).to_be_visible()  # arrives over the event stream
    done.locator("a").click()
    steps = page.locator("section.step")
    expect(steps).to_have_count(4)
    for i, agent in enumerate(TEAM):
        step = steps.nth(i)
        expect(step).to_have_attribute("data-agent", agent)
        expect(step.locator("tr.attempt td.provider").first).to_have_text("sim")
    expect(page.locator(".waterfall .wf-bar")).to_have_count(4)


def test_a_hostile_stack_name_renders_as_text(page: Page, server: LiveServer) -> None:
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    with server.api() as api:
        stack = api.post("/api/stacks", json={"name": HOSTILE}).json()
    page.goto("/")
    live(page)
    expect(row(page, HOSTILE)).to_have_count(1)
    expect(row(page, HOSTILE).locator("td.last .badge")).to_have_text("succeeded")
    page.goto(f"/stacks/{stack['id']}")
    expect(page.locator("h1")).to_contain_text(HOSTILE)
    assert page.locator('img[src="x"]').count() == 0
    assert dialogs == []


def test_writes_without_signing_in_are_refused(page: Page, server: LiveServer) -> None:
    with server.api() as api:
        stack = api.post("/api/stacks", json={"name": "delta"}).json()
    page.goto("/")
    pause = row(page, "delta").locator('button[data-action="pause"]')
    expect(pause).to_be_disabled()
    expect(page.locator("nav .hint")).to_have_text("sign in to change things")
    status = page.evaluate(
        "id => fetch(`/api/stacks/${id}/pause`, {method: 'POST'}).then(r => r.status)",
        stack["id"])
    assert status == 401
    sign_in(page)
    status = page.evaluate(
        "id => fetch(`/api/stacks/${id}/pause`, {method: 'POST'}).then(r => r.status)",
        stack["id"])
    assert status == 403  # the session cookie alone, without the CSRF token
    with server.api() as api:
        assert api.get(f"/api/stacks/{stack['id']}").json()["execution_state"] == "running"


def test_the_tick_page_follows_a_running_tick(browser: Browser, slow_server: LiveServer) -> None:
    with slow_server.api() as api:
        stack = api.post("/api/stacks", json={"name": "slow"}).json()
        ticks = api.get(f"/api/stacks/{stack['id']}/ticks").json()
    tick = min(ticks, key=lambda t: t["id"])  # queued at creation; later slots are skipped
    context = browser.new_context(base_url=slow_server.url)
    context.set_default_timeout(DEADLINE_MS)
    try:
        page = context.new_page()
        page.goto(f"/ticks/{tick['id']}")
        assert page.locator("body").get_attribute("data-status") in ("queued", "running")
        live(page)
        page.evaluate("window.notReloaded = true")
        # The first step's prompt, opened while the tick runs, stays open as the page follows.
        page.locator("#prompt-0 summary").click()
        expect(page.locator("#tick h1 .badge")).to_have_text("succeeded")
        expect(page.locator("#prompt-0")).to_have_attribute("open", "")
        expect(page.locator("section.step")).to_have_count(4)
        expect(page.locator("section.step .badge.succeeded")).to_have_count(4)
        assert page.evaluate("window.notReloaded") is True
    finally:
        context.close()


def test_the_system_page_shows_slots_as_times(page: Page) -> None:
    page.goto("/system")
    live(page)
    fired = page.locator("#beat td.slot time").first
    expect(fired).to_be_visible()
    slot = int((page.locator("#beat td.slot").first.get_attribute("title") or "").split()[-1])
    when = fired.get_attribute("datetime") or ""
    assert datetime.fromisoformat(when).timestamp() == slot * 1  # a 1 s beat: slot × 1 s
    expect(fired).to_have_text(re.compile(r"^\d\d:\d\d:\d\d \S+$"))  # a time, its zone named
    expect(page.locator("#beat")).not_to_contain_text(str(slot))
    expect(page.locator("#beat .last-slot time")).to_be_visible()


def test_the_pages_have_an_svg_favicon(page: Page) -> None:
    page.goto("/")
    icon = page.locator('link[rel="icon"]')
    expect(icon).to_have_attribute("type", "image/svg+xml")
    answer = page.request.get(icon.get_attribute("href") or "")
    assert answer.ok and answer.headers["content-type"].startswith("image/svg+xml")
    assert page.evaluate(
        "href => fetch(href).then(r => r.text()).then(t => t.startsWith('<svg'))",
        icon.get_attribute("href"))
