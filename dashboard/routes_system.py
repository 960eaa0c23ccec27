"""Health, metrics and what this system is: /livez, /readyz, /metrics, /api/system.

/metrics speaks the Prometheus text format (names prefixed `tickwork_`); `dashboard.metrics`
writes it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel
from sqlalchemy import Connection, text

from dashboard import metrics as metrics_text
from dashboard.sse import EventTailer
from orchestrator.runtime import Runtime

READY_TIMEOUT_S = 2.0
PROMETHEUS_TEXT = metrics_text.CONTENT_TYPE


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
        body = await metrics_text.scrape(rt, tailer.clients, version())
        return PlainTextResponse(body, media_type=PROMETHEUS_TEXT)

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
        """Which model answers (a simulated one says so), the beat, the version, the agents."""
        return SystemOut(llm=rt.llm_label, simulated=rt.llm.simulated,
                         tick_interval=rt.settings.tick_interval, version=version(),
                         agents=rt.registry.names())

    return api
