"""The one renderer of the dashboard's HTML: a Jinja2 environment over `dashboard/templates/`.

Autoescape is on for every template, so a value from a stack, a tick or a model is text on the
page whatever it holds; markup comes only from the templates themselves. Undefined names are
errors (StrictUndefined), not silently empty cells. One `Renderer` is built per app (by
`dashboard.pages.router`) and renders both whole pages and the parts the page script swaps in
live, from the same partials.

The filters here format values the way every page shows them; times go out as
`<time datetime="…">` with a UTC text that the page script re-renders in the browser's own
zone, the zone named.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined

from dashboard import pages_stacks, pages_tick
from dashboard.session import CSRF_HEADER

DASH = "—"
NO_STORE = {"Cache-Control": "no-store"}


def ms(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def ms1(value: float | None) -> str:
    """Milliseconds to a tenth (the System page's figures)."""
    return DASH if value is None else f"{value:.1f} ms"


def seconds(value: float | None) -> str:
    return DASH if value is None else f"{value:.1f} s"


def usd(value: float) -> str:
    return f"${value:.4f}"


def number(value: int | None) -> str:
    return DASH if value is None else str(value)


def iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat()


def utc(when: datetime) -> str:
    """The text a `<time>` carries until the page script shows it in the browser's zone."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty(value: Any) -> str:
    """A model's output (or a chat message's content) as readable text."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ms=ms, ms1=ms1, seconds=seconds, usd=usd, number=number, iso=iso,
                       utc=utc, pretty=pretty)
    env.globals.update(
        DASH=DASH,
        csrf_header=CSRF_HEADER,
        controls=pages_stacks.controls,
        toolbar=pages_stacks.toolbar,
        state_note=pages_stacks.state_note,
        state_reason=pages_stacks.state_reason,
        next_fire=pages_stacks.next_fire_at,
        success_rate=pages_stacks.success_rate,
        waterfall=pages_tick.waterfall,
        attempt_rows=pages_tick.attempt_rows,
        slot_time=pages_stacks.slot_time,
    )
    return env


class Renderer:
    """Renders the templates into HTML responses (never cached: pages show live state)."""

    def __init__(self, env: Environment | None = None) -> None:
        self.env = env or environment()

    def html(self, name: str, context: Mapping[str, Any]) -> str:
        return self.env.get_template(name).render(context)

    def response(self, name: str, context: Mapping[str, Any], *, status: int = 200
                 ) -> HTMLResponse:
        return HTMLResponse(self.html(name, context), status_code=status, headers=NO_STORE)
