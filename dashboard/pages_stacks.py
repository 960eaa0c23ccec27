"""The Stacks page (every stack, one row each) and the Stack page (one stack in full)."""

from __future__ import annotations

from collections.abc import Sequence

from dashboard.pages_html import (
    DASH,
    badge,
    esc,
    ms,
    rate,
    time_cell,
    usd,
    write_button,
)
from orchestrator.slots import next_fire
from schema.models import (
    ArtifactOut,
    MemoryOut,
    MessageOut,
    StackOut,
    TickSummary,
    ts,
)


def next_tick(stack: StackOut, now: float) -> str:
    """The next beat after now for a running stack (its own interval), else a dash."""
    if stack.execution_state != "running":
        return DASH
    return time_cell(ts(next_fire(now, stack.interval_s)))


def _last(stack: StackOut) -> str:
    last = stack.last_tick
    if last is None:
        return DASH
    return f"{badge(last.status)} {time_cell(last.finished_at or last.queued_at)}"


def stack_row(stack: StackOut, now: float, signed_in: bool) -> str:
    c = stack.counts
    today = stack.usage_today
    sid = stack.id
    return (
        f'<tr data-stack-id="{sid}" data-interval="{stack.interval_s}" '
        f'data-state="{esc(stack.execution_state)}">'
        f'<td class="name"><a href="/stacks/{sid}">{esc(stack.name)}</a></td>'
        f'<td class="state">{badge(stack.execution_state)}</td>'
        f'<td class="last">{_last(stack)}</td>'
        f'<td class="next">{next_tick(stack, now)}</td>'
        f'<td class="rate">{rate(c.succeeded, c.failed, c.timed_out)}</td>'
        f'<td class="tokens num">{today.input_tokens + today.output_tokens}</td>'
        f'<td class="cost num">{usd(today.cost_usd)}</td>'
        '<td class="actions">'
        f'{write_button("play", "Play", signed_in, sid)}'
        f'{write_button("pause", "Pause", signed_in, sid)}'
        f'{write_button("tick", "Run a tick now", signed_in, sid)}</td></tr>'
    )


def stacks_body(stacks: Sequence[StackOut], now: float, signed_in: bool, llm: str) -> str:
    rows = "".join(stack_row(s, now, signed_in) for s in stacks)
    empty = "" if stacks else '<p class="empty">No stacks yet: create one below.</p>'
    disabled = "" if signed_in else " disabled"
    return (
        f"<h1>Stacks</h1>{llm}"
        '<div class="toolbar">'
        f'{write_button("play-all", "Play all", signed_in)}'
        f'{write_button("pause-all", "Pause all", signed_in)}</div>'
        '<table id="stacks" class="stacks"><thead><tr><th>Stack</th><th>State</th>'
        '<th>Last tick</th><th>Next tick</th><th>Success</th><th>Tokens today</th>'
        f'<th>Cost today</th><th></th></tr></thead><tbody>{rows}</tbody></table>{empty}'
        '<h2>New stack</h2>'
        '<form id="create-stack" class="create">'
        f'<input name="name" placeholder="name" aria-label="name" required maxlength="200"'
        f'{disabled}>'
        f'<input name="goal" placeholder="goal" aria-label="goal" maxlength="4000"{disabled}>'
        f'<button type="submit"{disabled}>Create</button></form>'
    )


def tick_row(tick: TickSummary) -> str:
    when = tick.started_at or tick.scheduled_at
    return (
        f'<tr data-tick-id="{tick.id}">'
        f'<td><a href="/ticks/{tick.id}">#{tick.id}</a></td>'
        f'<td class="status">{badge(tick.status)}</td>'
        f'<td class="trigger">{esc(tick.trigger)}</td>'
        f'<td class="when">{time_cell(when)}</td>'
        f'<td class="lateness num">{ms(tick.lateness_ms)}</td>'
        f'<td class="duration num">{ms(tick.duration_ms)}</td>'
        f'<td class="reason">{esc(tick.reason or "")}</td></tr>'
    )


def _memory(items: Sequence[MemoryOut]) -> str:
    if not items:
        return '<p class="empty">Nothing remembered yet.</p>'
    rows = "".join(f"<dt>{esc(m.key)}</dt><dd><pre>{esc(m.value)}</pre></dd>" for m in items)
    return f'<dl class="memory">{rows}</dl>'


def _messages(items: Sequence[MessageOut]) -> str:
    if not items:
        return '<p class="empty">No messages yet.</p>'
    rows = "".join(
        f'<li><span class="meta">{time_cell(m.created_at)} <b>{esc(m.agent)}</b> '
        f'(<a href="/ticks/{m.tick_id}">#{m.tick_id}</a>)</span>'
        f'<p>{esc(m.body)}</p></li>' for m in items)
    return f'<ul class="feed">{rows}</ul>'


def _artifacts(items: Sequence[ArtifactOut]) -> str:
    if not items:
        return '<p class="empty">No artifacts yet.</p>'
    rows = "".join(
        f'<details><summary>{esc(a.title)} <span class="meta">by {esc(a.agent)}, '
        f'tick <a href="/ticks/{a.tick_id}">#{a.tick_id}</a></span></summary>'
        f'<pre>{esc(a.content)}</pre></details>' for a in items)
    return f'<div class="artifacts">{rows}</div>'


def stack_body(stack: StackOut, ticks: Sequence[TickSummary], memory: Sequence[MemoryOut],
               messages: Sequence[MessageOut], artifacts: Sequence[ArtifactOut], now: float,
               signed_in: bool) -> str:
    sid = stack.id
    reason = stack.pause_reason or ""
    timeline = "".join(tick_row(t) for t in ticks)
    return (
        f'<header class="stack-head" data-stack-id="{sid}" data-interval="{stack.interval_s}" '
        f'data-state="{esc(stack.execution_state)}">'
        f'<h1>{esc(stack.name)} {badge(stack.execution_state)}</h1>'
        f'<p class="reason">{esc("paused: " + reason) if reason else ""}</p>'
        f'<p class="goal">{esc(stack.goal) or "<i>no goal</i>"}</p>'
        f'<p class="meta">every {stack.interval_s} s · next tick '
        f'<span class="next">{next_tick(stack, now)}</span> · team '
        f'{esc(" → ".join(stack.team))}</p>'
        '<div class="toolbar">'
        f'{write_button("play", "Play", signed_in, sid)}'
        f'{write_button("pause", "Pause", signed_in, sid)}'
        f'{write_button("tick", "Run a tick now", signed_in, sid)}</div></header>'
        '<h2>Ticks</h2><table id="timeline" class="timeline"><thead><tr><th>Tick</th>'
        '<th>Status</th><th>Trigger</th><th>Started</th><th>Lateness</th><th>Duration</th>'
        f'<th>Reason</th></tr></thead><tbody>{timeline}</tbody></table>'
        f'<div id="stack-extras"><div class="columns">'
        f'<section><h2>Memory</h2>{_memory(memory)}</section>'
        f'<section><h2>Messages</h2>{_messages(messages)}</section></div>'
        f'<h2>Artifacts</h2>{_artifacts(artifacts)}</div>'
    )
