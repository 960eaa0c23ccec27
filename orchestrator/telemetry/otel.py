"""Tracing with OpenTelemetry: one trace per attempt of a tick, in the GenAI conventions.

    invoke_workflow                       the tick (this attempt), linked to the attempt before
      invoke_agent planner                one per agent step (events: skipped attempts, fallbacks)
        chat llama-3.3-70b-versatile      CLIENT, one per LLM attempt that reached a provider
      invoke_agent builder
      ...

The tick's span starts when the worker takes the tick up; each step's spans are made when the
step has finished, from what the runner records anyway (the attempts' start times and
latencies), with their own start and end times. Everything runs on the event loop except the
export: the SDK's `BatchSpanProcessor` batches finished spans and exports them on its own
thread. Each `OtelTracing` has its own `TracerProvider` (never the global one), shut down by
`close`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from agents.team import StepResult
from orchestrator.fleet import version
from orchestrator.store.abc import Claimed
from orchestrator.telemetry import genai as g
from orchestrator.telemetry.noop import NoopTickTrace

log = logging.getLogger("tickwork.telemetry")

ERRORS = frozenset({"failed", "timed_out", "lease_lost", "error"})  # outcomes that are errors


def ns(seconds: float) -> int:
    """Clock seconds as OpenTelemetry's nanoseconds since the epoch."""
    return int(seconds * 1e9)


def _link(ids: tuple[str, str] | None) -> list[Link]:
    if ids is None:
        return []
    try:
        context = SpanContext(int(ids[0], 16), int(ids[1], 16), is_remote=True,
                              trace_flags=TraceFlags(TraceFlags.SAMPLED))
    except ValueError:
        return []
    return [Link(context, {"tickwork.link": "previous_attempt"})] if context.is_valid else []


class OtelTickTrace:
    """The spans of one attempt of one tick."""

    def __init__(self, tracer: trace.Tracer, tick: Claimed, now: float, capture: bool) -> None:
        self._tracer = tracer
        self._capture = capture
        attrs: dict[str, Any] = {
            g.OPERATION: "invoke_workflow", "tickwork.stack.id": tick.stack_id,
            "tickwork.tick.id": tick.id, "tickwork.tick.attempt": tick.attempt,
            "tickwork.tick.trigger": tick.trigger}
        if tick.slot is not None:
            attrs["tickwork.tick.slot"] = tick.slot
        self._root = tracer.start_span("invoke_workflow", kind=SpanKind.INTERNAL,
                                       attributes=attrs, links=_link(tick.trace),
                                       start_time=ns(now))
        self._context = trace.set_span_in_context(self._root)
        own = self._root.get_span_context()
        self.trace_id: str | None = None
        if own.trace_flags.sampled:
            self.trace_id = format(own.trace_id, "032x")
            tick = dataclasses.replace(tick, trace=(self.trace_id, format(own.span_id, "016x")))
        self.tick = tick
        self._cost = tick.cost_usd  # what earlier attempts spent, then this one's
        self._status = "unfinished"
        self._reason: str | None = None
        self._work_started = False
        self._ended = False

    def stack(self, name: str) -> None:
        self._root.set_attribute("tickwork.stack.name", name)

    def replayed(self, index: int, agent: str, now: float) -> None:
        self._root.add_event(g.REPLAYED_EVENT, {"tickwork.step.index": index,
                                                g.AGENT_NAME: agent}, timestamp=ns(now))

    def step(self, index: int, result: StepResult, started_at: float, finished_at: float
             ) -> None:
        try:
            self._step(index, result, started_at, finished_at)
        except Exception:  # a trace that cannot be made never fails the tick
            log.exception("tick %s: step %s left out of its trace", self.tick.id, index)

    def _step(self, index: int, result: StepResult, started_at: float, finished_at: float
              ) -> None:
        attempts = result.attempts
        if not self._work_started:  # the first LLM request this attempt was about to send
            self._work_started = True
            first = next((a.started_at for a in attempts if not g.skipped(a)), started_at)
            self._root.set_attribute("tickwork.tick.lateness_ms",
                                     round((first - self.tick.scheduled_at) * 1000, 3))
        span = self._tracer.start_span(
            f"invoke_agent {result.agent}", context=self._context, kind=SpanKind.INTERNAL,
            start_time=ns(started_at),
            attributes={g.OPERATION: "invoke_agent", g.AGENT_NAME: result.agent,
                        "tickwork.step.index": index, "tickwork.step.status": result.status})
        context = trace.set_span_in_context(span)
        answered = g.last_answered(attempts)
        cost = 0.0
        for a in attempts:
            cost += a.cost_usd
            if g.skipped(a):
                span.add_event(g.SKIPPED_EVENT, g.skip_attributes(a), timestamp=ns(a.started_at))
            else:
                self._chat(a, context, result if a is answered else None)
        moved = g.fallback(attempts) if attempts else None
        if moved is not None:
            span.add_event(g.FALLBACK_EVENT, g.fallback_attributes(*moved),
                           timestamp=ns(moved[1].started_at))
        if self._capture:
            self._content(span, result, answered)
        if result.status == "failed":
            span.set_attribute(g.ERROR_TYPE, g.step_error_type(result))
            span.set_status(Status(StatusCode.ERROR, result.error))
        span.set_attribute(g.COST, cost)
        self._cost += cost
        span.end(ns(finished_at))

    def _chat(self, a: Any, context: Any, result: StepResult | None) -> None:
        span = self._tracer.start_span(f"chat {a.model}", context=context, kind=SpanKind.CLIENT,
                                       start_time=ns(a.started_at),
                                       attributes=g.chat_attributes(a))
        if a.status != "ok":
            span.set_status(Status(StatusCode.ERROR, a.error))
        if result is not None and self._capture:  # the answer the step kept (or refused)
            self._content(span, result, a)
        span.end(ns(a.started_at + a.latency_ms / 1000))

    @staticmethod
    def _content(span: Any, result: StepResult, answered: Any) -> None:
        if result.prompt:
            span.set_attribute(g.INPUT_MESSAGES, g.input_messages(result.prompt))
        text = g.output_text(result)
        if text is not None and answered is not None:
            reason = answered.finish_reasons[0] if answered.finish_reasons else "stop"
            span.set_attribute(g.OUTPUT_MESSAGES, g.output_messages(text, reason))

    def outcome(self, status: str, reason: str | None = None) -> None:
        self._status, self._reason = status, reason

    def end(self, now: float) -> None:
        if self._ended:
            return
        self._ended = True
        root = self._root
        root.set_attribute("tickwork.tick.status", self._status)
        root.set_attribute(g.COST, self._cost)
        if self._reason:
            root.set_attribute("tickwork.tick.reason", self._reason)
        if self._status in ERRORS:
            root.set_attribute(g.ERROR_TYPE, self._status)
            root.set_status(Status(StatusCode.ERROR, self._reason))
        root.end(ns(now))


class OtelTracing:
    """Traces exported through `exporter` (OTLP/HTTP in production, in memory in tests) on the
    SDK's batch processor thread. `capture_content`: prompts and answers go into the spans."""

    enabled = True

    def __init__(self, exporter: SpanExporter, *, capture_content: bool = False,
                 service_name: str = "tickwork", target: str = "an exporter",
                 batching: Mapping[str, int] | None = None) -> None:
        self._exporter = exporter
        self._batching = dict(batching or {})
        self.target = target
        self.capture_content = capture_content
        self.service_name = service_name
        self._role: str | None = None
        self._process_id: str | None = None
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        self._closed = False

    def start(self, role: str, process_id: str) -> None:
        if self._provider is not None:
            log.warning("tracing started before the process took its role (%s)", role)
            return
        self._role, self._process_id = role, process_id
        self._open()
        log.info("each tick's trace goes to %s (service %s%s)", self.target, self.service_name,
                 ", prompts and answers included" if self.capture_content else "")

    def _open(self) -> trace.Tracer:
        attrs: dict[str, Any] = {"service.name": self.service_name, "service.version": version(),
                                 "host.name": socket.gethostname(), "process.pid": os.getpid()}
        if self._role is not None:
            attrs["tickwork.process.role"] = self._role
        if self._process_id is not None:
            attrs["service.instance.id"] = self._process_id
        # OTEL_RESOURCE_ATTRIBUTES is merged in by Resource.create; ours win.
        self._provider = TracerProvider(resource=Resource.create(attrs),
                                        shutdown_on_exit=False)
        b = self._batching
        self._provider.add_span_processor(BatchSpanProcessor(
            self._exporter, max_queue_size=b.get("max_queue_size"),
            schedule_delay_millis=b.get("schedule_delay_millis"),
            max_export_batch_size=b.get("max_export_batch_size")))
        self._tracer = self._provider.get_tracer("tickwork", version())
        return self._tracer

    def tick(self, tick: Claimed, now: float) -> OtelTickTrace | NoopTickTrace:
        try:
            tracer = self._tracer or self._open()
            return OtelTickTrace(tracer, tick, now, self.capture_content)
        except Exception:  # a trace that cannot be made never fails the tick
            log.exception("tick %s: not traced", tick.id)
            return NoopTickTrace(tick)

    def flush(self) -> None:
        if self._provider is not None:
            self._provider.force_flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._provider is not None:
            self._provider.shutdown()
        else:
            self._exporter.shutdown()


def service_name(env: Mapping[str, str]) -> str:
    """OTEL_SERVICE_NAME, else a service.name in OTEL_RESOURCE_ATTRIBUTES, else tickwork."""
    if env.get("OTEL_SERVICE_NAME", "").strip():
        return env["OTEL_SERVICE_NAME"].strip()
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = pair.partition("=")
        if key.strip() == "service.name" and value.strip():
            return value.strip()
    return "tickwork"
