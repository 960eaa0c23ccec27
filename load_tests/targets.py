"""What a load-test step is and how it is judged: a step's name (topology and model), the
nominal tick, the figures the targets read (`metric`), docs/design.md's "Performance" targets
(each applies to one step and is judged only where the runs include that step), the checks and
the capacity per topology.
"""

from __future__ import annotations

import functools
import random
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from agents.llm.latency import Latency

Run = dict[str, Any]

EMBEDDED = "1 process on SQLite"
AGENTS_PER_STACK = 4
CALLS_PER_TICK = 4  # a stack's tick: four agents, one model call each
# The targets hold at a 10 s beat and Groq-like model latency (median 1.5 s, p99 3 s).
TARGET_INTERVAL_S = 10
TARGET_LATENCY = "1500,3000"
_FLEET = re.compile(r"(\d+) beats?, (\d+) workers? on PostgreSQL")


def setup(run: Run) -> str:
    """The topology's short name: "embedded" (one process on SQLite), "fleet+redis" or
    "fleet+polling" (1 beat and 2 workers on PostgreSQL, wake-ups by Redis or by polling);
    another fleet is named by its counts ("fleet 2b3w+redis")."""
    topology = run.get("topology")
    if not topology or topology == EMBEDDED:
        return "embedded"
    found = _FLEET.fullmatch(str(topology))
    name = ("fleet" if found and found.groups() == ("1", "2") else
            f"fleet {found[1]}b{found[2]}w" if found else f"fleet ({topology})")
    return f"{name}+{run['wakeups']}" if run.get("wakeups") else name


def series(row: Run) -> str:
    """How tables and plots name a step's series: topology and model, "embedded chain"."""
    return f"{setup(row)} {row.get('llm') or '?'}"


@functools.lru_cache(maxsize=16)
def nominal_tick_ms(latency: str | None, draws: int = 20_000) -> float | None:
    """The nominal tick: the median of the sum of four independent model calls drawn from the
    simulated latency ("MEDIAN,P99" ms, `agents.llm.latency.Latency`), by a seeded Monte
    Carlo of `draws` sums. None when the runs do not say their latency."""
    if not latency:
        return None
    try:
        dist = Latency.parse(latency)
    except ValueError:
        return None
    rng = random.Random(20_000)
    sums = [sum(dist.sample_s(rng) for _ in range(CALLS_PER_TICK)) for _ in range(draws)]
    return statistics.median(sums) * 1000


def started_share(run: Run) -> float:
    """Ticks started over slots expected. Slots skipped because the stack's previous tick was
    still running count as not started — whether the model's latency tail made that tick
    outlast its slot or the engine was too slow — and are shown apart ("busy")."""
    expected = run.get("ticks_expected") or 0
    return float(run.get("ticks_started") or 0) / expected if expected > 0 else 0.0


def _get(run: Run, summary: str, key: str) -> float | None:
    value = (run.get(summary) or {}).get(key)
    return None if value is None else float(value)


def metric(run: Run, name: str) -> float | None:
    """One judged figure of a run or row (see `Target.metric`)."""
    expected, started = run.get("ticks_expected"), run.get("ticks_started")
    busy = run.get("ticks_skipped_busy")
    if name == "started_share":
        return started_share(run)
    if name == "not_started":  # slots whose tick neither started nor was a busy skip
        if not expected or started is None or busy is None:
            return None
        return float(expected - started - busy)
    if name == "busy_share":
        return None if not expected or busy is None else busy / expected
    if name == "tick_p50_off":  # tick p50 against the nominal four calls, as a fraction
        nominal, p50 = run.get("nominal_tick_ms"), _get(run, "tick_duration_ms", "p50")
        if nominal is None:
            nominal = nominal_tick_ms(run.get("sim_latency_ms"))
        return None if p50 is None or not nominal else p50 / nominal - 1
    if name == "engine_cpu_ms_per_tick":  # the SDK's share off where it is measured
        value = run.get("cpu_ms_per_tick_without_sdk")
        if value is None:
            value = run.get("cpu_ms_per_tick")
        return None if value is None else float(value)
    for prefix, summary in (("lateness_", "lateness_ms"), ("claim_", "claim_lateness_ms"),
                            ("propagation_", "propagation_ms"), ("tick_", "tick_duration_ms")):
        if name.startswith(prefix):
            return _get(run, summary, name.removeprefix(prefix))
    value = run.get(name)
    return None if value is None else float(value)


@dataclass(frozen=True)
class Target:
    setup: str  # as `setup()` names it
    llm: str
    stacks: int
    label: str
    metric: str  # a `metric()` name
    limit: float
    within: bool = False  # |figure| <= limit (otherwise figure <= limit)

    def applies(self, row: Run) -> bool:
        """At its step, and at the targets' beat and model latency where the run says them."""
        return (setup(row), row.get("llm"), int(row["stacks"])) == (
            self.setup, self.llm, self.stacks) and _conditions_met(row)


def _conditions_met(row: Run) -> bool:
    latency = row.get("sim_latency_ms")
    try:
        same = latency is None or str(Latency.parse(latency)) == TARGET_LATENCY
    except ValueError:
        same = False
    return same and row.get("interval_s") in (None, TARGET_INTERVAL_S)


def _limits(topology: str, llm: str, stacks: int) -> tuple[Target, ...]:
    """The chain targets' limits that hold at any stack count."""
    return (
        Target(topology, llm, stacks, "every slot's tick started but for busy skips",
               "not_started", 0.0),
        Target(topology, llm, stacks, "busy skips ≤ 0.5 %", "busy_share", 0.005),
        Target(topology, llm, stacks, "lateness p99 ≤ 250 ms", "lateness_p99", 250.0),
        Target(topology, llm, stacks, "tick p50 within 10 % of the nominal four calls",
               "tick_p50_off", 0.10, within=True),
        Target(topology, llm, stacks, "propagation p95 ≤ 250 ms", "propagation_p95", 250.0))


def _full_chain(topology: str, stacks: int) -> tuple[Target, ...]:
    return (*_limits(topology, "chain", stacks),
            Target(topology, "chain", stacks, "CPU ≤ 6 ms a tick with the SDK's share",
                   "cpu_ms_per_tick", 6.0))


TARGETS = (
    *_full_chain("fleet+redis", 1000),
    *_full_chain("embedded", 500),
    Target("embedded", "chain", 100, "lateness p99 ≤ 50 ms", "lateness_p99", 50.0),
    Target("embedded", "chain", 100, "propagation p95 ≤ 100 ms", "propagation_p95", 100.0),
    Target("embedded", "chain", 100, "propagation p99 ≤ 250 ms", "propagation_p99", 250.0),
    Target("embedded", "inprocess", 1000, "engine CPU ≤ 2 ms a tick",
           "engine_cpu_ms_per_tick", 2.0),
    Target("fleet+redis", "inprocess", 100, "lateness p99 ≤ 50 ms", "lateness_p99", 50.0),
    Target("fleet+redis", "inprocess", 100, "propagation p95 ≤ 100 ms", "propagation_p95",
           100.0),
)
GENERIC = [t.label for t in _limits("", "", 0)]
CRITERIA = ("Capacity: the largest stack count whose step met every target that applies to it "
            "and, whatever its size, the chain targets' limits that hold at any stack count: "
            + ", ".join(GENERIC) + ".")


@dataclass(frozen=True)
class Check:
    target: Target
    value: float | None

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        limit = self.target.limit
        return abs(self.value) <= limit if self.target.within else self.value <= limit

    def shown(self) -> str:
        v, name = self.value, self.target.metric
        if v is None:
            return "n/a"
        if name == "not_started":
            return f"{v:,.0f} not started"
        if name == "busy_share":
            return f"{v:.2%}"
        if name == "tick_p50_off":
            return f"{v:+.1%}"
        return f"{v:,.1f} ms" if name.startswith(("lateness", "propagation")) else f"{v:.2f} ms"

    def line(self) -> str:
        t = self.target
        return (f"{'PASS' if self.passed else 'FAIL'}  {t.setup} {t.llm} at {t.stacks:,} stacks: "
                f"{t.label} (measured {self.shown()})")


def check(rows: Iterable[Run]) -> list[Check]:
    """The targets whose step is among `rows` (per-step medians, or runs), judged."""
    rows = list(rows)
    return [Check(t, metric(row, t.metric)) for t in TARGETS for row in rows if t.applies(row)]


@dataclass(frozen=True)
class Capacity:
    """The largest stack count of one series whose step met every criterion that applies to
    it: the step's own targets, and for every step the chain targets' limits that hold at any
    size (`GENERIC`)."""
    series: str
    llm: str
    steps: tuple[tuple[int, tuple[Check, ...]], ...]

    @property
    def stacks(self) -> int | None:
        return max((n for n, checks in self.steps if all(c.passed for c in checks)),
                   default=None)

    def sentence(self) -> str:
        how = "through the chain" if self.llm == "chain" else "with the in-process model"
        if self.stacks is None:
            head = f"{self.series}: no step met every criterion {how}"
        else:
            head = (f"{self.series}: this machine holds {self.stacks:,} stacks "
                    f"({self.stacks * AGENTS_PER_STACK:,} agents) {how}")
        missed = [f"at {n:,} stacks " + ", ".join(f"{c.target.label} ({c.shown()})"
                                                  for c in checks if not c.passed)
                  for n, checks in self.steps if not all(c.passed for c in checks)]
        return head + (". Missed " + "; ".join(missed) if missed else "") + "."


def capacity(rows: Sequence[Run]) -> list[Capacity]:
    """Per series of `rows` (per-step medians), its capacity."""
    out = []
    for name in dict.fromkeys(map(series, rows)):
        mine = sorted((r for r in rows if series(r) == name), key=lambda r: int(r["stacks"]))
        steps = []
        for row in mine:
            own = [t for t in TARGETS if t.applies(row)]
            generic = [t for t in _limits(setup(row), str(row.get("llm")), int(row["stacks"]))
                       if t.metric not in {o.metric for o in own}]
            steps.append((int(row["stacks"]),
                          tuple(Check(t, metric(row, t.metric)) for t in own + generic)))
        out.append(Capacity(name, str(mine[0].get("llm")), tuple(steps)))
    return out
