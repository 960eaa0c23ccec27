"""Health, metrics and what this system is: /livez, /readyz, /metrics, /api/system.

/metrics speaks the Prometheus text format (names prefixed `tickwork_`), written by hand: a
handful of gauges read from the database at scrape time.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from typing import Any, get_args

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from sqlalchemy import Connection, func, select, text

from dashboard.sse import EventTailer
from orchestrator.runtime import Runtime
from schema import tables as t
from schema.models import ExecutionState, TickStatus

READY_TIMEOUT_S = 2.0
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def version() -> str:
    try:
        return importlib.metadata.version("tickwork")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class Status(BaseModel):
    status: str


class NotReady(BaseModel):
    status: str
    error: str


class SystemOut(BaseModel):
    llm: str
    simulated: bool
    tick_interval: int
    version: str
    agents: list[str]


def _ping(conn: Connection) -> None:
    conn.execute(text("SELECT 1"))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {READY_TIMEOUT_S:g} s"
    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0][:300]
    return f"{type(cause).__name__}: {first}" if first else type(cause).__name__


def _counts(conn: Connection) -> tuple[dict[str, int], dict[str, int]]:
    ticks = {status: n for status, n in conn.execute(
        select(t.ticks.c.status, func.count()).group_by(t.ticks.c.status))}
    stacks = {state: n for state, n in conn.execute(
        select(t.stacks.c.execution_state, func.count())
        .where(t.stacks.c.deleted_at.is_(None)).group_by(t.stacks.c.execution_state))}
    return ticks, stacks


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(ticks: dict[str, int], stacks: dict[str, int], sse_clients: int,
                   llm: str, simulated: bool) -> str:
    lines: list[str] = []

    def gauge(name: str, help_text: str, samples: list[tuple[str, int]]) -> None:
        lines.extend([f"# HELP tickwork_{name} {help_text}", f"# TYPE tickwork_{name} gauge"])
        lines.extend(f"tickwork_{name}{labels} {value}" for labels, value in samples)

    gauge("ticks", "Ticks by status.",
          [(f'{{status="{s}"}}', ticks.get(s, 0)) for s in get_args(TickStatus)])
    gauge("stacks", "Stacks (not deleted) by execution state.",
          [(f'{{state="{s}"}}', stacks.get(s, 0)) for s in get_args(ExecutionState)])
    gauge("queue_depth", "Ticks queued and not yet claimed.", [("", ticks.get("queued", 0))])
    gauge("event_stream_clients", "Clients connected to the event stream.",
          [("", sse_clients)])
    gauge("info", "This process: its version and model.",
          [(f'{{version="{_label(version())}",llm="{_label(llm)}",'
            f'simulated="{str(simulated).lower()}"}}', 1)])
    return "\n".join(lines) + "\n"


def router(rt: Runtime, tailer: EventTailer) -> APIRouter:
    api = APIRouter(tags=["system"])

    @api.get("/livez")
    async def livez() -> Status:
        """The process is up."""
        return Status(status="ok")

    @api.get("/readyz", response_model=Status, responses={503: {"model": NotReady}})
    async def readyz() -> Any:
        """The database answers (503 with the reason when it does not)."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                await rt.db.query(_ping)
        except Exception as exc:
            body = NotReady(status="unavailable",
                            error=f"database did not answer: {_reason(exc)}")
            return JSONResponse(body.model_dump(), status_code=503)
        return Status(status="ok")

    @api.get("/metrics", response_class=PlainTextResponse,
             responses={200: {"content": {PROMETHEUS_TEXT: {}}}})
    async def metrics() -> PlainTextResponse:
        """Prometheus text format."""
        ticks, stacks = await rt.db.query(_counts)
        body = render_metrics(ticks, stacks, tailer.clients, rt.llm_label, rt.llm.simulated)
        return PlainTextResponse(body, media_type=PROMETHEUS_TEXT)

    @api.get("/")
    async def index() -> dict[str, Any]:
        """Where to go from here (the JSON API's entry point)."""
        return {"name": "tickwork", "version": version(), "llm": rt.llm_label,
                "simulated": rt.llm.simulated,
                "links": {"stacks": "/api/stacks", "events": "/api/events",
                          "system": "/api/system", "openapi": "/openapi.json",
                          "metrics": "/metrics"}}

    @api.get("/api/system")
    async def system() -> SystemOut:
        """Which model answers (a simulated one says so), the beat, the version, the agents."""
        return SystemOut(llm=rt.llm_label, simulated=rt.llm.simulated,
                         tick_interval=rt.settings.tick_interval, version=version(),
                         agents=rt.registry.names())

    return api
