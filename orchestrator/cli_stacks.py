"""`tickwork stacks ...`: create, list, show, budget, play, pause, delete, run a tick now.

These write straight to the configured database (an admin tool, run where the database is),
each command one transaction through `orchestrator.stacks`, outbox events included, so a running
`tickwork up` and its dashboard see the change.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection

from orchestrator import stacks
from orchestrator.cli_common import (
    Admin,
    admin,
    console,
    fail,
    fmt_time,
    print_json,
    status_text,
    ticks_table,
    usage_error,
)
from orchestrator.errors import NotFound
from schema import read
from schema.models import (
    INT32_MAX,
    USD_MAX,
    BudgetUpdate,
    StackCreate,
    StackOut,
    TeamUpdate,
    TickSummary,
)
from schema.read import tick_summary

app = typer.Typer(help="Create, inspect, play and pause stacks.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead.")]
StackId = Annotated[int, typer.Argument(metavar="ID", min=1, max=INT32_MAX,
                                        help="The stack's id (see `tickwork stacks list`).")]
OptStackId = Annotated[int | None, typer.Argument(metavar="ID", min=1, max=INT32_MAX,
                                                  help="The stack's id.")]
TeamOpt = Annotated[str | None, typer.Option(
    "--team", help="Agents in order, comma-separated (default: the four built-ins).")]

_OPTION_OF = {"name": "NAME", "goal": "--goal", "interval_s": "--interval", "team": "--team",
              "budget_tokens_per_day": "--budget-tokens", "budget_usd_per_day": "--budget-usd",
              "tokens_per_day": "--tokens", "usd_per_day": "--usd"}


def _option(field: str) -> str:
    return _OPTION_OF.get(field.split(".")[0], field)


def _stack(cx: Admin, conn: Connection, stack_id: int) -> StackOut:
    found = read.get_stack(conn, stack_id, cx.beat_interval, cx.default_team, cx.now())
    if found is None:
        raise NotFound(f"no stack with id {stack_id}")
    return found


def _one_of(ctx: typer.Context, stack_id: int | None, all_: bool, verb: str) -> None:
    if (stack_id is None) == (not all_):
        usage_error(ctx, f"give a stack ID to {verb}, or --all for every stack (not both)")


def _members(team: str | None) -> list[str] | None:
    return None if team is None else [m.strip() for m in team.split(",") if m.strip()]


@app.command("create")
def create_cmd(
    name: Annotated[str, typer.Argument(help="A unique name.")],
    goal: Annotated[str, typer.Option("--goal", "-g", help="What the team works towards.")] = "",
    interval: Annotated[int | None, typer.Option(
        "--interval", min=1, max=86_400,
        help="Seconds between ticks, a multiple of the beat interval (default: the beat).",
    )] = None,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    team: TeamOpt = None,
    budget_tokens: Annotated[int | None, typer.Option(
        "--budget-tokens", min=1, max=INT32_MAX,
        help="Daily token budget (UTC day); reaching it pauses the stack.",
    )] = None,
    budget_usd: Annotated[float | None, typer.Option(
        "--budget-usd", min=0, max=USD_MAX,
        help="Daily budget in USD (UTC day); reaching it pauses the stack.",
    )] = None,
    json_out: JsonOpt = False,
) -> None:
    """Create a stack; unless --paused, its first tick is queued at once. Its interval must
    be a whole number of beats (the beat is what `tickwork up` or `tickwork beat` runs at)."""
    with admin(_option) as cx:
        spec = StackCreate(name=name, goal=goal, interval_s=interval, team=_members(team),
                           paused=paused, budget_tokens_per_day=budget_tokens,
                           budget_usd_per_day=budget_usd)
        agents = cx.agents
        with cx.write() as conn:
            row = stacks.create(conn, spec, beat_interval=cx.beat_interval, now=cx.now(),
                                agents=agents)
            out = _stack(cx, conn, row["id"])
    if json_out:
        print_json(out)
        return
    what = ("paused" if out.execution_state == "paused"
            else "running; its first tick is queued")
    console.print(Text.assemble("created stack ", (str(out.id), "bold"), f" {out.name!r} ",
                                f"({what}), every {out.interval_s} s"))


@app.command("list")
def list_cmd(json_out: JsonOpt = False) -> None:
    """List the stacks with their state, last tick and tick counts."""
    with admin() as cx, cx.read() as conn:
        found = read.list_stacks(conn, cx.beat_interval, cx.default_team, now=cx.now())
    if json_out:
        print_json(found)
        return
    if not found:
        console.print("no stacks yet: create one with `tickwork stacks create NAME`")
        return
    table = Table("id", "name", "state", "every", "last tick", "ok", "failed", "skipped",
                  "note")
    for s in found:
        last = Text("—")
        if s.last_tick is not None:
            last = Text.assemble(status_text(s.last_tick.status),
                                 f" {fmt_time(s.last_tick.queued_at, short=True)}")
        table.add_row(str(s.id), Text(s.name), status_text(s.execution_state),
                      f"{s.interval_s} s", last, str(s.counts.succeeded), str(s.counts.failed),
                      str(s.counts.skipped), Text(s.pause_reason or ""))
    console.print(table)


def _ticks_table(ticks: list[TickSummary]) -> Table:
    return ticks_table(ticks, title="last ticks")


@app.command("show")
def show_cmd(
    stack_id: StackId,
    ticks: Annotated[int, typer.Option("--ticks", min=0, help="How many recent ticks.")] = 10,
    json_out: JsonOpt = False,
) -> None:
    """A stack: its state, counts, last ticks, memory, latest messages and artifacts.

    With --json: the API's stack shape, plus "ticks", "memory", "messages" and "artifacts"."""
    with admin() as cx, cx.read() as conn:
        out = _stack(cx, conn, stack_id)
        recent = read.list_ticks(conn, stack_id, ticks)
        memory = read.memory(conn, stack_id)
        messages = read.messages(conn, stack_id, 5)
        artifacts = read.artifacts(conn, stack_id, 5)
    if json_out:
        print_json({**out.model_dump(mode="json"),
                    "ticks": [tk.model_dump(mode="json") for tk in recent],
                    "memory": [m.model_dump(mode="json") for m in memory],
                    "messages": [m.model_dump(mode="json") for m in messages],
                    "artifacts": [a.model_dump(mode="json") for a in artifacts]})
        return
    head = Table.grid(padding=(0, 2))
    head.add_row("state", status_text(out.execution_state))
    if out.pause_reason:
        head.add_row("reason", Text(out.pause_reason))
    head.add_row("goal", Text(out.goal or "—"))
    head.add_row("every", f"{out.interval_s} s")
    head.add_row("team", Text(" → ".join(out.team)))
    head.add_row("created", fmt_time(out.created_at))
    counts = "  ".join(f"{k} {v}" for k, v in out.counts.model_dump().items() if v)
    head.add_row("ticks", counts or "none yet")
    head.add_row("spent today", _spend(out.usage_today.input_tokens
                                       + out.usage_today.output_tokens,
                                       out.usage_today.cost_usd, out.usage_today.llm_calls))
    head.add_row("budget", _budget(out))
    console.print(Panel(head, title=Text(f"stack {out.id}: {out.name}"), title_align="left"))
    if recent:
        console.print(_ticks_table(recent))
    if memory:
        table = Table("key", "value", "updated", title="memory", title_justify="left")
        for m in memory:
            table.add_row(Text(m.key), Text(m.value), fmt_time(m.updated_at, short=True))
        console.print(table)
    if messages:
        table = Table("tick", "agent", "message", title="latest messages", title_justify="left")
        for msg in messages:
            table.add_row(str(msg.tick_id), Text(msg.agent), Text(msg.body))
        console.print(table)
    if artifacts:
        items = [Group(Text.assemble((a.title, "bold"), f"  (tick {a.tick_id}, {a.agent})"),
                       Text(a.content)) for a in artifacts]
        console.print(Panel(Group(*items), title="latest artifacts", title_align="left"))


def _spend(tokens: int, usd: float, calls: int) -> str:
    return f"{tokens:,} tokens, ${usd:.4f} in {calls:,} LLM call(s)"


def _budget(out: StackOut) -> str:
    parts = []
    if out.budget.tokens_per_day is not None:
        parts.append(f"{out.budget.tokens_per_day:,} tokens")
    if out.budget.usd_per_day is not None:
        parts.append(f"${out.budget.usd_per_day:g}")
    return " or ".join(parts) + " a day" if parts else "none"


@app.command("budget")
def budget_cmd(
    stack_id: StackId,
    tokens: Annotated[int | None, typer.Option("--tokens", min=1, max=INT32_MAX,
                                               help="Daily token limit.")] = None,
    usd: Annotated[float | None, typer.Option("--usd", min=0, max=USD_MAX,
                                              help="Daily USD limit.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove both limits.")] = False,
) -> None:
    """Set a stack's daily budget (UTC day); limits not given stay as they are. Reaching it
    pauses the stack with reason `budget`."""
    with admin(_option) as cx, cx.write() as conn:
        current = _stack(cx, conn, stack_id).budget
        update = BudgetUpdate(
            tokens_per_day=None if clear else (tokens if tokens is not None
                                               else current.tokens_per_day),
            usd_per_day=None if clear else (usd if usd is not None else current.usd_per_day))
        stacks.set_budget(conn, stack_id, update, cx.now())
        out = _stack(cx, conn, stack_id)
    console.print(Text(f"stack {out.id} {out.name!r}: budget {_budget(out)}"))


@app.command("play")
def play_cmd(
    ctx: typer.Context,
    stack_id: OptStackId = None,
    all_: Annotated[bool, typer.Option("--all", help="Every stack that is not running.")] = False,
) -> None:
    """Set a stack (or all) running; its next tick is queued at once."""
    _one_of(ctx, stack_id, all_, "play")
    with admin() as cx:
        agents = cx.agents
        with cx.write() as conn:
            if stack_id is None:
                n = stacks.play_all(conn, now=cx.now())
                console.print(f"{n} stack(s) set running")
                return
            outcome = stacks.play(conn, stack_id, now=cx.now(), agents=agents)
    console.print(Text(outcome.message))


@app.command("pause")
def pause_cmd(
    ctx: typer.Context,
    stack_id: OptStackId = None,
    all_: Annotated[bool, typer.Option("--all", help="Every running stack.")] = False,
    reason: Annotated[str | None, typer.Option(
        "--reason", "-r", help="Why (shown to all); an already paused stack keeps its reason "
        "unless one is given.")] = None,
) -> None:
    """Pause a stack (or all): no new tick starts, queued ones are cancelled, a running one
    finishes."""
    _one_of(ctx, stack_id, all_, "pause")
    with admin() as cx, cx.write() as conn:
        if stack_id is None:
            n = stacks.pause_all(conn, reason, cx.now())
            console.print(f"{n} stack(s) paused")
            return
        outcome = stacks.pause(conn, stack_id, reason, cx.now())
    console.print(Text(outcome.message))


@app.command("team")
def team_cmd(
    stack_id: StackId,
    team: Annotated[str | None, typer.Argument(
        metavar="AGENTS", help="Agents in order, comma-separated.")] = None,
    default: Annotated[bool, typer.Option("--default", help="The default team again.")] = False,
) -> None:
    """Give a stack another team; its next tick runs it. The agents must be known to the
    running workers."""
    if (team is None) == (not default):
        fail("give the agents (e.g. planner,poet), or --default for the built-in team", 2)
    with admin(_option) as cx:
        update = TeamUpdate(team=None if default else _members(team))
        agents = cx.agents
        with cx.write() as conn:
            stacks.set_team(conn, stack_id, update.team, cx.now(), agents=agents)
            out = _stack(cx, conn, stack_id)
    console.print(Text(f"stack {out.id} {out.name!r}: team {' → '.join(out.team)}"))


@app.command("delete")
def delete_cmd(stack_id: StackId) -> None:
    """Delete a stack: it stops, and its queued ticks are cancelled."""
    with admin() as cx, cx.write() as conn:
        name = _stack(cx, conn, stack_id).name
        stacks.delete(conn, stack_id, cx.now())
    console.print(Text(f"deleted stack {stack_id} {name!r}"))


@app.command("tick")
def tick_cmd(stack_id: StackId, json_out: JsonOpt = False) -> None:
    """Run one tick now: it is queued, and a running `tickwork up` or worker picks it up."""
    with admin() as cx, cx.write() as conn:
        row = stacks.run_now(conn, stack_id, cx.now())
    if json_out:
        print_json(tick_summary(row))
        return
    console.print(f"queued tick {row['id']} for stack {stack_id}; a running `tickwork up` or "
                  "`tickwork worker` runs it")
