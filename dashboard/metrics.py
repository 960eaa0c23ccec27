"""/metrics on the HTTP roles (`up`, `dashboard`): the Prometheus text format 0.0.4, written
by prometheus-client, every name `tickwork_`.

What the families are and where they come from is `orchestrator.metrics`; here the dashboard
adds its event stream's clients and serves the lot. A scrape refreshes the chain's shared
breakers on the event loop, then reads the database and writes the text on a thread, so the
loop the ticks share never waits for the query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from dashboard.sse import EventTailer
from orchestrator.metrics import DbCounts, exposition, read_counts
from orchestrator.runtime import Runtime

__all__ = ["CONTENT_TYPE", "DbCounts", "read_counts", "registry", "router", "scrape"]

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=0.0.4; charset=utf-8


class EventStreamClients(Collector):
    def __init__(self, clients: Callable[[], int]) -> None:
        self._clients = clients

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("tickwork_event_stream_clients",
                                "Clients connected to the event stream.", self._clients())


def registry(rt: Runtime, event_clients: Callable[[], int]) -> CollectorRegistry:
    """What an HTTP role's /metrics shows: the database's families, this process's worker
    and beat (as far as it runs them), and the event stream's clients."""
    return exposition(rt, database=True, worker=True,
                      extra=[EventStreamClients(event_clients)])


async def scrape(rt: Runtime, families: CollectorRegistry) -> bytes:
    """One scrape: the shared breakers' state now (on the loop), then the text (a thread)."""
    for p in rt.chain.providers if rt.chain is not None else []:
        await p.breaker.refresh()  # a breaker the fleet shares: its state now
    return await asyncio.to_thread(generate_latest, families)


def router(rt: Runtime, tailer: EventTailer) -> APIRouter:
    api = APIRouter(tags=["system"])
    families = registry(rt, lambda: tailer.clients)

    @api.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}}}})
    async def metrics() -> Response:
        """Prometheus text format."""
        return Response(await scrape(rt, families), media_type=CONTENT_TYPE)

    return api
