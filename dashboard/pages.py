"""The dashboard's HTML pages, the parts they are made of, and sign-in.

Pages (open to visitors; a signed-in session gets its CSRF token in the page and live write
buttons):

    GET /                     every stack, one row each
    GET /stacks/{id}          one stack: header, tick timeline, memory, messages, artifacts
    GET /ticks/{id}           one tick: waterfall, steps, LLM attempts
    GET /system               the fleet, beat, queue and providers
    POST /session             sign in with the admin token (form, or JSON `{"token": ...}`)
    POST /session/logout

Parts. Every page is rendered by Jinja2 templates (`dashboard/templates/`, one `Renderer`
per app) from partials; each part a page updates live is also served alone, rendered by the
same partial, so what the page script swaps in is exactly what a reload would show:

    GET /stacks/{id}/row      the Stacks page's row of one stack    (parts/stack_row.html)
    GET /stacks/toolbar       the Stacks page's Play all / Pause all (parts/stacks_toolbar.html)
    GET /stacks/{id}/head     the Stack page's header and buttons   (parts/stack_head.html)
    GET /stacks/{id}/extras   its memory, messages and artifacts    (parts/stack_extras.html)
    GET /ticks/{id}/row       one tick of the Stack page's timeline (parts/tick_row.html)
    GET /ticks/{id}/detail    the Tick page's tick                  (parts/tick_detail.html)
    GET /system/detail        the System page's figures             (parts/system_detail.html)

A part answers 404 with an empty body when its stack or tick is gone (the script then removes
it). The page script (`/static/app.js`) follows `/api/events` and, for each event, fetches the
parts it touches and swaps them in; it builds no markup of its own. Each page notes the last
event id it has seen (read before its data) and its script resumes the stream from there, so
no change between rendering and connecting is missed.
"""

from __future__ import annotations

from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from agents.registry import DEFAULT_TEAM
from dashboard import pages_stacks, system
from dashboard.render import NO_STORE, Renderer
from dashboard.session import (
    SESSION_COOKIE,
    SessionStore,
    is_json,
    local_path,
    sign_in_fields,
)
from orchestrator.runtime import Runtime
from schema import read
from schema.models import StackOut

STATIC = FsPath(__file__).parent / "static"
WRONG_TOKEN = "wrong admin token: check the token tickwork printed when it started"

PageStackId = Annotated[int, Path(ge=1, le=2**31 - 1)]
PageTickId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def mount_static(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def gone() -> HTMLResponse:
    """A part whose stack or tick no longer exists."""
    return HTMLResponse("", status_code=404, headers=NO_STORE)


def router(rt: Runtime, sessions: SessionStore, renderer: Renderer | None = None
           ) -> APIRouter:
    pages = APIRouter(include_in_schema=False)
    render = renderer or Renderer()
    db = rt.store
    interval = rt.settings.tick_interval

    def csrf_of(request: Request) -> str | None:
        session = sessions.of(request)
        return session.csrf if session else None

    def page(request: Request, template: str, title: str, kind: str, *, status: int = 200,
             data: dict[str, object] | None = None, error: str | None = None,
             path: str | None = None, **context: Any) -> HTMLResponse:
        csrf = csrf_of(request)
        return render.response(template, {
            "title": title, "kind": kind, "data": data or {}, "error": error, "csrf": csrf,
            "signed_in": csrf is not None, "path": path or request.url.path,
            "now": rt.clock.now(), **context}, status=status)

    def part(request: Request, template: str, **context: Any) -> HTMLResponse:
        return render.response(template, {
            "signed_in": csrf_of(request) is not None, "now": rt.clock.now(), **context})

    def not_found(request: Request, what: str) -> HTMLResponse:
        return page(request, "missing.html", "Not found", "missing", status=404, what=what)

    async def stack_of(stack_id: int) -> StackOut | None:
        return await db.query(read.get_stack, stack_id, interval, DEFAULT_TEAM, rt.clock.now())

    async def extras_of(stack_id: int) -> dict[str, Any]:
        return {"memory": await db.query(read.memory, stack_id),
                "messages": await db.query(read.messages, stack_id, 50),
                "artifacts": await db.query(read.artifacts, stack_id, 20)}

    # -- the Stacks page -------------------------------------------------------------------

    @pages.get("/", response_class=HTMLResponse)
    async def stacks_page(request: Request) -> HTMLResponse:
        after = await db.last_event_id()
        stacks = await db.query(read.list_stacks, interval, DEFAULT_TEAM, now=rt.clock.now())
        return page(request, "stacks.html", "Stacks", "stacks", data={"after": after},
                    stacks=stacks, states=pages_stacks.states_of(stacks),
                    llm=rt.llm_label, simulated=rt.llm.simulated)

    @pages.get("/stacks/toolbar", response_class=HTMLResponse)
    async def stacks_toolbar(request: Request) -> HTMLResponse:
        states = await db.query(pages_stacks.count_states)
        return part(request, "parts/stacks_toolbar.html", states=states)

    @pages.get("/stacks/{stack_id}/row", response_class=HTMLResponse)
    async def stack_row(request: Request, stack_id: PageStackId) -> HTMLResponse:
        stack = await stack_of(stack_id)
        if stack is None:
            return gone()
        return part(request, "parts/stack_row.html", stack=stack)

    # -- the Stack page --------------------------------------------------------------------

    @pages.get("/stacks/{stack_id}", response_class=HTMLResponse)
    async def stack_page(request: Request, stack_id: PageStackId) -> HTMLResponse:
        after = await db.last_event_id()
        stack = await stack_of(stack_id)
        if stack is None:
            return not_found(request, f"no stack with id {stack_id}")
        ticks = await db.query(read.list_ticks, stack_id, 100)
        return page(request, "stack.html", stack.name, "stack",
                    data={"stack-id": stack_id, "after": after}, stack=stack, ticks=ticks,
                    **await extras_of(stack_id))

    @pages.get("/stacks/{stack_id}/head", response_class=HTMLResponse)
    async def stack_head(request: Request, stack_id: PageStackId) -> HTMLResponse:
        stack = await stack_of(stack_id)
        if stack is None:
            return gone()
        return part(request, "parts/stack_head.html", stack=stack)

    @pages.get("/stacks/{stack_id}/extras", response_class=HTMLResponse)
    async def stack_extras(request: Request, stack_id: PageStackId) -> HTMLResponse:
        if await stack_of(stack_id) is None:
            return gone()
        return part(request, "parts/stack_extras.html", **await extras_of(stack_id))

    @pages.get("/ticks/{tick_id}/row", response_class=HTMLResponse)
    async def tick_row(request: Request, tick_id: PageTickId) -> HTMLResponse:
        tick = await db.query(pages_stacks.tick_summary, tick_id)
        if tick is None:
            return gone()
        return part(request, "parts/tick_row.html", tick=tick)

    # -- the Tick page ---------------------------------------------------------------------

    @pages.get("/ticks/{tick_id}", response_class=HTMLResponse)
    async def tick_page(request: Request, tick_id: PageTickId) -> HTMLResponse:
        after = await db.last_event_id()
        tick = await db.query(read.get_tick, tick_id, DEFAULT_TEAM)
        if tick is None:
            return not_found(request, f"no tick with id {tick_id}")
        return page(request, "tick.html", f"Tick #{tick_id}", "tick",
                    data={"tick-id": tick_id, "stack-id": tick.stack_id,
                          "status": tick.status, "after": after}, tick=tick)

    @pages.get("/ticks/{tick_id}/detail", response_class=HTMLResponse)
    async def tick_detail(request: Request, tick_id: PageTickId) -> HTMLResponse:
        tick = await db.query(read.get_tick, tick_id, DEFAULT_TEAM)
        if tick is None:
            return gone()
        return part(request, "parts/tick_detail.html", tick=tick)

    # -- the System page -------------------------------------------------------------------

    @pages.get("/system", response_class=HTMLResponse)
    async def system_page(request: Request) -> HTMLResponse:
        return page(request, "system.html", "System", "system", h=await system.health(rt))

    @pages.get("/system/detail", response_class=HTMLResponse)
    async def system_detail(request: Request) -> HTMLResponse:
        return part(request, "parts/system_detail.html", h=await system.health(rt))

    # -- sign-in ---------------------------------------------------------------------------

    @pages.post("/session")
    async def sign_in(request: Request) -> Response:
        """Exchange the admin token for a session cookie (form or JSON `{"token": ...}`)."""
        fields = await sign_in_fields(request)
        token = fields.get("token", "").strip()
        if not token or not sessions.token_matches(token):
            if is_json(request):
                return JSONResponse({"error": WRONG_TOKEN}, status_code=401)
            return page(request, "signin.html", "Sign in", "signin", status=401,
                        error=WRONG_TOKEN, path=local_path(fields.get("next")))
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
