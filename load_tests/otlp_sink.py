"""A local OTLP/HTTP trace sink for load tests: accepts POST /v1/traces, decodes each request
(opentelemetry-proto, as a collector would), counts the spans and drops them. GET /stats
answers {"requests", "spans", "bytes"}.

It runs as its own process, so its CPU is not counted in tickwork's:

    python -m load_tests.otlp_sink --port 4318
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from load_tests.stream import free_port

_ANSWER = ExportTraceServiceResponse().SerializeToString()


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = self.spans = self.bytes = 0


def _handler(counts: _Counts) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a collector does

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportTraceServiceRequest.FromString(body)
            n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with counts.lock:
                counts.requests += 1
                counts.spans += n
                counts.bytes += len(body)
            self._answer(_ANSWER, "application/x-protobuf")

        def do_GET(self) -> None:
            with counts.lock:
                stats = {"requests": counts.requests, "spans": counts.spans,
                         "bytes": counts.bytes}
            self._answer(json.dumps(stats).encode(), "application/json")

        def _answer(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            return None

    return Handler


def serve(port: int) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(_Counts()))
    try:
        server.serve_forever()
    finally:
        server.server_close()


@contextlib.contextmanager
def running_sink(timeout: float = 20.0) -> Iterator[str]:
    """A sink in a process of its own on a free loopback port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "load_tests.otlp_sink", "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                httpx.get(f"{url}/stats", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the OTLP sink did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def stats(url: str) -> dict[str, int]:
    return dict(httpx.get(f"{url}/stats", timeout=5).json())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4318)
    serve(parser.parse_args().port)


if __name__ == "__main__":
    main()
