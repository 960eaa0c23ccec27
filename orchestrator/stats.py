"""In-process operational counters: what this process's worker and runner observed.

The engine feeds a `Stats` as it works (a tick claimed, a step's LLM attempts, a tick
finished); `/metrics` and the System page read it. Everything here runs on the event loop that
the engine shares, so it needs no locks; reads take a `Snapshot`. Times are passed in by the
callers (their Clock), so nothing here reads the wall clock.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agents.llm.base import Attempt
from orchestrator.store.abc import Claimed

# Seconds. Lateness targets are tens of milliseconds; a tick takes seconds (four LLM calls).
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
RECENT = 1024  # samples kept for percentiles
ANSWERED = ("ok", "invalid_output")  # the attempt reached a model that answered


class Histogram:
    """Cumulative-bucket histogram (the Prometheus kind), plus its recent samples."""

    def __init__(self, buckets: Sequence[float], recent: int = RECENT) -> None:
        self.bounds = tuple(sorted(buckets))
        self._counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0
        self.recent: deque[float] = deque(maxlen=recent)

    def observe(self, value: float) -> None:
        value = max(0.0, value)
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1
        self.recent.append(value)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations ≤ it), ending with (+Inf, count)."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += n
            out.append((bound, running))
        return out


def percentile(values: Iterable[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of `values`; None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True, slots=True)
class Snapshot:
    lateness: list[tuple[float, int]]
    lateness_sum: float
    lateness_count: int
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    work_lateness: list[tuple[float, int]]
    work_lateness_sum: float
    work_lateness_count: int
    work_lateness_p50_ms: float | None
    work_lateness_p99_ms: float | None
    duration: list[tuple[float, int]]
    duration_sum: float
    duration_count: int
    llm_requests: dict[tuple[str, str], int]
    fallbacks: dict[str, int]
    claimed: int
    finished: int
    ticks_per_s: float


class Stats:
    """The counters one process keeps. `window_s`: how far back "recent" rates look."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self.lateness = Histogram(LATENESS_BUCKETS)  # the claim
        self.work_lateness = Histogram(LATENESS_BUCKETS)  # the first step beginning
        self.duration = Histogram(DURATION_BUCKETS)
        self.llm_requests: Counter[tuple[str, str]] = Counter()  # (provider, status)
        self.fallbacks: Counter[str] = Counter()  # by the provider that served instead
        self.claimed = 0
        self.finished = 0
        self._finished_at: deque[float] = deque(maxlen=100_000)

    # -- fed by the engine -----------------------------------------------------------------

    def ticks_claimed(self, ticks: Sequence[Claimed], now: float) -> None:
        """Beat lateness: a beat tick's first start minus its slot's fire time."""
        self.claimed += len(ticks)
        for tick in ticks:
            if tick.slot is not None and tick.attempt == 1:
                self.lateness.observe(now - tick.scheduled_at)

    def work_started(self, tick: Claimed, now: float) -> None:
        """The start of work: a beat tick's first step beginning (its prompt about to be
        built, its first LLM request about to go out) minus its slot's fire time."""
        if tick.slot is not None and tick.attempt == 1:
            self.work_lateness.observe(now - tick.scheduled_at)

    def step_finished(self, attempts: Sequence[Attempt]) -> None:
        """Count a step's LLM attempts; a step answered by another model than the chain's
        first (whose attempt always comes first) is a fallback."""
        for a in attempts:
            self.llm_requests[(a.provider, a.status)] += 1
        served = next((a for a in reversed(attempts) if a.status in ANSWERED), None)
        if served is not None and (served.provider, served.model) != (
                attempts[0].provider, attempts[0].model):
            self.fallbacks[served.provider] += 1

    def tick_finished(self, duration_s: float, at: float) -> None:
        """A tick this process ran reached its end: `duration_s` from claim, `at` monotonic."""
        self.duration.observe(duration_s)
        self.finished += 1
        self._finished_at.append(at)

    # -- read by the views -----------------------------------------------------------------

    def ticks_per_s(self, now: float) -> float:
        """Ticks this process finished per second over the last `window_s` (monotonic now)."""
        since = now - self.window_s
        while self._finished_at and self._finished_at[0] < since:
            self._finished_at.popleft()
        return len(self._finished_at) / self.window_s

    def snapshot(self, now: float) -> Snapshot:
        p50, p99 = _ms(self.lateness, 50), _ms(self.lateness, 99)
        w = self.work_lateness
        return Snapshot(
            lateness=self.lateness.cumulative(), lateness_sum=self.lateness.sum,
            lateness_count=self.lateness.count, lateness_p50_ms=p50, lateness_p99_ms=p99,
            work_lateness=w.cumulative(), work_lateness_sum=w.sum, work_lateness_count=w.count,
            work_lateness_p50_ms=_ms(w, 50), work_lateness_p99_ms=_ms(w, 99),
            duration=self.duration.cumulative(), duration_sum=self.duration.sum,
            duration_count=self.duration.count, llm_requests=dict(self.llm_requests),
            fallbacks=dict(self.fallbacks), claimed=self.claimed, finished=self.finished,
            ticks_per_s=self.ticks_per_s(now))


def _ms(h: Histogram, q: float) -> float | None:
    """The q-th percentile of `h`'s recent samples, in milliseconds."""
    value = percentile(h.recent, q)
    return None if value is None else value * 1000
