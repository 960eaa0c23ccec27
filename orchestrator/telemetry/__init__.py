"""Traces of every tick, exported over OTLP/HTTP when the standard OpenTelemetry variables ask
for it: `open_tracing(environ)` gives the process's `Tracing`, `NoopTracing` when none do.

    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT   the full URL traces are posted to, or
    OTEL_EXPORTER_OTLP_ENDPOINT          the collector's base URL (traces go to …/v1/traces)
    OTEL_SERVICE_NAME                    default tickwork
    OTEL_SDK_DISABLED=true, OTEL_TRACES_EXPORTER=none   tracing off whatever else is set
    OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true   prompts and answers in the spans

The exporter reads the rest of its standard variables itself (headers, timeout, compression,
certificates; OTEL_TRACES_SAMPLER for sampling). The batch processor's OTEL_BSP_* are honoured
when set; unset, tickwork sizes it for a fleet's stream (the SDK's own defaults — 2,048 spans
queued, a batch every 5 s — drop spans at 1,000 stacks, ~900 spans a second).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from orchestrator.telemetry.abc import TickTrace, Tracing
from orchestrator.telemetry.noop import NoopTickTrace, NoopTracing

__all__ = ["NoopTickTrace", "NoopTracing", "TickTrace", "Tracing", "open_tracing",
           "traces_endpoint"]

log = logging.getLogger("tickwork.telemetry")


def _set(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip()


def traces_endpoint(env: Mapping[str, str]) -> str | None:
    """Where traces are posted, from the standard variables; None when tracing is off."""
    if _set(env, "OTEL_SDK_DISABLED").lower() == "true":
        return None
    if _set(env, "OTEL_TRACES_EXPORTER").lower() == "none":
        return None
    if url := _set(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return url
    if url := _set(env, "OTEL_EXPORTER_OTLP_ENDPOINT"):
        return url.rstrip("/") + "/v1/traces"
    return None


def open_tracing(env: Mapping[str, str]) -> Tracing:
    """The tracing `env` asks for: OTLP/HTTP to its endpoint, or none at all."""
    endpoint = traces_endpoint(env)
    if endpoint is None:
        return NoopTracing()
    protocol = (_set(env, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or _set(env, "OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    if protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: tickwork exports traces over "
                    "http/protobuf only; using it", protocol)
    # Imported here: a process without an endpoint never loads the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from orchestrator.telemetry.otel import OtelTracing, service_name
    capture = _set(env, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT").lower() == "true"
    return OtelTracing(OTLPSpanExporter(endpoint=endpoint), capture_content=capture,
                       service_name=service_name(env), target=f"{endpoint} (OTLP/HTTP)",
                       batching=batching(env))


BATCHING = {"max_queue_size": ("OTEL_BSP_MAX_QUEUE_SIZE", 65_536),
            "schedule_delay_millis": ("OTEL_BSP_SCHEDULE_DELAY", 1_000),
            "max_export_batch_size": ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 4_096)}


def batching(env: Mapping[str, str]) -> dict[str, int]:
    """The batch processor's sizes tickwork picks where the OTEL_BSP_* variable is unset (a set
    one is left to the SDK, which reads it itself)."""
    return {arg: default for arg, (var, default) in BATCHING.items() if not _set(env, var)}
