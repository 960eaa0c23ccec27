"""The Tick page's figures: the waterfall's bars and each LLM attempt's marks.

The waterfall puts every step on one time axis, from the tick's start to its last finish: a
bar's offset and width are percentages of that span. The template writes them as
`data-left` / `data-width`; the page script applies them with `style.setProperty` (the pages
carry no inline style, so a Content-Security-Policy without 'unsafe-inline' holds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from schema.models import AttemptOut, StepOut, TickDetail

SKIPS = {"skipped_open_breaker": "skipped: breaker open",
         "skipped_rate_limit": "skipped: rate limit"}


@dataclass(frozen=True, slots=True)
class Bar:
    step: StepOut
    left: float  # percent of the span
    width: float


@dataclass(frozen=True, slots=True)
class Waterfall:
    bars: list[Bar]
    span_ms: float  # 0 when nothing has started


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


def waterfall(tick: TickDetail) -> Waterfall:
    t0, t1 = _span(tick)
    span = t1 - t0
    bars = [Bar(s, *_bar(s, t0, span, t1)) for s in tick.steps]
    return Waterfall(bars, span * 1000)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    attempt: AttemptOut
    fallback: bool  # another provider than the step's first one answered
    skip: str | None  # "skipped: breaker open" for an attempt the chain did not make


def attempt_rows(attempts: Sequence[AttemptOut]) -> list[AttemptRow]:
    first = attempts[0].provider if attempts else ""
    return [AttemptRow(a, a.provider != first, SKIPS.get(a.status)) for a in attempts]
