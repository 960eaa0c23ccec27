"""The HTTP JSON API, on SQLite and PostgreSQL: what a dashboard, a script or curl relies on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine

from dashboard.api import create_app
from orchestrator.runtime import Runtime
from schema.clock import FakeClock
from tests.conftest import wait_for

ADMIN = {"Authorization": "Bearer test-token"}
TEAM = ["planner", "builder", "communicator", "reviewer"]


@asynccontextmanager
async def api(rt: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(rt))
    async with httpx.AsyncClient(transport=transport, base_url="http://tickwork.test") as client:
        yield client


def run(rt: Runtime, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with api(rt) as client:
            await scenario(client)

    asyncio.run(main())


async def create(client: httpx.AsyncClient, **spec: Any) -> dict[str, Any]:
    r = await client.post("/api/stacks", json={"name": "alpha", **spec}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()


async def run_queued_ticks(rt: Runtime) -> None:
    """Claim what is queued and wait until the worker has finished it."""
    assert await rt.worker.claim_once()
    await wait_for(lambda: rt.worker.running == 0, what="the claimed ticks to finish")


# -- stacks ---------------------------------------------------------------------------------


def test_create_read_delete_round_trip(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.post("/api/stacks", headers=ADMIN, json={
            "name": "  alpha  ", "goal": "ship the docs", "interval_s": 20, "team": TEAM[:2]})
        assert r.status_code == 201, r.text
        stack = r.json()
        assert r.headers["location"] == f"/api/stacks/{stack['id']}"
        assert stack["name"] == "alpha"  # surrounding whitespace is trimmed
        assert stack["goal"] == "ship the docs"
        assert stack["execution_state"] == "running"
        assert stack["interval_s"] == 20
        assert stack["team"] == TEAM[:2]
        assert stack["pause_reason"] is None
        # A new running stack gets its first tick at once.
        assert stack["last_tick"]["status"] == "queued"
        assert stack["last_tick"]["trigger"] == "start"
        assert stack["counts"]["queued"] == 1

        second = await create(client, name="beta", paused=True)
        assert second["execution_state"] == "paused"
        assert second["interval_s"] == 10  # the beat's own
        assert second["team"] == TEAM
        assert second["last_tick"] is None

        listed = (await client.get("/api/stacks")).json()
        assert [s["name"] for s in listed] == ["alpha", "beta"]
        got = await client.get(f"/api/stacks/{stack['id']}")
        assert got.status_code == 200
        assert got.json() == stack
        ticks = (await client.get(f"/api/stacks/{stack['id']}/ticks")).json()
        assert [t["id"] for t in ticks] == [stack["last_tick"]["id"]]

        r = await client.delete(f"/api/stacks/{stack['id']}", headers=ADMIN)
        assert r.status_code == 204
        assert r.content == b""
        r = await client.get(f"/api/stacks/{stack['id']}")
        assert r.status_code == 404
        assert r.json() == {"error": f"no stack with id {stack['id']}"}
        assert [s["name"] for s in (await client.get("/api/stacks")).json()] == ["beta"]
        assert (await client.delete(f"/api/stacks/{stack['id']}", headers=ADMIN)).status_code \
            == 404
        # Its queued tick was cancelled, and the name is free again.
        tick = (await client.get(f"/api/ticks/{stack['last_tick']['id']}")).json()
        assert tick["status"] == "cancelled"
        assert (await create(client, name="alpha"))["id"] != stack["id"]

    run(runtime, scenario)


def test_pause_with_a_reason_shows_and_cancels_the_queued_tick(runtime: Runtime,
                                                                clock: FakeClock) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client)
        r = await client.post(f"/api/stacks/{stack['id']}/pause", headers=ADMIN,
                              json={"reason": "maintenance window"})
        assert r.status_code == 200, r.text
        paused = r.json()
        assert paused["execution_state"] == "paused"
        assert paused["pause_reason"] == "maintenance window"
        assert paused["last_tick"]["id"] == stack["last_tick"]["id"]
        assert paused["last_tick"]["status"] == "cancelled"
        assert paused["counts"]["queued"] == 0
        assert paused["counts"]["cancelled"] == 1
        assert paused.pop("changed") is True
        assert paused.pop("message") == (f"stack {stack['id']} 'alpha' paused "
                                          "(maintenance window)")
        assert (await client.get(f"/api/stacks/{stack['id']}")).json() == paused

        clock.advance(10)  # the next slot: a resumed stack gets its tick at once
        r = await client.post(f"/api/stacks/{stack['id']}/play", headers=ADMIN)
        assert r.status_code == 200
        played = r.json()
        assert played["execution_state"] == "running"
        assert played["pause_reason"] is None
        assert played["last_tick"]["status"] == "queued"

        # An empty body is a pause without a reason.
        r = await client.post(f"/api/stacks/{stack['id']}/pause", headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["execution_state"] == "paused"
        assert r.json()["pause_reason"] == "paused"

    run(runtime, scenario)


def test_play_all_and_pause_all_report_how_many_changed(runtime: Runtime,
                                                        clock: FakeClock) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        for name in ("a", "b", "c"):
            await create(client, name=name, paused=name == "c")
        r = await client.post("/api/stacks/pause-all", headers=ADMIN, json={"reason": "deploy"})
        assert r.status_code == 200
        assert r.json() == {"changed": 2}
        stacks = (await client.get("/api/stacks")).json()
        assert {s["execution_state"] for s in stacks} == {"paused"}
        assert [s["pause_reason"] for s in stacks[:2]] == ["deploy", "deploy"]
        assert all(s["counts"]["queued"] == 0 for s in stacks)

        clock.advance(10)
        r = await client.post("/api/stacks/play-all", headers=ADMIN)
        assert r.json() == {"changed": 3}
        stacks = (await client.get("/api/stacks")).json()
        assert {s["execution_state"] for s in stacks} == {"running"}
        assert {s["last_tick"]["status"] for s in stacks} == {"queued"}
        assert (await client.post("/api/stacks/pause-all", headers=ADMIN)).json() == \
            {"changed": 3}

    run(runtime, scenario)


# -- ticks ----------------------------------------------------------------------------------


def test_a_finished_tick_shows_its_steps_and_llm_attempts(runtime: Runtime,
                                                          clock: FakeClock) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client, goal="write a haiku")
        await run_queued_ticks(runtime)  # the stack's first tick
        clock.set(clock.now() - clock.now() % 10 + 10)  # the next slot boundary
        fired = await runtime.beat.fire()
        assert [f.queued for f in fired] == [1]
        await run_queued_ticks(runtime)

        ticks = (await client.get(f"/api/stacks/{stack['id']}/ticks?limit=1")).json()
        assert len(ticks) == 1
        assert ticks[0]["trigger"] == "beat"
        assert ticks[0]["slot"] == int(clock.now() // 10)
        r = await client.get(f"/api/ticks/{ticks[0]['id']}")
        assert r.status_code == 200
        tick = r.json()
        assert tick["status"] == "succeeded"
        assert tick["stack_name"] == "alpha"
        assert [s["agent"] for s in tick["steps"]] == TEAM
        assert [s["index"] for s in tick["steps"]] == [0, 1, 2, 3]
        for step in tick["steps"]:
            assert step["status"] == "succeeded"
            assert step["output"]
            assert step["attempts"], step
            for attempt in step["attempts"]:
                assert attempt["provider"] == "sim"
                assert attempt["model"] == "simulated"
                assert attempt["status"] == "ok"

        # What the agents wrote is readable per stack, newest first.
        messages = (await client.get(f"/api/stacks/{stack['id']}/messages")).json()
        assert messages[0]["tick_id"] == tick["id"]
        assert messages[0]["agent"] == "communicator"
        artifacts = (await client.get(f"/api/stacks/{stack['id']}/artifacts?limit=1")).json()
        assert len(artifacts) == 1
        assert artifacts[0]["tick_id"] == tick["id"]
        assert (await client.get(f"/api/stacks/{stack['id']}/memory")).status_code == 200

        stacks = (await client.get("/api/stacks")).json()
        assert stacks[0]["counts"]["succeeded"] == 2
        assert stacks[0]["last_tick"]["id"] == tick["id"]

        # Run one tick now: 202 and the queued tick.
        r = await client.post(f"/api/stacks/{stack['id']}/tick", headers=ADMIN)
        assert r.status_code == 202, r.text
        manual = r.json()
        assert manual["trigger"] == "manual"
        assert manual["status"] == "queued"
        assert manual["slot"] is None
        assert (await client.get(f"/api/ticks/{manual['id']}")).json()["status"] == "queued"

    run(runtime, scenario)


def test_run_now_conflicts_while_a_tick_is_active_or_the_stack_is_paused(
        runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client)  # its first tick is queued
        r = await client.post(f"/api/stacks/{stack['id']}/tick", headers=ADMIN)
        assert r.status_code == 409
        assert r.json() == {"error": f"stack {stack['id']} already has a tick queued or running"}
        await client.post(f"/api/stacks/{stack['id']}/pause", headers=ADMIN)
        r = await client.post(f"/api/stacks/{stack['id']}/tick", headers=ADMIN)
        assert r.status_code == 409
        assert "paused" in r.json()["error"]
        r = await client.post("/api/stacks", json={"name": "alpha"}, headers=ADMIN)
        assert r.status_code == 409
        assert r.json() == {"error": "a stack named 'alpha' already exists"}
        assert len((await client.get("/api/stacks")).json()) == 1

    run(runtime, scenario)


# -- errors ---------------------------------------------------------------------------------


BAD_PAYLOADS: list[tuple[str, Any, str, str]] = [
    # (what, body, the field at fault or "", words the message must contain)
    ("empty name", {"name": ""}, "body.name", "at least 1 character"),
    ("blank name", {"name": "   "}, "body.name", "at least 1 character"),
    ("control character", {"name": "bad\x07name"}, "body.name", "control characters"),
    ("unknown field", {"name": "x", "colour": "red"}, "body.colour", "unknown field"),
    ("wrong type", {"name": "x", "interval_s": "soon"}, "body.interval_s", "integer"),
    ("bad agent name", {"name": "x", "team": ["Planner!"]}, "body.team", "not an agent name"),
    ("interval off the beat", {"name": "x", "interval_s": 15}, "",
     "multiple of the beat interval, which is 10 s"),
    ("budget beyond the column", {"name": "x", "budget_tokens_per_day": 9223372036854775808},
     "body.budget_tokens_per_day", "less than or equal to 2147483647"),
    ("a boolean is not a number", {"name": "x", "budget_tokens_per_day": True},
     "body.budget_tokens_per_day", "valid integer"),
    ("a number in a string", {"name": "x", "interval_s": "20"}, "body.interval_s", "integer"),
    ("a boolean in a string", {"name": "x", "paused": "yes"}, "body.paused", "boolean"),
    ("unknown agent", {"name": "x", "team": ["planner", "ghost"]}, "", "ghost"),
    ("not an object", [1, 2], "body", "dictionary"),
]


def test_bad_payloads_are_422_with_a_clear_message(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        for what, body, field, words in BAD_PAYLOADS:
            r = await client.post("/api/stacks", json=body, headers=ADMIN)
            assert r.status_code == 422, (what, r.text)
            err = r.json()
            assert "Traceback" not in r.text
            if field:
                assert err["error"] == "invalid request", what
                fields = {d["field"]: d["message"] for d in err["detail"]}
                assert field in fields, (what, err)
                assert words in fields[field], (what, err)
            else:
                assert words in err["error"], (what, err)

        r = await client.post("/api/stacks", content=b'{"name": "x",',
                              headers={**ADMIN, "Content-Type": "application/json"})
        assert r.status_code == 422
        assert r.json()["error"].startswith("malformed JSON in request body")
        r = await client.post("/api/stacks", headers=ADMIN)
        assert r.status_code == 422
        assert r.json()["detail"] == [{"field": "body", "message": "field required"}]
        r = await client.post("/api/stacks/1/pause", json={"reason": 5}, headers=ADMIN)
        assert r.status_code == 422
        r = await client.get("/api/stacks/1/ticks?limit=0")
        assert r.status_code == 422
        assert r.json()["detail"][0]["field"] == "query.limit"
        assert (await client.get("/api/stacks/1/ticks?limit=501")).status_code == 422
        r = await client.get("/api/stacks/abc")
        assert r.status_code == 422
        assert r.json()["detail"][0]["field"] == "path.stack_id"
        # Nothing was created by any of it.
        assert (await client.get("/api/stacks")).json() == []

    run(runtime, scenario)


def test_unknown_ids_and_routes_are_404(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        missing = {"error": "no stack with id 7"}
        for path in ("/api/stacks/7", "/api/stacks/7/ticks", "/api/stacks/7/memory",
                     "/api/stacks/7/messages", "/api/stacks/7/artifacts"):
            r = await client.get(path)
            assert (r.status_code, r.json()) == (404, missing), path
        for method, path in (("DELETE", "/api/stacks/7"), ("POST", "/api/stacks/7/play"),
                             ("POST", "/api/stacks/7/pause"), ("POST", "/api/stacks/7/tick")):
            r = await client.request(method, path, headers=ADMIN)
            assert (r.status_code, r.json()) == (404, missing), path
        r = await client.get("/api/ticks/99")
        assert (r.status_code, r.json()) == (404, {"error": "no tick with id 99"})
        r = await client.get("/api/nothing-here")
        assert r.status_code == 404
        assert r.json() == {"error": "no such route: GET /api/nothing-here"}
        r = await client.put("/api/stacks", headers=ADMIN)
        assert r.status_code == 405
        assert "not allowed" in r.json()["error"]

    run(runtime, scenario)


def test_an_unexpected_error_is_a_500_without_a_traceback(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("secret internals")

    async def scenario(client: httpx.AsyncClient) -> None:
        monkeypatch.setattr(runtime.db, "query", broken)
        with caplog.at_level(logging.ERROR, logger="tickwork.dashboard"):
            r = await client.get("/api/stacks")
        assert r.status_code == 500
        assert r.json() == {"error": "internal error"}
        assert "secret" not in r.text
        assert any("secret internals" in rec.exc_text for rec in caplog.records
                   if rec.exc_text)

    run(runtime, scenario)


# -- authentication -------------------------------------------------------------------------


def test_every_write_needs_the_admin_token(runtime: Runtime) -> None:
    async def main() -> None:
        async with api(runtime) as client:
            stack = await create(client)
        sid = stack["id"]
        writes: list[tuple[str, str, Any]] = [
            ("POST", "/api/stacks", {"name": "intruder"}),
            ("DELETE", f"/api/stacks/{sid}", None),
            ("POST", f"/api/stacks/{sid}/play", None),
            ("POST", f"/api/stacks/{sid}/pause", {"reason": "nope"}),
            ("POST", f"/api/stacks/{sid}/tick", None),
            ("POST", "/api/stacks/play-all", None),
            ("POST", "/api/stacks/pause-all", {"reason": "nope"}),
        ]
        credentials: list[tuple[dict[str, str], str]] = [
            ({}, "sign-in required: send Authorization: Bearer <admin token>"),
            ({"Authorization": "Bearer wrong-token"}, "invalid admin token"),
            ({"Authorization": "Bearer test-token-and-more"}, "invalid admin token"),
            ({"Authorization": "Basic dGVzdC10b2tlbg=="}, "malformed Authorization header"),
            ({"Authorization": "Bearer"}, "malformed Authorization header"),
        ]
        for method, path, body in writes:
            # A dashboard of its own for each write: five wrong tokens from one address
            # within a minute are throttled (tests/test_security_throttle.py).
            async with api(runtime) as client:
                for headers, message in credentials:
                    r = await client.request(method, path, json=body, headers=headers)
                    assert r.status_code == 401, (method, path, headers, r.text)
                    assert r.json()["error"].startswith(message), (method, path, r.text)
                    assert r.headers["www-authenticate"].startswith("Bearer")
        async with api(runtime) as client:
            # Authentication comes first: a broken body does not get a different answer.
            r = await client.post("/api/stacks", content=b"{oops",
                                  headers={"Content-Type": "application/json"})
            assert r.status_code == 401

            # Nothing changed.
            after = (await client.get("/api/stacks")).json()
        assert [(s["id"], s["execution_state"]) for s in after] == [(sid, "running")]
        assert after[0]["counts"]["queued"] == 1
        assert after[0]["last_tick"]["id"] == stack["last_tick"]["id"]

    asyncio.run(main())


def test_reading_is_open_to_visitors(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client)
        sid, tid = stack["id"], stack["last_tick"]["id"]
        for path in ("/api/stacks", f"/api/stacks/{sid}", f"/api/stacks/{sid}/ticks",
                     f"/api/stacks/{sid}/memory", f"/api/stacks/{sid}/messages",
                     f"/api/stacks/{sid}/artifacts", f"/api/ticks/{tid}", "/api/system",
                     "/livez", "/readyz", "/metrics", "/openapi.json"):
            r = await client.get(path)
            assert r.status_code == 200, (path, r.text)

    run(runtime, scenario)


# -- system ---------------------------------------------------------------------------------


def test_system_health_and_metrics(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        system = (await client.get("/api/system")).json()
        assert system["simulated"] is True  # the simulated model says what it is
        assert "simulated" in system["llm"]
        assert system["tick_interval"] == 10
        assert system["version"]
        assert set(TEAM) <= set(system["agents"])
        assert (await client.get("/livez")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).json() == {"status": "ok", "wakeups": "in-process"}

        await create(client, name="a")
        await create(client, name="b", paused=True)
        r = await client.get("/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        assert "# TYPE tickwork_queue_depth gauge" in r.text
        samples = dict(line.rsplit(" ", 1) for line in r.text.splitlines()
                       if line and not line.startswith("#"))
        assert all(name.startswith("tickwork_") for name in samples)
        assert float(samples['tickwork_stacks{state="running"}']) == 1
        assert float(samples['tickwork_stacks{state="paused"}']) == 1
        assert float(samples['tickwork_ticks{status="queued"}']) == 1
        assert float(samples['tickwork_ticks{status="succeeded"}']) == 0
        assert float(samples["tickwork_queue_depth"]) == 1
        assert any('simulated="true"' in name for name in samples)

    run(runtime, scenario)


def test_readyz_is_503_with_the_reason_when_the_database_is_away(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/readyz")).status_code == 200
        healthy = runtime.db.engine
        away = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none",
                             connect_args={"connect_timeout": 2})
        runtime.db.engine = away
        try:
            r = await client.get("/readyz")
        finally:
            runtime.db.engine = healthy
            away.dispose()
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unavailable"
        assert body["error"].startswith("database did not answer: ")
        assert "OperationalError" in body["error"]
        assert (await client.get("/livez")).status_code == 200
        assert (await client.get("/readyz")).status_code == 200

    run(runtime, scenario)


def test_openapi_documents_the_api(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        doc = (await client.get("/openapi.json")).json()
        paths = doc["paths"]
        for path in ("/api/stacks", "/api/stacks/{stack_id}", "/api/stacks/{stack_id}/pause",
                     "/api/stacks/{stack_id}/tick", "/api/stacks/{stack_id}/ticks",
                     "/api/ticks/{tick_id}", "/api/events", "/livez", "/readyz", "/metrics"):
            assert path in paths, path
        created = paths["/api/stacks"]["post"]
        assert created["security"] == [{"AdminToken": []}]
        schema = created["responses"]["201"]["content"]["application/json"]["schema"]
        assert schema["$ref"].endswith("/StackOut")
        assert "security" not in paths["/api/stacks"]["get"]
        assert "TickDetail" in doc["components"]["schemas"]

    run(runtime, scenario)
