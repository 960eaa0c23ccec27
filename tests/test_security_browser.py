"""The dashboard in Chromium under the security headers it really sends: every page, signed in,
live over its event stream, and not one thing the Content-Security-Policy refuses; and no other
site may frame it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from dashboard.security import CONTENT_SECURITY_POLICY
from tests.live_server import LiveServer
from tests.services import need, required

try:
    from playwright.sync_api import Browser, expect

    from tests.browser_helpers import chromium, context, live, sign_in
except ImportError:  # pragma: no cover - depends on the machine
    if required():
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    need("chromium")
    with LiveServer(tmp_path_factory.mktemp("security") / "tickwork.db",
                    tick_interval=3600) as live_server:
        yield live_server


@pytest.fixture(scope="module")
def browser(server: LiveServer) -> Iterator[Browser]:
    with chromium() as b:
        yield b


def test_every_page_works_under_the_policy_it_is_sent(browser: Browser,
                                                       server: LiveServer) -> None:
    with server.api() as api:
        stack = api.post("/api/stacks", json={"name": "hardened"}).json()
    with context(browser, server) as ctx:
        page = ctx.new_page()
        refused: list[str] = []
        page.on("console", lambda m: refused.append(m.text)
                if "Content Security Policy" in m.text else None)
        policies: list[str] = []
        page.on("response", lambda r: policies.append(r.headers.get(
            "content-security-policy", "")) if r.request.resource_type == "document" else None)

        sign_in(page)  # the form posts to /session, which redirects back
        live(page)
        page.goto(f"/stacks/{stack['id']}")
        live(page)
        done = page.locator("#timeline tbody tr", has=page.locator(".badge.succeeded")).first
        expect(done).to_be_visible()
        done.locator("a").click()
        live(page)
        page.goto("/system")
        live(page)
        page.goto("/")
        live(page)
        page.once("dialog", lambda dialog: dialog.accept("checked"))
        row = page.locator(f'#stacks tr[data-stack-id="{stack["id"]}"]')
        row.locator('button[data-action="pause"]').click()  # a write, by fetch, with CSRF
        expect(row.locator("td.why")).to_have_text("checked")

        assert policies and set(policies) == {CONTENT_SECURITY_POLICY}
        assert refused == []


def test_another_site_cannot_frame_the_dashboard(browser: Browser, server: LiveServer) -> None:
    with context(browser, server) as ctx:
        page = ctx.new_page()
        said: list[str] = []
        page.on("console", lambda m: said.append(m.text))
        page.set_content(f'<iframe src="{server.url}/"></iframe>')  # another origin's page
        page.wait_for_load_state("load")

        def refused() -> bool:
            return any("frame-ancestors 'none'" in m and "blocked" in m for m in said)

        deadline = time.monotonic() + 10
        while not refused() and time.monotonic() < deadline:
            page.wait_for_timeout(20)  # lets the console events arrive
        assert refused(), said
        frame = page.frames[-1]
        assert frame.url.startswith("chrome-error://")  # nothing of the dashboard is shown
        assert frame.locator("nav").count() == 0
