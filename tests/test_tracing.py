"""Every tick is one OpenTelemetry trace in the GenAI conventions: the tick, a span per agent
step, a CLIENT span per LLM attempt that reached a provider; skips and fallbacks are events;
failures carry an error status and `error.type`; prompts and answers only when asked for; a
retried tick links to the attempt before it; the tick's JSON names its trace.

The runtime runs on the fake clock with a scripted model, and exports through the SDK's
batch processor into its in-memory exporter."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agents.llm.base import Attempt, LLMRequest, LLMResponse, ServerError
from agents.llm.breaker import BreakerLLM, CircuitBreaker
from agents.llm.fallback import FallbackLLM
from agents.llm.latency import Latency
from agents.llm.sim import SimulatedLLM
from agents.registry import DEFAULT_TEAM
from orchestrator.runner import TickRunner
from orchestrator.runtime import Runtime
from orchestrator.telemetry import genai
from orchestrator.telemetry.otel import OtelTracing
from orchestrator.worker import Worker, WorkerConfig
from schema import read
from schema.clock import FakeClock
from tests.conftest import make_settings, wait_for
from tests.engine_helpers import (
    GatedLLM,
    ScriptedLLM,
    attempts_of,
    build_runtime,
    events_of,
    new_stack,
    reap,
    run_queued,
    seed_of,
    steps_of,
    tick_row,
    ticks_of,
)

Spans = list[ReadableSpan]


@contextlib.contextmanager
def traced(db_url: str, clock: FakeClock, llm: Any, *, capture: bool = False
           ) -> Iterator[tuple[Runtime, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracing = OtelTracing(exporter, capture_content=capture)
    rt = Runtime.build(make_settings(db_url), clock, llm=llm, env={}, tracing=tracing)
    try:
        yield rt, exporter
    finally:
        rt.close()


def finished(rt: Runtime, exporter: InMemorySpanExporter) -> Spans:
    rt.tracing.flush()  # the batch processor's thread exports what has ended
    return list(exporter.get_finished_spans())


def roots(spans: Spans) -> Spans:
    return [s for s in spans if s.name == "invoke_workflow"]


def children(spans: Spans, parent: ReadableSpan) -> Spans:
    return sorted((s for s in spans if s.parent is not None
                   and s.parent.span_id == parent.context.span_id), key=lambda s: s.start_time or 0)


def hex_trace(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


# -- a tick, its steps, its LLM calls ---------------------------------------------------------

def test_a_tick_is_one_trace_of_its_steps_and_their_llm_calls(db_url: str,
                                                             clock: FakeClock) -> None:
    with traced(db_url, clock, ScriptedLLM(clock)) as (rt, exporter):
        sid = new_stack(rt.db, clock, "poet")
        clock.advance(0.25)  # work starts 250 ms after the tick was due
        asyncio.run(run_queued(rt))
        (tick,) = ticks_of(rt.db, sid)
        journal, recorded = steps_of(rt.db, tick["id"]), attempts_of(rt.db, tick["id"])
        spans = finished(rt, exporter)

    (root,) = roots(spans)
    assert {s.context.trace_id for s in spans} == {root.context.trace_id}
    assert root.parent is None and root.kind is SpanKind.INTERNAL
    a = attrs(root)
    assert a["gen_ai.operation.name"] == "invoke_workflow"
    assert (a["tickwork.stack.id"], a["tickwork.stack.name"]) == (sid, "poet")
    assert (a["tickwork.tick.id"], a["tickwork.tick.attempt"]) == (tick["id"], 1)
    assert a["tickwork.tick.trigger"] == tick["trigger"]
    assert a.get("tickwork.tick.slot") == tick["slot"]
    assert a["tickwork.tick.status"] == "succeeded"
    assert a["tickwork.tick.lateness_ms"] == 250.0
    assert a["tickwork.cost_usd"] == tick["cost_usd"]
    assert root.status.status_code is StatusCode.UNSET and not root.links

    steps = children(spans, root)
    assert [s.name for s in steps] == [f"invoke_agent {n}" for n in DEFAULT_TEAM]
    for index, (span, row) in enumerate(zip(steps, journal, strict=True)):
        assert attrs(span) == {"gen_ai.operation.name": "invoke_agent",
                               "gen_ai.agent.name": row["agent"],
                               "tickwork.step.index": index, "tickwork.step.status": "succeeded",
                               "tickwork.cost_usd": 0.0}
        assert (span.start_time, span.end_time) == (ns(row["started_at"]),
                                                    ns(row["finished_at"]))
    chats = [c for step in steps for c in children(spans, step)]
    assert len(chats) == len(recorded) == len(DEFAULT_TEAM)
    for chat, row in zip(chats, recorded, strict=True):
        assert chat.name == "chat simulated" and chat.kind is SpanKind.CLIENT
        c = attrs(chat)
        assert c["gen_ai.operation.name"] == "chat"
        assert (c["gen_ai.provider.name"], c["gen_ai.request.model"]) == ("sim", "simulated")
        assert c["gen_ai.response.model"] == "simulated"
        assert c["gen_ai.response.id"].startswith("simulated-")
        assert c["gen_ai.response.finish_reasons"] == ("stop",)
        assert (c["gen_ai.usage.input_tokens"], c["gen_ai.usage.output_tokens"]) == (
            row["input_tokens"], row["output_tokens"])
        assert chat.start_time == ns(row["started_at"])
        assert chat.status.status_code is StatusCode.UNSET and "error.type" not in c
        assert not chat.events
    # No content unless asked for.
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output"))
                   for s in spans for k in attrs(s))
    # Who sent them.
    resource = dict(root.resource.attributes)
    assert resource["service.name"] == "tickwork"


def test_the_tick_json_names_its_trace(db_url: str, clock: FakeClock) -> None:
    with traced(db_url, clock, ScriptedLLM(clock)) as (rt, exporter):
        sid = new_stack(rt.db, clock, "a")
        asyncio.run(run_queued(rt))
        (tick,) = ticks_of(rt.db, sid)
        (root,) = roots(finished(rt, exporter))
        with rt.db.read() as conn:
            detail = read.get_tick(conn, tick["id"], DEFAULT_TEAM)
            listed = read.list_ticks(conn, sid)
        (done,) = events_of(rt.db, tick_id=tick["id"], kind="tick.finished")
    assert detail is not None
    assert detail.model_dump(mode="json")["trace_id"] == hex_trace(root)
    assert listed[0].trace_id == hex_trace(root)
    assert orjson.loads(done["data"])["trace_id"] == hex_trace(root)
    assert tick["trace_span_id"] == format(root.context.span_id, "016x")


def test_an_untraced_tick_has_no_trace_id(db_url: str, clock: FakeClock) -> None:
    with build_runtime(db_url, clock, llm=ScriptedLLM(clock)) as rt:
        assert not rt.tracing.enabled
        sid = new_stack(rt.db, clock, "a")
        asyncio.run(run_queued(rt))
        (tick,) = ticks_of(rt.db, sid)
        with rt.db.read() as conn:
            detail = read.get_tick(conn, tick["id"], DEFAULT_TEAM)
    assert tick["status"] == "succeeded"
    assert detail is not None and detail.model_dump(mode="json")["trace_id"] is None


# -- fallbacks, skips and failures ------------------------------------------------------------

class DownGroq:
    """Groq answering 503 to everything."""

    provider, model, label, simulated = "groq", "llama-3.3-70b-versatile", "groq:llama", False

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock

    async def complete(self, request: LLMRequest) -> LLMResponse:
        raise ServerError("HTTP 503: over capacity", attempt=Attempt(
            "groq", self.model, "server_error", 0.0, self.clock.now(),
            error="HTTP 503: over capacity"))


class SimOpenAI:
    """The simulated model's answers, in OpenAI's name."""

    provider, model, label, simulated = "openai", "gpt-4o-mini", "openai:gpt-4o-mini", False

    def __init__(self, clock: FakeClock) -> None:
        self._sim = SimulatedLLM(clock, Latency(0, 0))
        self.n = 0

    async def complete(self, request: LLMRequest) -> LLMResponse:
        response = await self._sim.complete(request)
        for a in response.attempts:
            self.n += 1
            a.provider, a.model, a.cost_usd = "openai", self.model, 0.0001
            a.response_model, a.response_id = "gpt-4o-mini-2024-07-18", f"chatcmpl-{self.n}"
        return LLMResponse(response.text, "openai", self.model, response.attempts)


def test_fallbacks_and_skips_are_events_and_a_failed_call_an_error(db_url: str,
                                                                   clock: FakeClock) -> None:
    # Groq fails the planner's call (a CLIENT span with an error), which opens its breaker:
    # every later step skips Groq at once (an event, no call) and OpenAI serves (a fallback).
    groq = BreakerLLM(DownGroq(clock), CircuitBreaker(1, 1000.0, clock), clock)
    llm = FallbackLLM(groq, SimOpenAI(clock))
    with traced(db_url, clock, llm) as (rt, exporter):
        sid = new_stack(rt.db, clock, "a")
        asyncio.run(run_queued(rt))
        (tick,) = ticks_of(rt.db, sid)
        spans = finished(rt, exporter)

    assert tick["status"] == "succeeded"
    (root,) = roots(spans)
    planner, *rest = children(spans, root)
    failed, served = children(spans, planner)
    assert failed.name == "chat llama-3.3-70b-versatile" and failed.kind is SpanKind.CLIENT
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "HTTP 503: over capacity"
    assert attrs(failed)["error.type"] == "server_error"
    assert attrs(failed)["gen_ai.provider.name"] == "groq"
    assert "gen_ai.usage.input_tokens" not in attrs(failed)
    assert served.name == "chat gpt-4o-mini"
    assert attrs(served)["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert attrs(served)["gen_ai.response.id"] == "chatcmpl-1"
    assert served.status.status_code is StatusCode.UNSET
    (moved,) = planner.events
    assert moved.name == "tickwork.llm.fallback"
    assert dict(moved.attributes or {}) == {
        "tickwork.llm.from_provider": "groq", "tickwork.llm.from_model": DownGroq.model,
        "tickwork.llm.from_status": "server_error", "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini"}
    assert planner.status.status_code is StatusCode.UNSET  # the step itself succeeded
    for step in rest:
        (chat,) = children(spans, step)  # the skipped Groq attempt is no call
        assert attrs(chat)["gen_ai.provider.name"] == "openai"
        skip, fell = step.events
        assert skip.name == "tickwork.llm.skipped"
        s = dict(skip.attributes or {})
        assert (s["gen_ai.provider.name"], s["tickwork.llm.status"]) == (
            "groq", "skipped_open_breaker")
        assert "circuit open" in str(s["tickwork.llm.error"])
        assert fell.name == "tickwork.llm.fallback"
        assert attrs(step)["tickwork.cost_usd"] == 0.0001
    assert abs(attrs(root)["tickwork.cost_usd"] - 0.0004) < 1e-12


def test_a_failed_step_fails_its_span_and_the_ticks(db_url: str, clock: FakeClock) -> None:
    def script(r: LLMRequest, n: int) -> str | None:
        return "not json" if seed_of(r)[2] == "planner" else None

    with traced(db_url, clock, ScriptedLLM(clock, script)) as (rt, exporter):
        sid = new_stack(rt.db, clock, "a")
        asyncio.run(run_queued(rt))
        (tick,) = ticks_of(rt.db, sid)
        spans = finished(rt, exporter)

    assert tick["status"] == "failed"
    (root,) = roots(spans)
    (planner,) = children(spans, root)
    assert planner.status.status_code is StatusCode.ERROR
    assert (planner.status.description or "").startswith("invalid output")
    assert attrs(planner)["error.type"] == "invalid_output"
    assert attrs(planner)["tickwork.step.status"] == "failed"
    chats = children(spans, planner)  # the answer, and the repair's
    assert [attrs(c)["error.type"] for c in chats] == ["invalid_output", "invalid_output"]
    assert all(c.status.status_code is StatusCode.ERROR for c in chats)
    assert root.status.status_code is StatusCode.ERROR
    assert attrs(root)["tickwork.tick.status"] == "failed"
    assert attrs(root)["error.type"] == "failed"
    assert attrs(root)["tickwork.tick.reason"] == tick["reason"]


# -- content ----------------------------------------------------------------------------------

def test_prompts_and_answers_are_captured_when_asked(db_url: str, clock: FakeClock) -> None:
    with traced(db_url, clock, ScriptedLLM(clock), capture=True) as (rt, exporter):
        sid = new_stack(rt.db, clock, "a", goal="write a sonnet")
        asyncio.run(run_queued(rt))
        (tick,) = ticks_of(rt.db, sid)
        journal = steps_of(rt.db, tick["id"])
        spans = finished(rt, exporter)

    (root,) = roots(spans)
    steps = children(spans, root)
    for step, row in zip(steps, journal, strict=True):
        (chat,) = children(spans, step)
        for span in (step, chat):
            sent = orjson.loads(attrs(span)["gen_ai.input.messages"])
            assert sent == [{"role": m["role"], "parts": [{"type": "text",
                                                           "content": m["content"]}]}
                            for m in orjson.loads(row["prompt"])]
            (said,) = orjson.loads(attrs(span)["gen_ai.output.messages"])
            assert (said["role"], said["finish_reason"]) == ("assistant", "stop")
            assert orjson.loads(said["parts"][0]["content"]) == orjson.loads(row["output"])
    assert "write a sonnet" in attrs(steps[0])["gen_ai.input.messages"]


# -- a retried tick ---------------------------------------------------------------------------

def test_a_retried_tick_links_to_the_attempt_before_it(db_url: str, clock: FakeClock) -> None:
    # Attempt 1 journals the planner, then stalls in the builder past its lease; another
    # worker (its own tracing, as another process would have) runs attempt 2 to the end.
    llm = GatedLLM(clock, holds=lambda r: seed_of(r)[2] == "builder" and not any(
        c.seed == r.seed for c in llm.calls[:-1]))
    with traced(db_url, clock, llm) as (rt, first_exporter):
        sid = new_stack(rt.db, clock, "a")
        second_exporter = InMemorySpanExporter()
        second = OtelTracing(second_exporter)
        runner = TickRunner(rt.store, rt.registry, llm, clock, 30.0, tracing=second)
        late = Worker(rt.store, runner, rt.bus, clock, WorkerConfig(lease_s=30.0))

        async def main() -> None:
            await rt.worker.claim_once()
            await wait_for(lambda: llm.waiting_for("builder"), what="attempt 1 at the builder")
            clock.advance(31)
            assert await reap(rt) == (1, 0, 0)
            await late.claim_once()
            await wait_for(lambda: late.running == 0, what="attempt 2 to finish")
            llm.release()
            await wait_for(lambda: rt.worker.running == 0, what="attempt 1 to stop")

        asyncio.run(main())
        (tick,) = ticks_of(rt.db, sid)
        row = tick_row(rt.db, tick["id"])
        first = finished(rt, first_exporter)
        second.flush()
        later = list(second_exporter.get_finished_spans())
        second.close()

    assert (tick["status"], tick["attempt"]) == ("succeeded", 2)
    (one,) = roots(first)
    (two,) = roots(later)
    assert attrs(one)["tickwork.tick.attempt"] == 1
    assert attrs(one)["tickwork.tick.status"] == "lease_lost"
    assert one.status.status_code is StatusCode.ERROR
    # Attempt 1 ran the planner and the builder (whose journal write was refused).
    assert [s.name for s in children(first, one)] == ["invoke_agent planner",
                                                      "invoke_agent builder"]
    assert attrs(two)["tickwork.tick.attempt"] == 2
    assert attrs(two)["tickwork.tick.status"] == "succeeded"
    assert two.context.trace_id != one.context.trace_id
    (link,) = two.links
    assert (link.context.trace_id, link.context.span_id) == (one.context.trace_id,
                                                            one.context.span_id)
    # Attempt 2 replayed the planner from the journal and ran the rest.
    (replayed,) = two.events
    assert replayed.name == "tickwork.step.replayed"
    assert dict(replayed.attributes or {}) == {"tickwork.step.index": 0,
                                               "gen_ai.agent.name": "planner"}
    assert [s.name for s in children(later, two)] == [
        f"invoke_agent {n}" for n in DEFAULT_TEAM[1:]]
    # The row names the latest attempt's trace.
    assert row["trace_id"] == hex_trace(two)


def test_a_trace_that_cannot_be_made_never_fails_the_tick(
        db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(a: Attempt) -> dict[str, Any]:
        raise ValueError("a bug in the span attributes")

    monkeypatch.setattr(genai, "chat_attributes", broken)
    with traced(db_url, clock, ScriptedLLM(clock)) as (rt, exporter):
        sid = new_stack(rt.db, clock, "a")
        asyncio.run(run_queued(rt))
        (tick,) = ticks_of(rt.db, sid)
        spans = finished(rt, exporter)
    assert tick["status"] == "succeeded"
    (root,) = roots(spans)  # the tick's own span still goes out, its steps left out
    assert attrs(root)["tickwork.tick.status"] == "succeeded"
