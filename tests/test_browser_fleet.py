"""The fleet in real browsers: a beat, a worker and two dashboard processes on PostgreSQL and a
Redis server of the test's own, each a real process, the poll interval set to minutes (only
Redis can carry a change from one process to another in time).

A stack created in one browser ticks at once; pausing it there shows in a second browser,
signed in nowhere, on the other dashboard process, within a blink; a Redis that goes away is
seen on the System page, and its return too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.procs import Procs, poll, procs_fixture
from tests.redis_helpers import PrivateRedis, private_redis
from tests.services import need, required
from tests.test_fleet import TOKEN, pg_database

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]
__all__ = ["pg_database", "private_redis"]  # fixtures

BLINK_MS = 1_500  # a change in one process, seen in a browser of another

try:
    from playwright.sync_api import Browser, Locator, Page, expect

    from tests.browser_helpers import DEADLINE_MS, chromium, context
except ImportError:  # pragma: no cover - depends on the machine
    if required():
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)


@pytest.fixture
def procs(tmp_path: Any, pg_database: str, private_redis: PrivateRedis) -> Iterator[Procs]:
    need("chromium")
    yield from procs_fixture(tmp_path, {
        "TICKWORK_DATABASE_URL": pg_database, "TICKWORK_ADMIN_TOKEN": TOKEN,
        "TICKWORK_REDIS_URL": private_redis.url, "TICKWORK_POLL_S": "300",
        "TICKWORK_SIM_LATENCY_MS": "20,60", "TICKWORK_TICK_INTERVAL": "1"})


@pytest.fixture
def browser() -> Iterator[Browser]:
    with chromium() as found:
        yield found


def _row(page: Page, name: str) -> Locator:
    return page.locator("#stacks tbody tr", has=page.get_by_role("link", name=name, exact=True))


def test_two_dashboards_one_fleet(procs: Procs, browser: Browser,
                                  private_redis: PrivateRedis) -> None:
    procs.cli("db", "upgrade")
    procs.start("beat")
    procs.start("worker")
    one, two = procs.start("dashboard"), procs.start("dashboard")
    with context(browser, one.url) as ctx_a, context(browser, two.url) as ctx_b:
        a, b = ctx_a.new_page(), ctx_b.new_page()
        a.goto("/")
        a.fill('form.signin input[name="token"]', TOKEN)
        a.click('form.signin button[type="submit"]')
        expect(a.locator("nav .signed-in")).to_have_text("signed in")
        b.goto("/")
        for page in (a, b):
            expect(page.locator("#live")).to_have_text("live")

        # Created in browser A: it ticks at once, and browser B (another process) sees it.
        a.fill('#create-stack input[name="name"]', "alpha")
        a.click('#create-stack button[type="submit"]')
        for page in (a, b):
            expect(_row(page, "alpha").locator("td.last .badge")).to_have_text("succeeded")

        # Paused in browser A: browser B shows it within a blink.
        a.once("dialog", lambda dialog: dialog.accept("lunch"))
        _row(a, "alpha").locator('button[data-action="pause"]').click()
        expect(_row(a, "alpha").locator("td.state")).to_have_text("paused")
        expect(_row(b, "alpha").locator("td.state")).to_have_text("paused", timeout=BLINK_MS)
        _row(a, "alpha").locator('button[data-action="play"]').click()
        expect(_row(b, "alpha").locator("td.state")).to_have_text("running", timeout=BLINK_MS)

        # Redis goes away: the System page of either dashboard says so, then says it is back.
        b.goto("/system")
        expect(b.locator("#system .wakeups")).to_have_text("redis")
        private_redis.stop()

        def says_away() -> bool:
            b.reload()
            return "unavailable" in b.locator("#system .wakeups").inner_text()

        poll(says_away, 15, "the System page to say Redis is away", every=0.5)
        private_redis.start()
        expect(b.locator("#system .wakeups")).to_have_text(  # without a reload
            "redis", timeout=DEADLINE_MS)
