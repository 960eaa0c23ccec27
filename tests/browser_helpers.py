"""What the dashboard's browser tests share: a Chromium, a page per test, signing in, waiting
for the live stream, catching dialogs, and writing to a live server's database from outside
(as another process, or the CLI, would)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect, sync_playwright

from orchestrator.store import open_store
from schema.db import Database
from tests.live_server import CHROMIUM_ARGS, TOKEN, LiveServer
from tests.services import CHROMIUM

DEADLINE_MS = 15_000


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def context(browser: Browser, server: LiveServer | str, **options: Any
            ) -> Iterator[BrowserContext]:
    """A fresh context on `server` (a live server, or a dashboard's URL)."""
    url = server if isinstance(server, str) else server.url
    ctx = browser.new_context(base_url=url, viewport={"width": 1280, "height": 800}, **options)
    ctx.set_default_timeout(DEADLINE_MS)
    try:
        yield ctx
    finally:
        ctx.close()


def watch_dialogs(page: Page) -> list[str]:
    """Every dialog the page opens (dismissed at once): a script that ran says so here."""
    seen: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return seen


def sign_in(page: Page) -> None:
    page.goto("/")
    page.fill('form.signin input[name="token"]', TOKEN)
    page.click('form.signin button[type="submit"]')
    expect(page.locator("nav .signed-in")).to_have_text("signed in")


def live(page: Page) -> None:
    expect(page.locator("#live")).to_have_text("live")


def mark_not_reloaded(page: Page) -> None:
    page.evaluate("window.notReloaded = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.notReloaded") is True


def write_directly(server: LiveServer, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(conn, *args, now)` in one transaction on the server's database, from outside."""
    db = Database(server.settings.database_url)
    try:
        store = open_store(db, lease_clock="process")
        with store.write() as conn:
            return fn(conn, *args, time.time())
    finally:
        db.close()


def with_settings(server: LiveServer, **changes: Any) -> LiveServer:
    """The server, not started yet, with other settings (agents, say)."""
    server.settings = server.settings.model_copy(update=changes)
    return server
