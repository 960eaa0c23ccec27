"""The `--metrics-port` server in-process: it answers the text format 0.0.4 whatever the
client prefers, from its own thread while the event loop is busy, and a scrape that fails
is a 500 and one log line."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric

from orchestrator.metrics_http import MetricsServer
from orchestrator.stats import Stats
from tests.test_metrics import PROMETHEUS_ACCEPT, parse


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    s = MetricsServer("127.0.0.1", 0)
    try:
        yield s
    finally:
        s.close()


def get(s: MetricsServer, accept: str = PROMETHEUS_ACCEPT) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{s.port}/metrics", headers={"Accept": accept},
                     timeout=5)


def test_the_text_format_whatever_the_client_prefers(server: MetricsServer) -> None:
    stats = Stats()
    server.start(stats.registry)
    stats.tick_finished(0.3, at=0.0)
    for accept in (PROMETHEUS_ACCEPT, "application/openmetrics-text; version=1.0.0", ""):
        r = get(server, accept)
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "# EOF" not in r.text
        assert "# TYPE tickwork_llm_requests_total counter" in r.text  # not OpenMetrics' name
        assert parse(r.text)["tickwork_tick_duration_seconds"].value("_count") == 1


def test_it_answers_while_the_event_loop_is_blocked(server: MetricsServer) -> None:
    """The loop's thread holds still (a tick's synchronous work, say) while Prometheus
    scrapes: the answer comes from the server's own thread all the same."""
    registry = CollectorRegistry()
    ticks = Counter("tickwork_test_ticks", "Ticks.", registry=registry)
    server.start(registry)
    answers: list[httpx.Response] = []
    answered = threading.Event()

    def scraper() -> None:
        answers.append(get(server))
        answered.set()

    async def blocked_loop() -> bool:
        ticks.inc()
        threading.Thread(target=scraper).start()
        return answered.wait(10)  # blocks the loop until the scrape has its answer

    assert asyncio.run(blocked_loop())
    assert parse(answers[0].text)["tickwork_test_ticks_total"].value() == 1


class Broken:
    def collect(self) -> Iterator[Metric]:
        raise RuntimeError("the database is away")


def test_a_failed_scrape_is_a_500_and_one_line(server: MetricsServer,
                                               caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    registry.register(Broken())
    server.start(registry)
    with caplog.at_level(logging.WARNING, logger="tickwork.metrics"):
        r = get(server)
    assert r.status_code == 500
    assert [rec.getMessage() for rec in caplog.records] == [
        "a /metrics scrape failed: RuntimeError: the database is away"]


def test_a_port_in_use_is_an_os_error(server: MetricsServer) -> None:
    with pytest.raises(OSError):
        MetricsServer("127.0.0.1", server.port)
