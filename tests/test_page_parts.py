"""The pages' parts and what they say about state, on SQLite and PostgreSQL: each part a page
updates live is served alone and is the very markup of the page; buttons, reasons and times
follow the stack; nothing inline (script, style, handler) on any page.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import httpx
from sqlalchemy import Connection, update

from dashboard.render import Renderer
from orchestrator import stacks
from orchestrator.runtime import Runtime
from schema import tables as t
from schema.clock import FakeClock
from schema.models import TickDetail, ts
from tests.test_pages import ADMIN, create, html_of, run, run_queued_ticks, sign_in

TEMPLATE = "{{7*7}}"


class Inline(HTMLParser):
    """Collects what a Content-Security-Policy without 'unsafe-inline' would block."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "style":
            self.found.append("<style>")
        if tag == "script" and "src" not in names:
            self.found.append("<script> without src")
        self._in_script = tag == "script"
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.found.append(f"<{tag} {name}=>")
            if (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"<{tag} {name}=javascript:>")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.found.append("an inline script body")


def inline_parts(text: str) -> list[str]:
    parser = Inline()
    parser.feed(text)
    return parser.found


def button(html: str, action: str) -> str:
    """The `<button ...>` tag of `action` (the first one) in `html`."""
    found = re.search(rf'<button type="button" data-action="{action}"[^>]*>', html)
    assert found, f"no {action} button in {html[:300]}"
    return found.group(0)


def live(tag: str) -> bool:
    return " disabled" not in tag


async def setup(client: httpx.AsyncClient, rt: Runtime) -> tuple[dict[str, Any], int]:
    stack = await create(client, "alpha", goal="ship it")
    await run_queued_ticks(rt)
    tick = (await client.get(f"/api/stacks/{stack['id']}/ticks")).json()[0]
    return stack, tick["id"]


def test_no_page_or_part_has_inline_script_style_or_handlers(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack, tick = await setup(client, runtime)
        await sign_in(client)
        sid = stack["id"]
        for path in ("/", f"/stacks/{sid}", f"/ticks/{tick}", "/system", "/stacks/999",
                     f"/stacks/{sid}/row", "/stacks/toolbar", f"/stacks/{sid}/head",
                     f"/stacks/{sid}/extras", f"/ticks/{tick}/row", f"/ticks/{tick}/detail",
                     "/system/detail"):
            r = await client.get(path)
            assert r.headers["content-type"].startswith("text/html"), path
            assert inline_parts(r.text) == [], path

    run(runtime, scenario)


def test_each_part_is_the_markup_of_its_page(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack, tick = await setup(client, runtime)
        await sign_in(client)
        sid = stack["id"]
        pages = {path: html_of(await client.get(path))
                 for path in ("/", f"/stacks/{sid}", f"/ticks/{tick}", "/system")}
        for part, path in ((f"/stacks/{sid}/row", "/"), ("/stacks/toolbar", "/"),
                           (f"/stacks/{sid}/head", f"/stacks/{sid}"),
                           (f"/stacks/{sid}/extras", f"/stacks/{sid}"),
                           (f"/ticks/{tick}/row", f"/stacks/{sid}"),
                           (f"/ticks/{tick}/detail", f"/ticks/{tick}"),
                           ("/system/detail", "/system")):
            r = await client.get(part)
            assert r.headers["cache-control"] == "no-store"
            fragment = html_of(r).strip()
            assert fragment and fragment in pages[path], (part, path)

    run(runtime, scenario)


def test_parts_of_what_is_gone_answer_404(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack, _ = await setup(client, runtime)
        for path in ("/stacks/999/row", "/stacks/999/head", "/stacks/999/extras",
                     "/ticks/999/row", "/ticks/999/detail"):
            r = await client.get(path)
            assert r.status_code == 404 and r.text == "", path
        assert (await client.delete(f"/api/stacks/{stack['id']}", headers=ADMIN)
                ).status_code == 204
        assert (await client.get(f"/stacks/{stack['id']}/row")).status_code == 404

    run(runtime, scenario)


def test_buttons_follow_the_stack_state(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await sign_in(client)
        paused = await create(client, "paused", paused=True)
        row = html_of(await client.get(f"/stacks/{paused['id']}/row"))
        assert live(button(row, "play"))
        assert button(row, "pause").endswith('disabled title="the stack is paused">')
        assert 'title="the stack is paused: play it first"' in button(row, "tick")

        running = await create(client, "running")  # its first tick is queued at once
        for path in (f"/stacks/{running['id']}/row", f"/stacks/{running['id']}/head"):
            part = html_of(await client.get(path))
            assert 'title="the stack is already running"' in button(part, "play")
            assert live(button(part, "pause"))
            assert 'title="a tick is already queued or running"' in button(part, "tick")
        await run_queued_ticks(runtime)
        head = html_of(await client.get(f"/stacks/{running['id']}/head"))
        assert live(button(head, "tick"))  # nothing queued or running: it can run now

        bar = html_of(await client.get("/stacks/toolbar"))
        assert live(button(bar, "play-all")) and live(button(bar, "pause-all"))
        await client.post("/api/stacks/pause-all", headers=ADMIN)
        bar = html_of(await client.get("/stacks/toolbar"))
        assert live(button(bar, "play-all"))
        assert 'title="no stack is running"' in button(bar, "pause-all")
        await client.post("/api/stacks/play-all", headers=ADMIN)
        bar = html_of(await client.get("/stacks/toolbar"))
        assert 'title="every stack is running"' in button(bar, "play-all")

    run(runtime, scenario)


def _complete(conn: Connection, stack_id: int) -> None:
    conn.execute(update(t.stacks).where(t.stacks.c.id == stack_id)
                 .values(execution_state="completed", pause_reason=None))


def test_a_stack_says_why_it_is_not_running(runtime: Runtime, clock: FakeClock) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        lunch = await create(client, "lunch")
        await client.post(f"/api/stacks/{lunch['id']}/pause", headers=ADMIN,
                          json={"reason": "lunch break"})
        broken = await create(client, "broken")
        await runtime.store.transact(stacks.fail, broken["id"], "unknown agent poet",
                                     clock.now())
        done = await create(client, "done")
        await runtime.store.transact(_complete, done["id"])

        listing = html_of(await client.get("/"))
        for name, why in (("lunch", "lunch break"), ("broken", "unknown agent poet"),
                          ("done", "goal met")):
            row = listing.split(f">{name}</a>", 1)[1].split("</tr>", 1)[0]
            assert f'<td class="why">{why}</td>' in row, name
        for stack, note in ((lunch, "paused: lunch break"), (broken, "failed: unknown agent poet"),
                            (done, "completed: goal met")):
            head = html_of(await client.get(f"/stacks/{stack['id']}/head"))
            state = note.split(":")[0]
            assert f'<span class="badge {state}">{state}</span>' in head
            assert f'<p class="reason {state}">{note}</p>' in head

    run(runtime, scenario)


def test_times_say_their_zone_and_slots_show_as_times(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await create(client, "alpha")
        page = html_of(await client.get("/"))
        # the fake clock's next 10 s beat, labelled UTC until the page script shows it locally
        assert ('<td class="next"><time datetime="2027-01-15T08:00:10+00:00" data-every="10">'
                "2027-01-15 08:00:10 UTC</time></td>") in page
        await runtime.beat.fire()
        slot = runtime.beat.last_slot
        assert slot is not None
        system = html_of(await client.get("/system"))
        when = datetime.fromtimestamp(slot * 10, UTC)
        assert (f'<td class="slot" title="slot {slot}"><time datetime="{when.isoformat()}">'
                f'{when:%Y-%m-%d %H:%M:%S} UTC</time></td>') in system
        assert f"<td>{slot}</td>" not in system
        assert f'Last slot fired: <time datetime="{when.isoformat()}"' in system

    run(runtime, scenario)


def test_the_favicon_is_linked_and_served_as_svg(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        page = html_of(await client.get("/"))
        assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in page
        icon = await client.get("/static/favicon.svg")
        assert icon.status_code == 200
        assert icon.headers["content-type"].startswith("image/svg+xml")
        assert icon.text.startswith("<svg")

    run(runtime, scenario)


def test_template_syntax_in_a_value_stays_text(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client, TEMPLATE, goal="{% raw %}" + TEMPLATE)
        for path in ("/", f"/stacks/{stack['id']}"):
            page = html_of(await client.get(path))
            assert f">{TEMPLATE}</a>" in page or f">{TEMPLATE} <span" in page, path
            assert ">49<" not in page
        assert "{% raw %}{{7*7}}" in html_of(await client.get(f"/stacks/{stack['id']}"))

    run(runtime, scenario)


def _tick(**extra: Any) -> TickDetail:
    tick = TickDetail(id=7, stack_id=1, slot=10, trigger="beat", status="succeeded",
                      attempt=1, reason=None, queued_at=ts(100.0), scheduled_at=ts(100.0),
                      started_at=ts(100.0), finished_at=ts(101.0), lateness_ms=0.0,
                      duration_ms=1000.0, stack_name="alpha", steps=[])
    return tick.model_copy(update=extra)


def test_the_tick_page_shows_its_trace_when_it_has_one() -> None:
    render = Renderer()
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    page = render.html("parts/tick_detail.html", {"tick": _tick(trace_id=trace)})
    assert f'trace <code class="trace-id" title="{trace}">{trace}</code>' in page
    assert f'data-copy="{trace}">Copy</button>' in page
    for tick in (_tick(trace_id=None), _tick()):
        assert "trace-id" not in render.html("parts/tick_detail.html", {"tick": tick})
