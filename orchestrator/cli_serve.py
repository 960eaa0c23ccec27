"""The long-running commands: `up` (everything), `beat`, `worker` and `dashboard`.

Each builds one Runtime and runs the parts its role names in one asyncio loop; the HTTP roles
serve the dashboard app with uvicorn in that same loop. SIGINT and SIGTERM stop the process
cleanly: the HTTP server closes, running ticks get a grace period, the database is closed, and
the exit code is 0. `beat` and `worker` may serve their own /metrics (`--metrics-port`) from a
thread (`orchestrator.metrics_http`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn
from alembic.util.exc import CommandError
from rich.text import Text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from agents.registry import AgentRegistry
from orchestrator.cli_common import console, database_message, fail, mask_url, open_database
from orchestrator.config import Settings
from orchestrator.metrics import exposition
from orchestrator.metrics_http import MetricsServer
from orchestrator.runtime import Runtime
from schema.db import normalise_url

if TYPE_CHECKING:
    from fastapi import FastAPI

log = logging.getLogger("tickwork")

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
HTTP_GRACE_S = 3.0  # open requests (event streams included) get this long to finish


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    summary: str
    beat: bool
    worker: bool
    http: bool


UP = Role("up", "everything in one process", beat=True, worker=True, http=True)
BEAT = Role("beat", "the beat: fans out one tick per due stack", beat=True, worker=False,
            http=False)
WORKER = Role("worker", "runs queued ticks", beat=False, worker=True, http=False)
DASHBOARD = Role("dashboard", "the web dashboard and JSON API", beat=False, worker=False,
                 http=True)


# -- listening ----------------------------------------------------------------------------


def url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket up front, so a port in use is reported before anything runs."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        fail(f"cannot resolve the host {host!r}: {exc.strerror}")
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is already in use (another tickwork?); "
                 "choose another with --port")
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    return sock


def metrics_address(host: str, port: int | None) -> tuple[str, int] | None:
    """Where `--metrics-port`/`--metrics-host` ask /metrics to be served (None: nowhere)."""
    return None if port is None else (host, port)


def bind_metrics(host: str, port: int) -> MetricsServer:
    """Listen for /metrics up front, like `bind`: a port in use is one line, not a trace."""
    try:
        return MetricsServer(host, port)
    except socket.gaierror as exc:
        fail(f"cannot resolve the metrics host {host!r}: {exc.strerror}")
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is already in use (another tickwork?); "
                 "choose another with --metrics-port")
        fail(f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}")


# -- signals ------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server, minus its own signal handling: the process owns the signals, and
    (unlike uvicorn's) does not re-raise them after a clean shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Shutdown:
    """Turns SIGINT/SIGTERM into a stop request for the loop (and the HTTP server)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.requested = asyncio.Event()
        self.server: uvicorn.Server | None = None
        self.signals = 0

    def handle(self, sig: int, frame: FrameType | None) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info("stopping (%s)", signal.Signals(sig).name)
        if self.server is not None:
            self.server.handle_exit(sig, frame)
        self._loop.call_soon_threadsafe(self.requested.set)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# -- running ------------------------------------------------------------------------------


def require_token(settings: Settings) -> None:
    """Every process of a fleet must accept the same token: with a database other than SQLite,
    a role refuses to start without TICKWORK_ADMIN_TOKEN instead of inventing its own."""
    backend = make_url(normalise_url(settings.database_url)).get_backend_name()
    if settings.admin_token is None and backend != "sqlite":
        fail("TICKWORK_ADMIN_TOKEN is not set: with a database other than SQLite every "
             "tickwork process needs the same admin token (set it to a long random value, "
             "e.g. the output of `python -c 'import secrets; print(secrets.token_urlsafe())'`)")


def _runtime(role: Role, settings: Settings) -> Runtime:
    try:
        registry = AgentRegistry.default(settings.agent_paths)
    except Exception as exc:
        fail(f"cannot load the agents (TICKWORK_AGENTS or a tickwork.agents plugin): {exc}")
    # `up` makes and migrates its database; the other roles need one at the latest revision.
    with open_database(settings, create=role is UP):
        pass
    try:
        return Runtime.build(settings, migrate=False, registry=registry)
    except (SQLAlchemyError, CommandError) as exc:
        fail(database_message(settings.database_url, exc))


def _app(rt: Runtime) -> FastAPI:
    try:
        from dashboard.api import create_app
    except ImportError as exc:
        fail(f"the dashboard is not available: {exc}")
    return create_app(rt)


def banner(role: Role, rt: Runtime, url: str | None, metrics_url: str | None = None) -> None:
    lines: list[tuple[str, Text | str]] = []
    if url:
        lines.append(("dashboard", Text(url, style="bold cyan")))
        if rt.settings.admin_token is None:
            lines.append(("admin token", Text.assemble(
                (rt.admin_token, "bold"),
                ("  (generated: set TICKWORK_ADMIN_TOKEN to keep it)", "dim"))))
        else:  # a configured token is never printed
            lines.append(("admin token", Text("from TICKWORK_ADMIN_TOKEN (not shown)",
                                              style="dim")))
    lines.append(("database", mask_url(rt.settings.database_url)))
    if role.beat:
        lines.append(("beat", f"every {rt.settings.tick_interval} s"))
    if role.worker:
        lines.append(("concurrency", f"up to {rt.settings.max_concurrent_ticks} ticks"))
        style = "yellow" if rt.llm.simulated else ""
        lines.append(("LLM chain", Text(rt.llm_label, style=style)))
        lines.extend(("", Text(note, style="dim")) for note in rt.llm_notes)
    if metrics_url:
        lines.append(("metrics", Text(metrics_url, style="cyan")))
    console.print(Text.assemble(("tickwork " + role.name, "bold"), f"  {role.summary}"),
                  soft_wrap=True)
    for label, value in lines:
        console.print(Text.assemble(f"  {label:<12} ", value), soft_wrap=True)
    console.print(Text("  press Ctrl-C to stop", style="dim"), soft_wrap=True)


def _log_start(role: Role, rt: Runtime, url: str | None, metrics_url: str | None) -> None:
    parts = [f"tickwork {role.name} started"]
    if url:
        parts.append(f"serving {url}")
    if role.beat:
        parts.append(f"beat every {rt.settings.tick_interval} s")
    if role.worker:
        chain = rt.llm_label
        if rt.llm_notes:
            chain += f" ({'; '.join(rt.llm_notes)})"
        if rt.llm.simulated:
            chain += " (the built-in simulated model: no real provider is called)"
        parts.append(f"LLM chain {chain}")
    if metrics_url:
        parts.append(f"metrics on {metrics_url}")
    log.info("; ".join(parts))


def run_loop(main: Coroutine[Any, Any, None], kind: str = "uvloop") -> None:
    """`asyncio.run(main)` on uvloop (less CPU per tick than the standard loop) or, asked for,
    the standard library's loop."""
    factory = None
    if kind == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


async def _run(role: Role, rt: Runtime, app: Any, sock: socket.socket | None) -> None:
    shutdown = Shutdown(asyncio.get_running_loop())
    with shutdown.installed():
        await rt.start(beat=role.beat, worker=role.worker, role=role.name)
        try:
            if app is not None and sock is not None:
                server = _Server(uvicorn.Config(
                    app, log_level="warning", lifespan="on",
                    timeout_graceful_shutdown=int(HTTP_GRACE_S)))
                shutdown.server = server
                if not shutdown.requested.is_set():
                    await server.serve(sockets=[sock])
            else:
                await shutdown.requested.wait()
        finally:
            await rt.stop(rt.settings.drain_grace_s)
            log.info("tickwork %s stopped", role.name)


def serve(role: Role, settings: Settings, host: str = "127.0.0.1", port: int = 8000,
          metrics: tuple[str, int] | None = None) -> None:
    """Run `role` until SIGINT or SIGTERM; with `metrics` (host, port), serve its /metrics
    there too: the database's counts on a beat, the worker's own figures on a worker."""
    require_token(settings)
    sock = bind(host, port) if role.http else None
    scrapes: MetricsServer | None = None
    try:
        scrapes = bind_metrics(*metrics) if metrics is not None else None
        rt = _runtime(role, settings)
        try:
            app = _app(rt) if role.http else None
            url = url_for(host, sock.getsockname()[1]) if sock is not None else None
            metrics_url = None
            if scrapes is not None and metrics is not None:
                scrapes.start(exposition(rt, database=role.beat, worker=role.worker))
                metrics_url = url_for(metrics[0], scrapes.port) + "metrics"
            banner(role, rt, url, metrics_url)
            _log_start(role, rt, url, metrics_url)
            run_loop(_run(role, rt, app, sock), settings.event_loop)
        finally:
            if scrapes is not None:
                scrapes.close()  # before the database closes under a scrape
            rt.close()
    finally:
        if scrapes is not None:
            scrapes.close()  # the runtime could not be built (closing twice is harmless)
        if sock is not None:
            sock.close()
