"""The System and Stack pages' charts in a real browser (Debian's Chromium driven by Playwright)
against a whole tickwork on the real clock: a 1 s beat and a simulated model answering in
20-60 ms, so ticks finish every second while a page watches.

The charts are uPlot canvases drawn by /static/charts.js; what they hold is read through the
`window.tickworkCharts` hook the script keeps (its uPlot instances and the latest series).
Every page is served with the dashboard's own Content-Security-Policy, and a listener added
before any script runs records each violation the browser reports.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.live_server import LiveServer
from tests.services import need, required

try:
    from playwright.sync_api import Browser, Page, expect

    from tests.browser_helpers import DEADLINE_MS, chromium, context, live
except ImportError:  # pragma: no cover - depends on the machine
    if required():
        raise
    pytest.skip("playwright is not installed", allow_module_level=True)

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

TOKYO = "Asia/Tokyo"
WATCH = """
window.cspViolations = [];
document.addEventListener("securitypolicyviolation", (ev) => window.cspViolations.push(
  `${ev.violatedDirective} ${ev.blockedURI} ${ev.sourceFile}:${ev.lineNumber}`));
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    need("chromium")
    with LiveServer(tmp_path_factory.mktemp("charts") / "tickwork.db") as live_server:
        yield live_server


@pytest.fixture(scope="module")
def stack_id(server: LiveServer) -> int:
    """A running stack with a few finished ticks."""
    with server.api() as api:
        made = api.post("/api/stacks", json={"name": "charted", "goal": "be drawn"}).json()
        deadline = time.monotonic() + DEADLINE_MS / 1000
        while api.get(f"/api/stacks/{made['id']}").json()["counts"]["succeeded"] < 3:
            assert time.monotonic() < deadline, "no ticks finished in time"
            time.sleep(0.1)
    return int(made["id"])


@pytest.fixture(scope="module")
def browser(server: LiveServer) -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser: Browser, server: LiveServer) -> Iterator[Page]:
    with context(browser, server, timezone_id=TOKYO) as ctx:
        ctx.add_init_script(WATCH)
        p = ctx.new_page()
        errors: list[str] = []
        p.on("pageerror", lambda exc: errors.append(str(exc)))
        p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        yield p
        assert p.evaluate("window.cspViolations") == []
        assert errors == []


def assert_drawn(page: Page, *names: str) -> None:
    """Each chart's canvas is there with a size, filling the width of its box."""
    page.wait_for_function("() => document.getElementById('charts').dataset.draws >= 1")
    for name in names:
        canvas = page.locator(f"#chart-{name} .chart-plot canvas")
        expect(canvas).to_have_count(1)
        box = canvas.bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0, name
        plot = page.locator(f"#chart-{name} .chart-plot").bounding_box()
        assert plot is not None and abs(plot["width"] - box["width"]) <= 2, name
        expect(page.locator(f"#chart-{name} .chart-summary")).not_to_be_empty()


def series(page: Page, expression: str) -> object:
    return page.evaluate(f"() => {{ const h = window.tickworkCharts; return {expression}; }}")


def test_the_system_charts_are_drawn_and_follow_the_ticks(page: Page, stack_id: int) -> None:
    page.goto("/system")
    live(page)
    assert_drawn(page, "lateness", "ticks", "calls")
    caption = page.locator("#chart-lateness figcaption")
    expect(caption).to_contain_text("how long after its slot each beat tick was claimed")
    expect(page.locator("#chart-calls .chart-summary")).to_contain_text("sim ok")
    finished = "h.latest.ticks_finished.reduce((a, b) => a + b, 0)"
    before = series(page, finished)
    assert isinstance(before, int) and before >= 3
    # the stream's tick.finished events bring fresh series, well before the minute's refresh
    page.wait_for_function(
        f"() => {{ const h = window.tickworkCharts; return {finished} > {before}; }}",
        timeout=DEADLINE_MS)
    # what is drawn is what was fetched last
    drawn = series(page, "[h.charts.ticks.data[1], h.latest.ticks_per_s]")
    assert isinstance(drawn, list) and drawn[0] == drawn[1]
    calls = series(page, "h.latest.llm_calls.map(c => [c.provider, c.outcome])")
    assert calls == [["sim", "ok"]]


def test_system_times_are_in_the_browsers_zone(page: Page, stack_id: int) -> None:
    page.goto("/system")
    assert_drawn(page, "lateness")
    label = series(page, "h.charts.lateness.axes[0].label")
    assert label == "time (GMT+9)"
    last = series(page, "h.latest.t[h.latest.t.length - 1]")
    assert isinstance(last, float | int)
    shown = series(page, f"h.charts.lateness.axes[0].values(h.charts.lateness, [{last}])[0]")
    assert shown == datetime.fromtimestamp(last, ZoneInfo(TOKYO)).strftime("%H:%M")


def test_the_charts_fill_their_box_as_the_window_changes(page: Page, stack_id: int) -> None:
    page.goto("/system")
    assert_drawn(page, "calls")
    wide = series(page, "h.charts.calls.width")
    page.set_viewport_size({"width": 700, "height": 800})
    page.wait_for_function(f"() => window.tickworkCharts.charts.calls.width < {wide}")
    assert_drawn(page, "lateness", "ticks", "calls")


def test_the_stack_charts_are_drawn_and_follow_its_ticks(page: Page, stack_id: int) -> None:
    page.goto(f"/stacks/{stack_id}")
    live(page)
    assert_drawn(page, "durations", "usage")
    expect(page.locator("#chart-usage figcaption")).to_contain_text("UTC days")
    points = page.locator("#chart-durations").get_attribute("data-points")
    assert points is not None and int(points) >= 3
    assert series(page, "h.charts.usage.data[0].length") == 30
    assert series(page, "h.charts.usage.axes[0].label") == "day (UTC)"
    tokens = series(page, "h.charts.usage.data[1][29]")
    assert isinstance(tokens, int) and tokens > 0  # today's, every tick spends some
    newest = "h.latest.ticks.tick_id[h.latest.ticks.tick_id.length - 1]"
    before = series(page, newest)
    page.wait_for_function(
        f"() => {{ const h = window.tickworkCharts; return {newest} > {before}; }}",
        timeout=DEADLINE_MS)
    drawn = series(page, "[h.charts.durations.data[0], h.latest.ticks.t]")
    assert isinstance(drawn, list) and drawn[0] == drawn[1]



def test_llm_calls_are_stacked_and_a_hidden_outcome_leaves_the_stack(page: Page) -> None:
    """Two providers' calls (as the API would give them) drawn as one stack per minute; the
    legend gives each layer's own count; hiding a layer in the legend restacks the others."""
    now = time.time()
    first = (now // 60 - 2) * 60
    body = {"now": now, "step_s": 60, "t": [first, first + 60, first + 120],
            "lateness_p50_ms": [None] * 3, "lateness_p99_ms": [None] * 3,
            "lateness_samples": [0] * 3, "ticks_finished": [0] * 3, "ticks_per_s": [0.0] * 3,
            "llm_calls": [
                {"provider": "groq", "outcome": "ok", "calls": [1, 2, 3]},
                {"provider": "groq", "outcome": "rate_limited", "calls": [1, 0, 0]},
                {"provider": "openai", "outcome": "fallback", "calls": [0, 4, 1]}]}
    page.route("**/api/system/series*", lambda route: route.fulfill(json=body))
    page.goto("/system")
    assert_drawn(page, "calls")
    labels = series(page, "h.charts.calls.series.slice(1).map(s => s.label)")
    assert labels == ["openai fallback", "groq rate limited (429)", "groq ok"]  # top first
    assert series(page, "h.charts.calls.data.slice(1)") == [[2, 6, 4], [2, 2, 3], [1, 2, 3]]
    own = series(page, "h.charts.calls.series.slice(1).map((s, i) => "
                       "s.value(h.charts.calls, null, i + 1, 1))")
    assert own == ["4", "0", "2"]
    expect(page.locator("#chart-calls .chart-summary")).to_have_text(
        "12 calls in the window: groq ok 6, groq rate limited (429) 1, openai fallback 5.")
    page.locator("#chart-calls .u-legend .u-series", has_text="rate limited").click()
    page.wait_for_function(
        "() => window.tickworkCharts.charts.calls.data[1].join() === '1,6,4'")
    assert series(page, "h.charts.calls.data.slice(1)") == [[1, 6, 4], [None] * 3, [1, 2, 3]]
