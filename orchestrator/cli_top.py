"""`tickwork top`: a live terminal view of the system, read from the database.

It reads TICKWORK_DATABASE_URL (next to a running `tickwork up`, or a fleet of workers) and
never writes: stacks with their state, last tick and counts; throughput and beat lateness;
each LLM provider's share of good answers over the last minute. Pausing and playing stay with
the `tickwork stacks` commands, which the footer shows. `--once` prints one frame and exits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agents.registry import DEFAULT_TEAM
from orchestrator import activity
from orchestrator.activity import Activity
from orchestrator.cli_common import (
    console,
    fmt_ms,
    fmt_time,
    load_settings,
    mask_url,
    open_database,
    status_text,
)
from schema import read
from schema.db import Database
from schema.models import StackOut

FOOTER = ("pause: tickwork stacks pause ID --reason TEXT   play: tickwork stacks play ID   "
          "(or --all)   quit: Ctrl-C")


def _stacks_table(found: Sequence[StackOut], limit: int) -> Table:
    table = Table("id", "stack", "state", "last tick", "at", "ok", "failed", "skipped",
                  title="Stacks", title_justify="left", expand=True)
    for s in found[:limit]:
        last = s.last_tick
        when = None if last is None else (last.finished_at or last.started_at or last.queued_at)
        c = s.counts
        table.add_row(str(s.id), Text(s.name, overflow="fold"), status_text(s.execution_state),
                      status_text(last.status) if last is not None else Text("—"),
                      fmt_time(when, short=True), str(c.succeeded),
                      str(c.failed + c.timed_out), str(c.skipped))
    if len(found) > limit:
        table.caption = f"… and {len(found) - limit} more (tickwork stacks list)"
    if not found:
        table.caption = "no stacks yet: tickwork stacks create NAME"
    return table


def _figures(act: Activity) -> Table:
    table = Table.grid(padding=(0, 3))
    table.add_row(
        Text.assemble(("throughput ", "bold"), f"{act.ticks_per_s:.2f} ticks/s "
                      f"({act.finished} in the last {act.window_s:g} s)"),
        Text.assemble(("lateness ", "bold"), f"p50 {fmt_ms(act.lateness_p50_ms)}  "
                      f"p99 {fmt_ms(act.lateness_p99_ms)}  ({act.lateness_samples} ticks)"),
    )
    table.add_row(
        Text.assemble(("queue ", "bold"), f"{act.queue_depth} queued, {act.running} running"),
        Text.assemble(("workers ", "bold"),
                      ", ".join(f"{w} ({n})" for w, n in sorted(act.workers.items())) or "—"),
    )
    return table


def _providers(act: Activity) -> RenderableType:
    if not act.providers:
        return Text(f"no LLM attempt in the last {act.window_s:g} s", style="dim")
    table = Table("provider", "attempts", "ok", "errors", "outcomes",
                  title=f"Providers (last {act.window_s:g} s)", title_justify="left",
                  expand=True)
    for p in act.providers:
        style = "green" if p.ok_share >= 0.95 else "yellow" if p.ok_share >= 0.5 else "red"
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(p.statuses.items()) if k != "ok")
        table.add_row(Text(p.provider), str(p.attempts), Text(f"{p.ok_share:.0%}", style=style),
                      f"{1 - p.ok_share:.0%}", Text(outcomes or "—", overflow="fold"))
    return table


def frame(found: Sequence[StackOut], act: Activity, where: str, limit: int) -> RenderableType:
    """One screen of the view."""
    head = Text.assemble(("tickwork top", "bold"), f"  {where}  ",
                         (time.strftime("%H:%M:%S"), "dim"), ("  read-only", "dim"))
    return Group(head, _figures(act), _stacks_table(found, limit), _providers(act),
                 Panel(Text(FOOTER), border_style="dim"))


def _read(db: Database, beat_interval: int, limit: int, where: str) -> RenderableType:
    now = time.time()
    with db.read() as conn:
        found = read.list_stacks(conn, beat_interval, DEFAULT_TEAM, now=now)
        act = activity.recent(conn, now)
    return frame(found, act, where, limit)


def top(
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
    every: Annotated[float, typer.Option(
        "--every", min=0.2, help="Seconds between refreshes.")] = 1.0,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Most stacks shown.")] = 30,
) -> None:
    """A live view of stacks, throughput, lateness and provider health (read-only)."""
    settings = load_settings()
    where = mask_url(settings.database_url)
    with open_database(settings) as db:
        if once:
            console.print(_read(db, settings.tick_interval, limit, where))
            return
        try:
            with Live(_read(db, settings.tick_interval, limit, where), console=console,
                      auto_refresh=False, screen=False) as live:
                while True:
                    time.sleep(every)
                    live.update(_read(db, settings.tick_interval, limit, where), refresh=True)
        except KeyboardInterrupt:
            return
