"""Stacks and ticks over HTTP: reads are open, writes go through the admin route class.

Reads call `schema.read` on the reader pool; writes call the commands of
`orchestrator.stacks` in one write transaction each, with the time from the runtime's Clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel
from sqlalchemy import Connection, select

from agents.registry import DEFAULT_TEAM
from dashboard.auth import Authenticator
from dashboard.errors import responses
from dashboard.params import optional_int
from orchestrator import stacks
from orchestrator.errors import NotFound
from orchestrator.runtime import Runtime
from schema import read
from schema import tables as t
from schema.models import (
    INT64_MAX,
    ArtifactOut,
    BudgetUpdate,
    MemoryOut,
    MessageOut,
    PauseRequest,
    StackChange,
    StackCreate,
    StackOut,
    TeamUpdate,
    TickDetail,
    TickSummary,
)

T = TypeVar("T")

StackId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the stack's id")]
TickId = Annotated[int, Path(ge=1, le=2**63 - 1, description="the tick's id")]
Limit = Annotated[int, Query(ge=1, le=500, description="how many, newest first")]
Before = Annotated[int | None, optional_int(1, INT64_MAX), Query(
    ge=1, le=INT64_MAX,
    description="only ticks older than this tick id (the next page: the last id of this one)")]


class Changed(BaseModel):
    changed: int


def _live_stack(conn: Connection, stack_id: int) -> None:
    found = conn.execute(select(t.stacks.c.id).where(
        t.stacks.c.id == stack_id, t.stacks.c.deleted_at.is_(None))).first()
    if found is None:
        raise NotFound(f"no stack with id {stack_id}")


def _of_stack(conn: Connection, stack_id: int, fn: Callable[..., T], *args: object) -> T:
    """`fn(conn, stack_id, *args)`, or NotFound when there is no such (live) stack."""
    _live_stack(conn, stack_id)
    return fn(conn, stack_id, *args)


def _ticks(conn: Connection, stack_id: int, limit: int, before: int | None
           ) -> list[TickSummary]:
    if before is None:
        return read.list_ticks(conn, stack_id, limit)
    q = (select(t.ticks).where(t.ticks.c.stack_id == stack_id, t.ticks.c.id < before)
         .order_by(t.ticks.c.id.desc()).limit(limit))
    return [read.tick_summary(r) for r in conn.execute(q).mappings()]


def router(rt: Runtime, auth: Authenticator) -> APIRouter:
    interval = rt.settings.tick_interval
    db = rt.store
    public = APIRouter(prefix="/api", tags=["stacks"])
    admin = APIRouter(prefix="/api", tags=["stacks"], route_class=auth.route_class(),
                      dependencies=[auth.dependency], responses=responses(401, 429))

    def agents() -> stacks.Agents:
        return stacks.Agents(rt.registry.names(), rt.settings.lease_s)

    async def stack_out(stack_id: int) -> StackOut:
        found = await db.query(read.get_stack, stack_id, interval, DEFAULT_TEAM, rt.clock.now())
        if found is None:
            raise NotFound(f"no stack with id {stack_id}")
        return found

    # -- reading ------------------------------------------------------------------------

    @public.get("/stacks")
    async def list_stacks() -> list[StackOut]:
        """Every stack that is not deleted, oldest first."""
        return await db.query(read.list_stacks, interval, DEFAULT_TEAM, now=rt.clock.now())

    @public.get("/stacks/{stack_id}", responses=responses(404, 422))
    async def get_stack(stack_id: StackId) -> StackOut:
        return await stack_out(stack_id)

    @public.get("/stacks/{stack_id}/ticks", responses=responses(404, 422))
    async def list_ticks(stack_id: StackId, limit: Limit = 50, before: Before = None
                         ) -> list[TickSummary]:
        """The stack's most recent ticks, newest first; `before` pages back."""
        return await db.query(_of_stack, stack_id, _ticks, limit, before)

    @public.get("/stacks/{stack_id}/memory", responses=responses(404, 422))
    async def memory(stack_id: StackId) -> list[MemoryOut]:
        """What the stack's agents remember, by key."""
        return await db.query(_of_stack, stack_id, read.memory)

    @public.get("/stacks/{stack_id}/messages", responses=responses(404, 422))
    async def messages(stack_id: StackId, limit: Limit = 50) -> list[MessageOut]:
        return await db.query(_of_stack, stack_id, read.messages, limit)

    @public.get("/stacks/{stack_id}/artifacts", responses=responses(404, 422))
    async def artifacts(stack_id: StackId, limit: Limit = 20) -> list[ArtifactOut]:
        return await db.query(_of_stack, stack_id, read.artifacts, limit)

    @public.get("/ticks/{tick_id}", tags=["ticks"], responses=responses(404, 422))
    async def get_tick(tick_id: TickId) -> TickDetail:
        """The tick with its steps and every LLM attempt of each step."""
        found = await db.query(read.get_tick, tick_id, DEFAULT_TEAM)
        if found is None:
            raise NotFound(f"no tick with id {tick_id}")
        return found

    # -- changing -----------------------------------------------------------------------

    @admin.post("/stacks/play-all")
    async def play_all() -> Changed:
        """Play every stack that is not running; each gets a tick at once."""
        n = await db.transact(stacks.play_all, now=rt.clock.now())
        return Changed(changed=n)

    @admin.post("/stacks/pause-all", responses=responses(422))
    async def pause_all(body: PauseRequest | None = None) -> Changed:
        """Pause every running stack; their queued ticks are cancelled."""
        reason = body.reason if body else None
        return Changed(changed=await db.transact(stacks.pause_all, reason, rt.clock.now()))

    @admin.post("/stacks", status_code=201, responses=responses(409, 422))
    async def create_stack(spec: StackCreate, response: Response) -> StackOut:
        """Create a stack; unless created paused, its first tick is queued at once."""
        row = await db.transact(stacks.create, spec, beat_interval=interval,
                                now=rt.clock.now(), agents=agents())
        response.headers["Location"] = f"/api/stacks/{row['id']}"
        return await stack_out(row["id"])

    @admin.delete("/stacks/{stack_id}", status_code=204, response_class=Response,
                  responses=responses(404, 422))
    async def delete_stack(stack_id: StackId) -> Response:
        """Delete a stack; its queued tick is cancelled, a running one finishes."""
        await db.transact(stacks.delete, stack_id, rt.clock.now())
        return Response(status_code=204)

    async def changed(outcome: stacks.Outcome) -> StackChange:
        out = await stack_out(outcome.row["id"])
        return StackChange(**out.model_dump(), changed=outcome.changed,
                           message=outcome.message)

    @admin.post("/stacks/{stack_id}/play", responses=responses(404, 409, 422))
    async def play(stack_id: StackId) -> StackChange:
        """Set a stack running; its next tick is queued at once. A running stack stays as it
        is (`changed` false, and `message` says so); 409 when its budget is spent today or its
        team names an agent the running workers do not know."""
        return await changed(await db.transact(stacks.play, stack_id, now=rt.clock.now(),
                                               agents=agents()))

    @admin.post("/stacks/{stack_id}/pause", responses=responses(404, 409, 422))
    async def pause(stack_id: StackId, body: PauseRequest | None = None) -> StackChange:
        """Pause a stack: no new tick starts, its queued tick is cancelled, a running one
        finishes. The body is optional; an already paused stack keeps its reason unless a new
        one is given (`changed` and `message` say what happened)."""
        reason = body.reason if body else None
        return await changed(await db.transact(stacks.pause, stack_id, reason,
                                               rt.clock.now()))

    @admin.put("/stacks/{stack_id}/team", responses=responses(404, 422))
    async def set_team(stack_id: StackId, body: TeamUpdate) -> StackOut:
        """Give the stack another team (null: the default one); its next tick runs it. Every
        agent must be known to the running workers."""
        await db.transact(stacks.set_team, stack_id, body.team, rt.clock.now(),
                          agents=agents())
        return await stack_out(stack_id)

    @admin.put("/stacks/{stack_id}/budget", responses=responses(404, 422))
    async def set_budget(stack_id: StackId, body: BudgetUpdate) -> StackOut:
        """Set the stack's daily budget in tokens and/or USD (null removes a limit). A stack
        that reaches it is paused with the reason `budget`."""
        await db.transact(stacks.set_budget, stack_id, body, rt.clock.now())
        return await stack_out(stack_id)

    @admin.post("/stacks/{stack_id}/tick", status_code=202, responses=responses(404, 409, 422))
    async def run_now(stack_id: StackId) -> TickSummary:
        """Queue one tick of a running stack now (409 while it has one queued or running)."""
        row = await db.transact(stacks.run_now, stack_id, rt.clock.now())
        return read.tick_summary(row)

    both = APIRouter()
    both.include_router(public)
    both.include_router(admin)
    return both
