"""`tickwork ticks ...`: a stack's ticks, and one tick's trace (steps and LLM attempts)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agents.llm.sim import PROVIDER as SIM_PROVIDER
from orchestrator.cli_common import (
    admin,
    console,
    fmt_ms,
    fmt_time,
    print_json,
    status_text,
    ticks_table,
)
from orchestrator.errors import NotFound
from schema import read
from schema.models import INT32_MAX, INT64_MAX, AttemptOut, StepOut, TickDetail

app = typer.Typer(help="Inspect ticks: what each agent did and every LLM attempt.",
                  no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead.")]


def provider_label(provider: str) -> str:
    """The provider as shown to people; the simulated model always says so."""
    return f"{provider} (simulated)" if provider == SIM_PROVIDER else provider


@app.command("list")
def list_cmd(
    stack_id: Annotated[int, typer.Argument(metavar="STACK_ID", min=1, max=INT32_MAX,
                                            help="The stack's id.")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=1000,
                                       help="How many, newest first.")] = 20,
    json_out: JsonOpt = False,
) -> None:
    """A stack's ticks, newest first."""
    with admin() as cx, cx.read() as conn:
        if read.get_stack(conn, stack_id, cx.beat_interval, cx.default_team) is None:
            raise NotFound(f"no stack with id {stack_id}")
        ticks = read.list_ticks(conn, stack_id, limit)
    if json_out:
        print_json(ticks)
        return
    if not ticks:
        console.print(f"stack {stack_id} has no ticks yet")
        return
    console.print(ticks_table(ticks))


def _attempts(attempts: list[AttemptOut]) -> Table:
    table = Table("provider", "model", "status", "latency", "tokens in/out", "error",
                  box=None, padding=(0, 1))
    for a in attempts:
        error = a.error or ""
        if a.retry_after_s is not None:
            error = f"{error} (retry after {a.retry_after_s:g} s)".strip()
        table.add_row(provider_label(a.provider), Text(a.model), status_text(a.status),
                      fmt_ms(a.latency_ms), f"{a.input_tokens}/{a.output_tokens}", Text(error))
    return table


def _output(output: dict[str, Any]) -> Table:
    """An agent's output, one field a row; text as written, anything else as JSON."""
    grid = Table.grid(padding=(0, 2))
    for key, value in output.items():
        shown = value if isinstance(value, str) else orjson.dumps(value).decode()
        grid.add_row(Text(key, style="bold"), Text(shown))
    return grid


def _step(step: StepOut) -> Panel:
    parts: list[Text | Table] = []
    if step.output is not None:
        parts.append(_output(step.output))
    elif step.raw_output:
        parts.append(Text.assemble(("raw output (did not validate): ", "yellow"), step.raw_output))
    if step.error:
        parts.append(Text(step.error, style="red"))
    if step.attempts:
        parts.append(_attempts(step.attempts))
    title = Text.assemble(f"step {step.index + 1}: ", (step.agent, "bold"), " ",
                          status_text(step.status))
    return Panel(Group(*parts) if parts else Text("—"), title=title, title_align="left")


def render(tick: TickDetail) -> None:
    head = Table.grid(padding=(0, 2))
    head.add_row("stack", Text(f"{tick.stack_id} {tick.stack_name}"))
    head.add_row("status", Text.assemble(status_text(tick.status), f"  attempt {tick.attempt}"))
    if tick.reason:
        head.add_row("reason", Text(tick.reason))
    slot = "" if tick.slot is None else f", slot {tick.slot}"
    head.add_row("trigger", f"{tick.trigger}{slot}")
    head.add_row("queued", fmt_time(tick.queued_at))
    head.add_row("started", f"{fmt_time(tick.started_at)}  (late {fmt_ms(tick.lateness_ms)})")
    head.add_row("finished", f"{fmt_time(tick.finished_at)}  (took {fmt_ms(tick.duration_ms)})")
    console.print(Panel(head, title=f"tick {tick.id}", title_align="left"))
    if not tick.steps:
        console.print("no steps yet")
        return
    table = Table("#", "agent", "status", "duration", "attempts", "providers")
    for s in tick.steps:
        providers = ", ".join(dict.fromkeys(provider_label(a.provider) for a in s.attempts))
        table.add_row(str(s.index + 1), Text(s.agent), status_text(s.status),
                      fmt_ms(s.duration_ms),
                      str(len(s.attempts)), providers or "—")
    console.print(table)
    for s in tick.steps:
        console.print(_step(s))


@app.command("show")
def show_cmd(
    tick_id: Annotated[int, typer.Argument(
        metavar="TICK_ID", min=1, max=INT64_MAX,
        help="The tick's id (see `tickwork ticks list`).")],
    json_out: JsonOpt = False,
) -> None:
    """A tick: its steps with agent, status and duration, each step's output, and every LLM
    attempt (provider, model, status, latency, tokens)."""
    with admin() as cx, cx.read() as conn:
        tick = read.get_tick(conn, tick_id, cx.default_team)
        if tick is None:
            raise NotFound(f"no tick with id {tick_id}")
    if json_out:
        print_json(tick)
        return
    render(tick)
