"""In-process operational figures: what this process's worker and runner observed.

The engine feeds a `Stats` as it works (a tick claimed, a step's LLM attempts, a tick
finished). Its histograms and counters are prometheus-client instruments in a
`CollectorRegistry` of the Stats' own (`Stats.registry`; pass one in to share it), never the
library's global one, so a test can build as many as it likes; `orchestrator.metrics` exposes
them with the families read at scrape time. The System page reads the same figures through a
`Snapshot`, with percentiles over the recent samples each histogram keeps beside it. The
instruments are thread-safe (a scrape may read them from another thread); the rest is touched
on the event loop only. Times are passed in by the callers (their Clock), so nothing here reads
the wall clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics
from prometheus_client import Histogram as Instrument

from agents.llm.base import Attempt
from orchestrator.store.abc import Claimed
from schema.models import AttemptStatus

# Seconds. Lateness targets are tens of milliseconds; a tick takes seconds (four LLM calls).
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
RECENT = 1024  # samples kept for percentiles
ANSWERED = ("ok", "invalid_output")  # the attempt reached a model that answered
OUTCOMES: tuple[str, ...] = get_args(AttemptStatus)


class Timing:
    """A Prometheus histogram instrument, plus its recent samples (for percentiles)."""

    def __init__(self, instrument: Instrument, recent: int = RECENT) -> None:
        self.instrument = instrument
        self.recent: deque[float] = deque(maxlen=recent)

    def observe(self, value: float) -> None:
        value = max(0.0, value)
        self.instrument.observe(value)
        self.recent.append(value)

    def _samples(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in self.instrument.collect():
            for s in family.samples:
                suffix = s.name[len(family.name):]
                out.setdefault(suffix, []).append((s.labels, s.value))
        return out

    def read(self) -> tuple[list[tuple[float, int]], float, int]:
        """(cumulative buckets: (upper bound, observations ≤ it) ending with (+Inf, count),
        sum, count), read from the instrument."""
        samples = self._samples()
        buckets = [(float(labels["le"]), int(n)) for labels, n in samples["_bucket"]]
        return buckets, float(samples["_sum"][0][1]), int(samples["_count"][0][1])


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
    """The figures one process keeps. `window_s`: how far back "recent" rates look;
    `registry`: where the instruments register (by default a registry of their own)."""

    def __init__(self, window_s: float = 60.0, registry: CollectorRegistry | None = None) -> None:
        # Counters and histograms publish no `_created` series: tickwork's never did, and
        # users' dashboards read the names they had (the library's switch is process-wide).
        disable_created_metrics()
        self.window_s = window_s
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.duration = Timing(Instrument(
            "tickwork_tick_duration_seconds", "Claim to end of the ticks this process ran.",
            buckets=DURATION_BUCKETS, registry=r))
        self.lateness = Timing(Instrument(  # the claim
            "tickwork_beat_lateness_seconds", "Tick start minus its slot's fire time, "
            "observed when this process claimed a beat tick.",
            buckets=LATENESS_BUCKETS, registry=r))
        self.work_lateness = Timing(Instrument(  # the first step beginning
            "tickwork_work_lateness_seconds", "A beat tick's first step beginning minus its "
            "slot's fire time (the start of work), in this process.",
            buckets=LATENESS_BUCKETS, registry=r))
        # Declared without `_total`: the library adds it, so the exposed names stay.
        self._requests = Counter(
            "tickwork_llm_requests", "LLM attempts this process made, by provider and "
            "outcome (the attempt's status).", ("provider", "outcome"), registry=r)
        self._fallbacks = Counter(
            "tickwork_llm_fallbacks", "Steps answered by another model than the chain's "
            "first, by the provider that answered.", ("provider",), registry=r)
        self._request_children: dict[tuple[str, str], Counter] = {}
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
            self._request(a.provider, a.status).inc()
        served = next((a for a in reversed(attempts) if a.status in ANSWERED), None)
        if served is not None and (served.provider, served.model) != (
                attempts[0].provider, attempts[0].model):
            self._fallbacks.labels(served.provider).inc()

    def _request(self, provider: str, outcome: str) -> Counter:
        child = self._request_children.get((provider, outcome))
        if child is None:
            # A provider seen for the first time shows every outcome, at 0 until it happens.
            for o in (*OUTCOMES, outcome):
                self._request_children[(provider, o)] = self._requests.labels(provider, o)
            child = self._request_children[(provider, outcome)]
        return child

    def tick_finished(self, duration_s: float, at: float) -> None:
        """A tick this process ran reached its end: `duration_s` from claim, `at` monotonic."""
        self.duration.observe(duration_s)
        self.finished += 1
        self._finished_at.append(at)

    # -- read by the views -----------------------------------------------------------------

    @property
    def llm_requests(self) -> dict[tuple[str, str], int]:
        """Attempts by (provider, outcome), the outcomes that happened."""
        return {(s.labels["provider"], s.labels["outcome"]): int(s.value)
                for family in self._requests.collect() for s in family.samples
                if s.name.endswith("_total") and s.value}

    @property
    def fallbacks(self) -> dict[str, int]:
        """Fallback steps by the provider that answered."""
        return {s.labels["provider"]: int(s.value) for family in self._fallbacks.collect()
                for s in family.samples if s.name.endswith("_total")}

    def ticks_per_s(self, now: float) -> float:
        """Ticks this process finished per second over the last `window_s` (monotonic now)."""
        since = now - self.window_s
        while self._finished_at and self._finished_at[0] < since:
            self._finished_at.popleft()
        return len(self._finished_at) / self.window_s

    def snapshot(self, now: float) -> Snapshot:
        late, late_sum, late_n = self.lateness.read()
        work, work_sum, work_n = self.work_lateness.read()
        duration, duration_sum, duration_n = self.duration.read()
        return Snapshot(
            lateness=late, lateness_sum=late_sum, lateness_count=late_n,
            lateness_p50_ms=_ms(self.lateness, 50), lateness_p99_ms=_ms(self.lateness, 99),
            work_lateness=work, work_lateness_sum=work_sum, work_lateness_count=work_n,
            work_lateness_p50_ms=_ms(self.work_lateness, 50),
            work_lateness_p99_ms=_ms(self.work_lateness, 99),
            duration=duration, duration_sum=duration_sum, duration_count=duration_n,
            llm_requests=self.llm_requests, fallbacks=self.fallbacks, claimed=self.claimed,
            finished=self.finished, ticks_per_s=self.ticks_per_s(now))


def _ms(timing: Timing, q: float) -> float | None:
    """The q-th percentile of `timing`'s recent samples, in milliseconds."""
    value = percentile(timing.recent, q)
    return None if value is None else value * 1000
