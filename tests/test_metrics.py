"""/metrics as Prometheus reads it: valid text format, every family, and counts that move.

The engine runs on the fake clock: the beat fires a slot, the worker claims and runs the tick
with the simulated model, and the scrape afterwards shows what happened.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agents.llm.base import Attempt, LLMRequest, LLMResponse, ServerError
from agents.llm.fallback import FallbackLLM
from agents.llm.latency import Latency
from agents.llm.sim import SimulatedLLM
from dashboard.api import create_app
from dashboard.metrics import EventStreamClients
from orchestrator.metrics import BreakerRow, DatabaseCounts, DbCounts, InfoFigure, WorkerFigures
from orchestrator.runtime import Runtime
from orchestrator.stats import Stats, percentile
from orchestrator.store.queue import REASON_PREV_QUEUED
from schema.clock import FakeClock
from tests.conftest import wait_for
from tests.engine_helpers import build_runtime, new_stack, settle

FAMILIES = {
    "tickwork_ticks": "gauge", "tickwork_ticks_total": "counter",
    "tickwork_ticks_skipped_total": "counter", "tickwork_stacks": "gauge",
    "tickwork_queue_depth": "gauge", "tickwork_ticks_running": "gauge",
    "tickwork_worker_running_ticks": "gauge", "tickwork_worker_concurrency_limit": "gauge",
    "tickwork_tick_duration_seconds": "histogram", "tickwork_beat_lateness_seconds": "histogram",
    "tickwork_work_lateness_seconds": "histogram",
    "tickwork_llm_requests_total": "counter", "tickwork_llm_fallbacks_total": "counter",
    "tickwork_llm_breaker_state": "gauge", "tickwork_llm_breaker_failures": "gauge",
    "tickwork_event_stream_clients": "gauge", "tickwork_info": "gauge",
}

# -- reading it back with prometheus-client's own parser ----------------------------------------


@dataclass
class Family:
    kind: str
    help: str
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    def value(self, suffix: str = "", **labels: str) -> float:
        found = [v for n, ls, v in self.samples if n.endswith(suffix) and ls == labels]
        assert len(found) == 1, (suffix, labels, self.samples)
        return found[0]


def parse(text: str) -> dict[str, Family]:
    """The families by the name they are exposed under (a counter's ends in `_total`, as its
    samples' names do). Every sample must belong to a declared family (the parser makes an
    undeclared one `untyped`), and no `_created` series is published."""
    assert text.endswith("\n")
    families: dict[str, Family] = {}
    for metric in text_string_to_metric_families(text):
        name = metric.name + "_total" if metric.type == "counter" else metric.name
        assert metric.type in ("counter", "gauge", "histogram"), (name, metric.type)
        assert name not in families, f"{name} declared twice"
        families[name] = Family(metric.type, metric.documentation,
                                [(s.name, dict(s.labels), s.value) for s in metric.samples])
    for name, fam in families.items():
        assert not any(n.endswith("_created") for n, _, _ in fam.samples), name
        if fam.kind == "histogram":
            buckets = [(ls["le"], v) for n, ls, v in fam.samples if n.endswith("_bucket")]
            counts = [v for _, v in buckets]
            assert counts == sorted(counts), f"{name}: buckets must be cumulative"
            assert buckets[-1][0] == "+Inf"
            assert buckets[-1][1] == fam.value("_count"), name
    return families


# What Prometheus sends: OpenMetrics first. The answer stays the text format 0.0.4.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                     "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


async def scrape(rt: Runtime) -> dict[str, Family]:
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://t.test") as client:
        r = await client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


async def run_beat_tick(rt: Runtime, clock: FakeClock, late_s: float) -> None:
    """Advance to the next slot plus `late_s`, fire the beat, run what it queued."""
    clock.set((clock.now() // 10 + 1) * 10 + late_s)
    [fired] = await rt.beat.fire()
    assert fired.queued == 1
    before = rt.worker.finished
    assert await rt.worker.claim_once()
    await wait_for(lambda: rt.worker.finished > before, what="the beat tick to finish")


# -- tests ------------------------------------------------------------------------------------


def test_every_family_is_valid_text_with_the_prefix(runtime: Runtime) -> None:
    families = asyncio.run(scrape(runtime))
    assert all(name.startswith("tickwork_") for name in families)
    for name, kind in FAMILIES.items():
        assert name in families, name
        assert families[name].kind == kind, name
        assert families[name].help, name
    assert families["tickwork_info"].value(version=families["tickwork_info"].samples[0][1][
        "version"], llm=runtime.llm_label, simulated="true") == 1
    assert families["tickwork_worker_concurrency_limit"].value() == \
        runtime.settings.max_concurrent_ticks


def test_a_beat_tick_moves_the_counters(runtime: Runtime, clock: FakeClock) -> None:
    async def scenario() -> dict[str, Family]:
        stack = new_stack(runtime.db, clock, "alpha")
        settle(runtime.db, clock)  # its start tick, finished without the model
        await run_beat_tick(runtime, clock, late_s=0.02)
        # Two more slots without a worker: the second finds the first still queued.
        clock.advance(10)
        await runtime.beat.fire()
        clock.advance(10)
        await runtime.beat.fire()
        assert stack
        return await scrape(runtime)

    m = asyncio.run(scenario())
    assert m["tickwork_ticks_total"].value(status="succeeded") == 2  # start tick + beat tick
    assert m["tickwork_ticks"].value(status="queued") == 1
    assert m["tickwork_queue_depth"].value() == 1
    assert m["tickwork_ticks_skipped_total"].value(reason=REASON_PREV_QUEUED) == 1
    assert m["tickwork_stacks"].value(state="running") == 1
    assert m["tickwork_llm_requests_total"].value(provider="sim", outcome="ok") == 4
    assert m["tickwork_llm_requests_total"].value(provider="sim", outcome="timeout") == 0
    duration = m["tickwork_tick_duration_seconds"]
    assert duration.value("_count") == 1
    late = m["tickwork_beat_lateness_seconds"]
    assert late.value("_count") == 1  # the beat tick only: the start tick has no slot
    assert math.isclose(late.value("_sum"), 0.02, abs_tol=1e-6)
    assert late.value("_bucket", le="0.01") == 0
    assert late.value("_bucket", le="0.025") == 1
    work = m["tickwork_work_lateness_seconds"]  # its first step began as it was claimed
    assert work.value("_count") == 1 and math.isclose(work.value("_sum"), 0.02, abs_tol=1e-6)
    assert m["tickwork_worker_running_ticks"].value() == 0
    assert m["tickwork_llm_fallbacks_total"].samples == []


class Down:
    """A provider that is down: every call fails with a server error."""

    label = "down:model"
    simulated = False

    async def complete(self, request: LLMRequest) -> LLMResponse:
        raise ServerError("503 from upstream", attempt=Attempt(
            provider="down", model="model", status="server_error", latency_ms=1.0,
            started_at=0.0, error="503"))


def test_fallbacks_count_steps_served_by_a_later_provider(db_url: str, clock: FakeClock) -> None:
    chain = FallbackLLM(Down(), SimulatedLLM(clock, Latency(0, 0)))

    async def scenario(rt: Runtime) -> dict[str, Family]:
        new_stack(rt.db, clock, "alpha")
        settle(rt.db, clock)
        await run_beat_tick(rt, clock, late_s=0.0)
        return await scrape(rt)

    with build_runtime(db_url, clock, llm=chain) as rt:
        m = asyncio.run(scenario(rt))
    assert m["tickwork_llm_fallbacks_total"].value(provider="sim") == 4  # one per step
    assert m["tickwork_llm_requests_total"].value(provider="down", outcome="server_error") == 4
    assert m["tickwork_llm_requests_total"].value(provider="sim", outcome="ok") == 4


def test_label_values_are_escaped() -> None:
    hostile = 'a "quoted"\\ reason\nwith a newline'
    families = CollectorRegistry()
    families.register(DatabaseCounts(lambda: DbCounts({"skipped": 3}, {hostile: 3}, {})))
    families.register(WorkerFigures(lambda: 0, 5, lambda: [BreakerRow("groq", "m", "open", 5)]))
    families.register(EventStreamClients(lambda: 2))
    families.register(InfoFigure("1.0", 'sim "x"', simulated=True))
    m = parse(generate_latest(families).decode())
    assert m["tickwork_ticks_skipped_total"].value(reason=hostile) == 3
    assert m["tickwork_info"].value(version="1.0", llm='sim "x"', simulated="true") == 1
    assert m["tickwork_llm_breaker_state"].value(provider="groq", model="m", state="open") == 1
    assert m["tickwork_llm_breaker_state"].value(provider="groq", model="m",
                                                 state="closed") == 0
    assert m["tickwork_llm_breaker_failures"].value(provider="groq", model="m") == 5
    assert m["tickwork_event_stream_clients"].value() == 2
    assert m["tickwork_worker_concurrency_limit"].value() == 5


def test_each_stats_has_its_own_registry() -> None:
    """No global registry: two processes' worth of Stats in one test count apart."""
    one, two = Stats(), Stats()
    attempt = Attempt(provider="sim", model="simulated", status="ok", latency_ms=1.0,
                      started_at=0.0)
    one.step_finished([attempt])
    one.tick_finished(1.5, at=0.0)
    a, b = parse(generate_latest(one.registry).decode()), parse(
        generate_latest(two.registry).decode())
    assert a["tickwork_llm_requests_total"].value(provider="sim", outcome="ok") == 1
    assert a["tickwork_llm_requests_total"].value(provider="sim", outcome="timeout") == 0
    assert b["tickwork_llm_requests_total"].samples == []
    assert a["tickwork_tick_duration_seconds"].value("_bucket", le="2.5") == 1
    assert a["tickwork_tick_duration_seconds"].value("_bucket", le="1.0") == 0
    assert b["tickwork_tick_duration_seconds"].value("_count") == 0
    snap = one.snapshot(0.0)  # the System page's figures come from the same instruments
    assert snap.duration_count == 1 and snap.duration_sum == 1.5
    assert dict(snap.duration)[2.5] == 1 and dict(snap.duration)[math.inf] == 1
    assert snap.llm_requests == {("sim", "ok"): 1}


@pytest.mark.parametrize(("values", "p50", "p99"), [
    ([], None, None), ([5.0], 5.0, 5.0), (list(range(1, 101)), 50, 99)])
def test_percentiles_are_nearest_rank(values: list[float], p50: float | None,
                                      p99: float | None) -> None:
    assert percentile(values, 50) == p50
    assert percentile(values, 99) == p99


def test_ticks_per_second_counts_the_last_window_only() -> None:
    stats = Stats(window_s=60.0)
    for at in (0.0, 30.0, 70.0, 80.0):
        stats.tick_finished(1.0, at)
    assert stats.ticks_per_s(now=100.0) == 2 / 60  # 70 and 80: 0 and 30 are too old
    assert stats.finished == 4
