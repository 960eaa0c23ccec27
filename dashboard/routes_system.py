"""Health, metrics and what this system is: /livez, /readyz, /metrics, /api/system.

/metrics speaks the Prometheus text format (names prefixed `tickwork_`); `dashboard.metrics`
writes it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import Connection, text

from dashboard.sse import EventTailer
from dashboard.system import FleetProcess, FleetTotals, fleet_of, wakeups
from orchestrator import fleet
from orchestrator.fleet import version
from orchestrator.runtime import Runtime
from orchestrator.store import queue
from schema import read

READY_TIMEOUT_S = 2.0


class Status(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    wakeups: str  # how wake-ups travel: "in-process", "redis", or Redis away and polling


class NotReady(BaseModel):
    status: str
    error: str


class Endpoint(BaseModel):
    name: str
    model: str
    base_url: str
    on_loopback: bool  # served from this machine: a local simulator, not the real provider


class SystemOut(BaseModel):
    llm: str
    simulated: bool
    tick_interval: int  # the beat the system runs at, as its beat recorded it
    version: str
    agents: list[str]
    providers: list[Endpoint] = []
    notes: list[str] = []  # providers left out, providers served on loopback
    fleet: list[FleetProcess] = []  # every live process, from the database
    fleet_totals: FleetTotals | None = None
    queue_depth: int = 0


def _ping(conn: Connection) -> None:
    conn.execute(text("SELECT 1"))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {READY_TIMEOUT_S:g} s"
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0][:300]
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def router(rt: Runtime, tailer: EventTailer) -> APIRouter:
    api = APIRouter(tags=["system"])

    @api.get("/livez")
    async def livez() -> Status:
        """The process is up."""
        return Status(status="ok")

    @api.get("/readyz", response_model=Ready, responses={503: {"model": NotReady}})
    async def readyz() -> Any:
        """The database answers (503 with the reason when it does not). Redis going away is
        not an outage: `wakeups` then says so, and readers poll the database."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await rt.store.query(_ping)
        except Exception as exc:
            body = NotReady(status="unavailable",
                            error=f"database did not answer: {_reason(exc)}")
            return JSONResponse(body.model_dump(), status_code=503)
        return Ready(status="ok", wakeups=wakeups(rt))

    @api.get("/api")
    async def index() -> dict[str, Any]:
        """Where to go from here (the JSON API's entry point)."""
        return {"name": "tickwork", "version": version(), "llm": rt.llm_label,
                "simulated": rt.llm.simulated,
                "links": {"stacks": "/api/stacks", "events": "/api/events",
                          "system": "/api/system", "openapi": "/openapi.json",
                          "metrics": "/metrics"}}

    @api.get("/api/system")
    async def system() -> SystemOut:
        """Which model answers (a simulated one says so), the beat, the version, the agents,
        and the fleet: every live process, from the database, whichever dashboard answers."""
        interval = await rt.store.query(read.beat_interval, rt.settings.tick_interval)
        rows = await rt.store.query(fleet.live, rt.clock.now(), rt.settings.lease_s)
        procs, totals = fleet_of(rows, rt.process_id)
        depth = await rt.store.query(queue.queue_depth)
        providers = [Endpoint(name=p.name, model=p.model, base_url=p.base_url,
                              on_loopback=p.on_loopback)
                     for p in (rt.chain.providers if rt.chain is not None else [])]
        return SystemOut(llm=rt.llm_label, simulated=rt.llm.simulated,
                         tick_interval=interval, version=version(),
                         agents=rt.registry.names(), providers=providers,
                         notes=rt.llm_notes, fleet=procs, fleet_totals=totals,
                         queue_depth=depth)

    return api
