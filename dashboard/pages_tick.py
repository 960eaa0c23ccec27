"""The Tick page: a waterfall of the tick's steps, then each step's prompt, output and attempts.

The waterfall puts every step on one time axis, from the tick's start to its last finish: a
bar's offset and width are percentages of that span (plain CSS widths).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from dashboard.pages_html import DASH, badge, esc, ms, time_cell, usd
from schema.models import AttemptOut, StepOut, TickDetail

SKIPS = {"skipped_open_breaker": "skipped: breaker open",
         "skipped_rate_limit": "skipped: rate limit"}


def _span(tick: TickDetail) -> tuple[float, float]:
    starts = [s.started_at for s in tick.steps if s.started_at] + (
        [tick.started_at] if tick.started_at else [])
    ends = [s.finished_at for s in tick.steps if s.finished_at] + (
        [tick.finished_at] if tick.finished_at else [])
    if not starts:
        return 0.0, 0.0
    t0 = min(x.timestamp() for x in starts)
    t1 = max([x.timestamp() for x in ends] + [t0])
    return t0, t1


def _bar(step: StepOut, t0: float, span: float, t1: float) -> tuple[float, float]:
    if step.started_at is None or span <= 0:
        return 0.0, 0.0
    start = step.started_at.timestamp()
    end = step.finished_at.timestamp() if step.finished_at else t1
    left = 100 * (start - t0) / span
    width = max(100 * (end - start) / span, 0.5)
    return round(left, 3), round(min(width, 100 - left), 3)


def waterfall(tick: TickDetail) -> str:
    if not tick.steps:
        return '<p class="empty">No steps yet.</p>'
    t0, t1 = _span(tick)
    span = t1 - t0
    rows = []
    for s in tick.steps:
        left, width = _bar(s, t0, span, t1)
        rows.append(
            f'<div class="wf-row" data-agent="{esc(s.agent)}">'
            f'<a class="wf-label" href="#step-{s.index}">{s.index + 1}. {esc(s.agent)}</a>'
            f'<div class="wf-track"><div class="wf-bar {esc(s.status)}" '
            f'style="margin-left:{left}%;width:{width}%"></div></div>'
            f'<span class="wf-ms num">{ms(s.duration_ms)}</span></div>')
    axis = (f'<div class="wf-axis"><span>0</span><span>{ms(span * 1000)}</span></div>'
            if span > 0 else "")
    return f'<div class="waterfall">{"".join(rows)}{axis}</div>'


def _content(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()


def _prompt(prompt: Sequence[dict[str, Any]] | None) -> str:
    if not prompt:
        return ""
    msgs = "".join(
        f'<div class="msg"><span class="role">{esc(m.get("role", "?"))}</span>'
        f'<pre>{esc(_content(m.get("content", "")))}</pre></div>' for m in prompt)
    return (f'<details class="prompt"><summary>Prompt ({len(prompt)} messages)</summary>'
            f'{msgs}</details>')


def _attempt(a: AttemptOut, first_provider: str) -> str:
    tags = ""
    if a.provider != first_provider:
        tags += ' <span class="tag fallback">fallback</span>'
    status = (f'<span class="tag skip">{esc(SKIPS[a.status])}</span>' if a.status in SKIPS
              else badge(a.status))
    retry = DASH if a.retry_after_s is None else f"{a.retry_after_s:g} s"
    return (
        f'<tr class="attempt"><td class="provider">{esc(a.provider)}{tags}</td>'
        f'<td>{esc(a.model)}</td><td>{status}</td>'
        f'<td class="num">{ms(a.latency_ms)}</td>'
        f'<td class="num">{a.input_tokens} / {a.output_tokens}</td>'
        f'<td class="num">{usd(a.cost_usd)}</td><td class="num">{retry}</td>'
        f'<td class="error">{esc(a.error or "")}</td></tr>'
    )


def _attempts(attempts: Sequence[AttemptOut]) -> str:
    if not attempts:
        return '<p class="empty">No LLM attempts.</p>'
    first = attempts[0].provider
    rows = "".join(_attempt(a, first) for a in attempts)
    return ('<table class="attempts"><thead><tr><th>Provider</th><th>Model</th>'
            '<th>Status</th><th>Latency</th><th>Tokens in / out</th><th>Cost</th>'
            f'<th>Retry after</th><th>Error</th></tr></thead><tbody>{rows}</tbody></table>')


def step_section(s: StepOut) -> str:
    parts = [_prompt(s.prompt)]
    if s.output is not None:
        parts.append(f'<h4>Output</h4><pre class="output">{esc(_content(s.output))}</pre>')
    if s.raw_output:
        parts.append('<h4>Raw output (did not validate)</h4>'
                     f'<pre class="raw">{esc(s.raw_output)}</pre>')
    if s.error:
        parts.append(f'<h4>Error</h4><pre class="error">{esc(s.error)}</pre>')
    parts.append(f"<h4>LLM attempts</h4>{_attempts(s.attempts)}")
    return (
        f'<section class="step" id="step-{s.index}" data-agent="{esc(s.agent)}">'
        f'<h3>{s.index + 1}. {esc(s.agent)} {badge(s.status)} '
        f'<span class="meta">{ms(s.duration_ms)}</span></h3>{"".join(parts)}</section>'
    )


def _when(label: str, when: datetime | None) -> str:
    return f"<dt>{label}</dt><dd>{time_cell(when)}</dd>"


def tick_body(tick: TickDetail) -> str:
    reason = f"<dt>Reason</dt><dd>{esc(tick.reason)}</dd>" if tick.reason else ""
    return (
        f'<div id="tick"><h1>Tick #{tick.id} {badge(tick.status)}</h1>'
        f'<p class="meta">stack <a href="/stacks/{tick.stack_id}">{esc(tick.stack_name)}</a>'
        f' · {esc(tick.trigger)} · attempt {tick.attempt}</p>'
        f'<dl class="facts">{reason}{_when("Scheduled", tick.scheduled_at)}'
        f'{_when("Started", tick.started_at)}{_when("Finished", tick.finished_at)}'
        f"<dt>Lateness</dt><dd>{ms(tick.lateness_ms)}</dd>"
        f"<dt>Duration</dt><dd>{ms(tick.duration_ms)}</dd>"
        f"<dt>Tokens</dt><dd>{tick.input_tokens} in / {tick.output_tokens} out</dd>"
        f"<dt>Cost</dt><dd>{usd(tick.cost_usd)}</dd></dl>"
        f"<h2>Waterfall</h2>{waterfall(tick)}"
        f'<h2>Steps</h2><div id="steps">{"".join(step_section(s) for s in tick.steps)}</div>'
        "</div>"
    )
