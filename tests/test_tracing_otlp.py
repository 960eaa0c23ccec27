"""A real `tickwork up` with OTEL_EXPORTER_OTLP_ENDPOINT set sends each tick's trace over
OTLP/HTTP: a receiver on loopback (POST /v1/traces, the protobuf decoded with the
opentelemetry-proto package the exporter itself uses) gets the tick's spans, and the tick's
JSON names the trace they belong to."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from agents.registry import DEFAULT_TEAM
from tests.procs import Procs, poll

TOKEN = "otlp-admin-token"
CLIENT = 3  # SPAN_KIND_CLIENT in the protocol


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind is not None else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent: str
    name: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver: what it was sent, decoded."""

    spans: list[Span] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        with self.lock:
            self.requests += 1
            for rs in request.resource_spans:
                resource = _attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(Span(s.trace_id.hex(), s.span_id.hex(),
                                               s.parent_span_id.hex(), s.name, s.kind,
                                               _attrs(s.attributes), resource))

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            assert self.headers.get("Content-Type") == "application/x-protobuf"
            receiver.take(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            return None

    return Handler


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    got = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(got))
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield got, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    running = Procs(tmp_path)
    try:
        yield running
    finally:
        running.close()


def test_tickwork_up_exports_each_ticks_trace_over_otlp_http(
        procs: Procs, receiver: tuple[Receiver, str], tmp_path: Path) -> None:
    got, url = receiver
    up = procs.start("up", "--interval", "1", env={
        "TICKWORK_DATABASE_URL": f"sqlite:///{tmp_path / 'up.db'}",
        "TICKWORK_ADMIN_TOKEN": TOKEN, "TICKWORK_SIM_LATENCY_MS": "20,60",
        "OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_BSP_SCHEDULE_DELAY": "100"})
    with httpx.Client(base_url=up.url, timeout=5,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        made = client.post("/api/stacks", json={"name": "traced", "goal": "a haiku"})
        assert made.status_code == 201, made.text
        sid = made.json()["id"]

        def traced_tick() -> dict[str, Any] | None:
            ticks = client.get(f"/api/stacks/{sid}/ticks").json()
            return next((tk for tk in ticks
                         if tk["status"] == "succeeded" and tk["trace_id"]), None)

        tick = poll(traced_tick, 30, "a finished tick with its trace id")
        detail = client.get(f"/api/ticks/{tick['id']}").json()
        assert detail["trace_id"] == tick["trace_id"]

        def whole_trace() -> list[Span] | None:
            spans = got.trace(tick["trace_id"])
            return spans if len(spans) == 1 + 2 * len(DEFAULT_TEAM) else None

        spans = poll(whole_trace, 30, "the tick's spans at the receiver")
    assert up.stop() == 0
    assert "Traceback" not in up.err() and "export" not in up.err().lower(), up.err()

    (root,) = [s for s in spans if s.name == "invoke_workflow"]
    assert root.parent == ""
    assert root.attributes["tickwork.tick.id"] == tick["id"]
    assert root.attributes["tickwork.stack.name"] == "traced"
    assert root.attributes["tickwork.tick.status"] == "succeeded"
    assert root.resource["service.name"] == "tickwork"
    assert root.resource["tickwork.process.role"] == "up"
    assert root.resource["service.instance.id"].startswith("p-")
    agents = [s for s in spans if s.parent == root.span_id]
    assert sorted(s.name for s in agents) == sorted(f"invoke_agent {n}" for n in DEFAULT_TEAM)
    for agent in agents:
        (chat,) = [s for s in spans if s.parent == agent.span_id]
        assert (chat.name, chat.kind) == ("chat simulated", CLIENT)
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.provider.name"] == "sim"
        assert chat.attributes["gen_ai.response.finish_reasons"] == ["stop"]
        assert chat.attributes["gen_ai.usage.output_tokens"] > 0
