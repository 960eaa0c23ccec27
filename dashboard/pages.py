"""The dashboard's HTML pages and sign-in: /, /stacks/{id}, /ticks/{id}, /session.

Pages are rendered on the server from the same reads as the JSON API and are open to visitors;
a signed-in session gets its CSRF token in the page and working write buttons. The page script
(`/static/app.js`) follows `/api/events` and updates the page in place. Each page notes the
last event id it has seen (read before its data), and its script resumes the stream from there,
so no change between rendering and connecting is missed.
"""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from agents.registry import DEFAULT_TEAM
from dashboard.pages_html import esc, llm_line, page
from dashboard.pages_stacks import stack_body, stacks_body
from dashboard.pages_tick import tick_body
from dashboard.session import (
    SESSION_COOKIE,
    SessionStore,
    is_json,
    local_path,
    sign_in_fields,
)
from orchestrator.runtime import Runtime
from schema import read

STATIC = FsPath(__file__).parent / "static"
WRONG_TOKEN = "wrong admin token: check the token tickwork printed when it started"
NO_STORE = {"Cache-Control": "no-store"}

PageStackId = Annotated[int, Path(ge=1, le=2**31 - 1)]
PageTickId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def router(rt: Runtime, sessions: SessionStore) -> APIRouter:
    pages = APIRouter(include_in_schema=False)
    db = rt.store
    interval = rt.settings.tick_interval

    def csrf_of(request: Request) -> str | None:
        session = sessions.of(request)
        return session.csrf if session else None

    def html(request: Request, title: str, body: str, kind: str, *, status: int = 200,
             data: dict[str, object] | None = None, error: str | None = None,
             path: str | None = None) -> HTMLResponse:
        text = page(title, body, path=path or request.url.path, csrf=csrf_of(request),
                    kind=kind, data=data, error=error)
        return HTMLResponse(text, status_code=status, headers=NO_STORE)

    def not_found(request: Request, what: str) -> HTMLResponse:
        body = f'<h1>Not found</h1><p>{esc(what)}</p><p><a href="/">All stacks</a></p>'
        return html(request, "Not found", body, "missing", status=404)

    @pages.get("/", response_class=HTMLResponse)
    async def stacks_page(request: Request) -> HTMLResponse:
        after = await rt.store.last_event_id()
        now = rt.clock.now()
        stacks = await db.query(read.list_stacks, interval, DEFAULT_TEAM, now=now)
        signed_in = csrf_of(request) is not None
        body = stacks_body(stacks, now, signed_in, llm_line(rt.llm_label, rt.llm.simulated))
        return html(request, "Stacks", body, "stacks", data={"after": after})

    @pages.get("/stacks/{stack_id}", response_class=HTMLResponse)
    async def stack_page(request: Request, stack_id: PageStackId) -> HTMLResponse:
        after = await rt.store.last_event_id()
        now = rt.clock.now()
        stack = await db.query(read.get_stack, stack_id, interval, DEFAULT_TEAM, now)
        if stack is None:
            return not_found(request, f"no stack with id {stack_id}")
        ticks = await db.query(read.list_ticks, stack_id, 100)
        memory = await db.query(read.memory, stack_id)
        messages = await db.query(read.messages, stack_id, 50)
        artifacts = await db.query(read.artifacts, stack_id, 20)
        body = stack_body(stack, ticks, memory, messages, artifacts, now,
                          csrf_of(request) is not None)
        return html(request, stack.name, body, "stack",
                    data={"stack-id": stack_id, "after": after})

    @pages.get("/ticks/{tick_id}", response_class=HTMLResponse)
    async def tick_page(request: Request, tick_id: PageTickId) -> HTMLResponse:
        after = await rt.store.last_event_id()
        tick = await db.query(read.get_tick, tick_id, DEFAULT_TEAM)
        if tick is None:
            return not_found(request, f"no tick with id {tick_id}")
        return html(request, f"Tick #{tick_id}", tick_body(tick), "tick",
                    data={"tick-id": tick_id, "stack-id": tick.stack_id,
                          "status": tick.status, "after": after})

    @pages.post("/session")
    async def sign_in(request: Request) -> Response:
        """Exchange the admin token for a session cookie (form or JSON `{"token": ...}`)."""
        fields = await sign_in_fields(request)
        token = fields.get("token", "").strip()
        if not token or not sessions.token_matches(token):
            if is_json(request):
                return JSONResponse({"error": WRONG_TOKEN}, status_code=401)
            body = ('<h1>Sign in</h1><p>Writes need the admin token; reading is open to '
                    'everyone. Use the form at the top of the page.</p>')
            return html(request, "Sign in", body, "signin", status=401, error=WRONG_TOKEN,
                        path=local_path(fields.get("next")))
        sid, session = sessions.open()
        response: Response
        if is_json(request):
            response = JSONResponse({"csrf_token": session.csrf}, headers=NO_STORE)
        else:
            response = RedirectResponse(local_path(fields.get("next")), status_code=303)
        sessions.set_cookie(response, sid)
        return response

    @pages.post("/session/logout")
    async def sign_out(request: Request) -> Response:
        sessions.close(request.cookies.get(SESSION_COOKIE))
        response: Response = (JSONResponse({"signed_in": False}) if is_json(request)
                              else RedirectResponse("/", status_code=303))
        sessions.clear_cookie(response)
        return response

    return pages
