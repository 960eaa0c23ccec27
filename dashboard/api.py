"""The ASGI application: `create_app(runtime)` for `tickwork up` and `tickwork dashboard`.

The app owns one event tailer (started and stopped with the app's lifespan) and reads and
writes through the runtime it is given; it holds no state of its own beyond that.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from dashboard import (
    errors,
    metrics,
    pages,
    routes_charts,
    routes_stacks,
    routes_system,
    security,
    sse,
    system,
)
from dashboard.auth import Authenticator
from dashboard.session import RedisSessionStore, SessionStore
from orchestrator import fleet
from orchestrator.runtime import Runtime


def create_app(rt: Runtime, *, event_backlog: int = sse.MAX_PENDING) -> FastAPI:
    """Build the web app for `rt`. `event_backlog`: how many events a slow event-stream client
    may fall behind before it is dropped (it then reconnects and resumes)."""
    auth = Authenticator(rt.admin_token)
    sessions = (RedisSessionStore(rt.admin_token, rt.clock, rt.settings.redis_url,
                                  prefix=rt.settings.redis_prefix)
                if rt.settings.redis_url else SessionStore(rt.admin_token, rt.clock))
    auth.checks.append(sessions.check)  # a signed-in page: session cookie + CSRF header
    tailer = sse.EventTailer(rt.store, rt.bus, rt.settings.poll_s, max_pending=event_backlog)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await tailer.start()
        try:
            yield
        finally:
            await tailer.stop()

    app = FastAPI(
        title="tickwork",
        version=fleet.version(),
        summary="Scheduled multi-agent tick orchestrator: stacks, ticks and live events.",
        lifespan=lifespan,
    )
    app.state.runtime = rt
    app.state.auth = auth
    app.state.events = tailer
    app.state.sessions = sessions
    errors.install(app)
    security.install(app, rt)
    pages.mount_static(app)
    app.include_router(pages.router(rt, sessions))
    app.include_router(routes_system.router(rt, tailer))
    app.include_router(system.router(rt))
    app.include_router(routes_stacks.router(rt, auth))
    app.include_router(sse.router(rt.store, tailer))
    app.include_router(metrics.router(rt, tailer))
    app.include_router(routes_charts.router(rt))
    return app
