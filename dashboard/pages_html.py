"""The pages' HTML building blocks: escaping, the layout, and how values are shown.

Every value that comes from a stack, a tick or model output goes through `esc` (or a helper
built on it) before it reaches the page; the page scripts render live data with textContent.
Formats here match `dashboard/static/app.js`, which re-renders the same cells live.
"""

from __future__ import annotations

import html
from datetime import UTC, datetime

from dashboard.session import CSRF_HEADER

DASH = "—"


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def time_cell(when: datetime | None) -> str:
    if when is None:
        return DASH
    when = when.astimezone(UTC)
    return (f'<time datetime="{esc(when.isoformat())}" title="{esc(when.isoformat())}">'
            f'{esc(when.strftime("%H:%M:%S"))}</time>')


def ms(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value / 1000:.2f} s" if value >= 1000 else f"{value:.0f} ms"


def usd(value: float) -> str:
    return f"${value:.4f}"


def badge(status: str) -> str:
    return f'<span class="badge {esc(status)}">{esc(status)}</span>'


def rate(succeeded: int, failed: int, timed_out: int) -> str:
    done = succeeded + failed + timed_out
    return DASH if done == 0 else f"{round(100 * succeeded / done)}%"


def write_button(action: str, label: str, signed_in: bool, stack_id: int | None = None) -> str:
    target = "" if stack_id is None else f' data-stack="{stack_id}"'
    disabled = "" if signed_in else ' disabled title="sign in to change things"'
    return (f'<button type="button" data-action="{esc(action)}"{target}{disabled}>'
            f'{esc(label)}</button>')


def _nav(path: str, csrf: str | None) -> str:
    if csrf is None:
        account = (
            '<form class="signin" method="post" action="/session">'
            f'<input type="hidden" name="next" value="{esc(path)}">'
            '<input type="password" name="token" placeholder="admin token" '
            'autocomplete="current-password" aria-label="admin token" required>'
            '<button type="submit">Sign in</button></form>'
            '<span class="hint">sign in to change things</span>')
    else:
        account = ('<span class="signed-in">signed in</span>'
                   '<form method="post" action="/session/logout">'
                   '<button type="submit">Sign out</button></form>')
    return (
        '<nav><a class="brand" href="/">tickwork</a>'
        '<a href="/">Stacks</a><a href="/system">System</a>'
        '<a href="/api">API</a>'
        f'<span class="spacer"></span>{account}</nav>'
    )


def llm_line(label: str, simulated: bool) -> str:
    sim = ' <span class="badge simulated">simulated</span>' if simulated else ""
    return f'<p class="llm">LLM chain: <span class="chain">{esc(label)}</span>{sim}</p>'


def page(title: str, body: str, *, path: str, csrf: str | None, kind: str,
         data: dict[str, object] | None = None, error: str | None = None) -> str:
    """A whole page. `kind` and `data` become data- attributes the page script reads."""
    attrs = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in (data or {}).items())
    meta = f'<meta name="csrf-token" content="{esc(csrf)}">' if csrf else ""
    flash = f'<p class="flash error" role="alert">{esc(error)}</p>' if error else ""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · tickwork</title>{meta}"
        f'<meta name="csrf-header" content="{esc(CSRF_HEADER)}">'
        '<link rel="stylesheet" href="/static/app.css">'
        '<script src="/static/app.js" defer></script></head>'
        f'<body data-page="{esc(kind)}"{attrs}>{_nav(path, csrf)}'
        f'<main>{flash}<p id="flash" class="flash" role="status" hidden></p>'
        f'<p id="live" class="live">connecting…</p>{body}</main></body></html>\n'
    )
