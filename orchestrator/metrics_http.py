"""`--metrics-port`: a role without a web server of its own (`beat`, `worker`) serves its
/metrics from a thread, off the event loop its ticks share.

prometheus-client's WSGI app on its threading WSGI server: what `start_http_server` runs,
with two differences. The socket is bound first (`MetricsServer(host, port)`, before anything
else starts: a port in use is reported at once), and the answer is always the Prometheus text
format 0.0.4, as the dashboard's /metrics gives it. Prometheus asks for OpenMetrics first,
which would name the counters' families without `_total` and cannot carry the gauge
`tickwork_ticks` beside the counter `tickwork_ticks_total`. A scrape that fails (the
database away) answers 500 with one line in the log, not a traceback.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client import make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

log = logging.getLogger("tickwork.metrics")

POLL_S = 0.2  # how soon the serving thread notices it should stop
StartResponse = Callable[..., Any]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


def text_format_app(registry: Collector) -> Callable[[dict[str, Any], StartResponse],
                                                     Iterable[bytes]]:
    """The library's WSGI app answering in the text format 0.0.4 whatever the Accept header,
    and 500 (one log line) when a collector fails."""
    inner = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        environ.pop("HTTP_ACCEPT", None)
        try:
            return list(inner(environ, start_response))
        except Exception as exc:
            log.warning("a /metrics scrape failed: %s: %s", type(exc).__name__, exc)
            start_response("500 Internal Server Error",
                           [("Content-Type", "text/plain; charset=utf-8")])
            return [b"the scrape failed; see the process's log\n"]

    return app


class MetricsServer:
    """Listens on (`host`, `port`) from construction (OSError when it cannot); `start`
    serves `registry` from a daemon thread; `close` stops it (once or more)."""

    def __init__(self, host: str, port: int) -> None:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                   flags=socket.AI_PASSIVE)[0]

        class Server(ThreadingWSGIServer):
            address_family = family

        self._server = Server((str(addr[0]), int(addr[1])), _Quiet)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self, registry: Collector) -> None:
        self._server.set_app(text_format_app(registry))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(POLL_S,),
                                        name="tickwork-metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
