"""The API answers as its OpenAPI document says, case by case (what fuzzing it found; the fuzz
itself is tests/test_fuzz_api.py): methods a path lacks are 405 with the right Allow, every 422
has its `detail`, a body that is not text is a 422 like any malformed JSON, a tick list's
cursor is refused when out of range, optional parameters are integers that may be left out,
text the database cannot hold is refused, and what a valid document allows is accepted."""

from __future__ import annotations

from typing import Any

import httpx

from orchestrator.runtime import Runtime
from schema.clock import FakeClock
from tests.test_api import ADMIN, create, run, run_queued_ticks


def test_a_method_a_path_lacks_is_405_listing_every_method_it_has(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        await create(client)
        for method, path, allow in (
                ("OPTIONS", "/api/stacks", "GET, POST"),  # GET open, POST guarded: both
                ("PATCH", "/api/stacks/1", "DELETE, GET"),
                ("OPTIONS", "/api/stacks/play-all", "POST"),
                # Not GET /api/stacks/{stack_id} with a stack id that is no number: 405.
                ("GET", "/api/stacks/play-all", "POST"),
                ("DELETE", "/api/stacks/pause-all", "POST"),
                ("GET", "/api/stacks/1/play", "POST"),
                ("PUT", "/api/ticks/1", "GET")):
            r = await client.request(method, path, headers=ADMIN)
            assert r.status_code == 405, (method, path, r.text)
            assert r.headers["allow"] == allow, (method, path)
            assert r.json() == {"error": f"method {method} not allowed on {path}"}
        # A stack id that is no number, where the path has no other route: still a 422.
        r = await client.get("/api/stacks/abc")
        assert r.status_code == 422
        assert r.json()["detail"][0]["field"] == "path.stack_id"

    run(runtime, scenario)


def test_every_422_has_a_detail_naming_what_is_at_fault(runtime: Runtime) -> None:
    """Rules the document cannot state (the beat, the workers' agents) answer in the same shape
    as the ones it states."""
    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.post("/api/stacks", json={"name": "x", "interval_s": 15},
                              headers=ADMIN)
        assert r.status_code == 422
        message = "a stack's interval must be a multiple of the beat interval, which is 10 s"
        assert r.json()["error"].startswith(message)
        assert r.json()["detail"] == [{"field": "body", "message": r.json()["error"]}]
        r = await client.post("/api/stacks", json={"name": "x", "team": ["ghost"]},
                              headers=ADMIN)
        assert r.status_code == 422
        assert "ghost" in r.json()["detail"][0]["message"]
        stack = await create(client)
        r = await client.put(f"/api/stacks/{stack['id']}/team", json={"team": ["ghost"]},
                             headers=ADMIN)
        assert (r.status_code, r.json()["detail"][0]["field"]) == (422, "body")

    run(runtime, scenario)


def test_a_body_that_is_not_text_is_a_422_like_malformed_json(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.post("/api/stacks", content=b'{"name": "\xff\xfe"}',
                              headers={**ADMIN, "Content-Type": "application/json"})
        assert r.status_code == 422, r.text  # was FastAPI's undocumented 400
        assert r.json() == {"error": "malformed JSON in request body: not UTF-8 text",
                            "detail": [{"field": "body", "message": "not UTF-8 text"}]}
        # Not said to be JSON (no type, or another): the body is no object.
        for headers in ({}, {"Content-Type": "text/plain"}):
            r = await client.post("/api/stacks", content=b'{"name": "\xff\xfe"}',
                                  headers={**ADMIN, **headers})
            assert r.status_code == 422, (headers, r.text)
            assert r.json()["detail"][0]["field"] == "body"
        assert (await client.get("/api/stacks")).json() == []

    run(runtime, scenario)


def test_a_tick_list_pages_back_with_before_and_refuses_a_cursor_out_of_range(
        runtime: Runtime, clock: FakeClock) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client)
        for _ in range(2):  # two more slots: three ticks
            await run_queued_ticks(runtime)
            clock.set(clock.now() - clock.now() % 10 + 10)
            await runtime.beat.fire()
        sid = stack["id"]
        every = [t["id"] for t in (await client.get(f"/api/stacks/{sid}/ticks")).json()]
        assert len(every) == 3 and every == sorted(every, reverse=True)
        first = [t["id"] for t in (await client.get(
            f"/api/stacks/{sid}/ticks?limit=2")).json()]
        rest = [t["id"] for t in (await client.get(
            f"/api/stacks/{sid}/ticks?limit=2&before={first[-1]}")).json()]
        assert first + rest == every
        assert (await client.get(f"/api/stacks/{sid}/ticks?before={every[-1]}")).json() == []
        for bad in ("-5", "0", "9223372036854775808", "soon"):
            r = await client.get(f"/api/stacks/{sid}/ticks?before={bad}")
            assert r.status_code == 422, (bad, r.text)
            assert r.json()["detail"][0]["field"] == "query.before"

    run(runtime, scenario)


def test_optional_parameters_are_documented_as_integers_that_may_be_left_out(
        runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        doc = (await client.get("/openapi.json")).json()
        params = {(path, p["name"]): p for path, item in doc["paths"].items()
                  for op in item.values() for p in op.get("parameters", [])}
        for key, bounds in ((("/api/events", "after"), (0, 2**63 - 1)),
                            (("/api/events", "Last-Event-ID"), (0, 2**63 - 1)),
                            (("/api/stacks/{stack_id}/ticks", "before"), (1, 2**63 - 1))):
            assert params[key]["required"] is False
            assert params[key]["schema"]["type"] == "integer", key
            assert (params[key]["schema"]["minimum"],
                    params[key]["schema"]["maximum"]) == bounds, key
        # No parameter anywhere says "or null": none can carry it.
        assert all("anyOf" not in p["schema"] for p in params.values())
        r = await client.get("/api/events", headers={"Last-Event-ID": "null"})
        assert r.status_code == 422
        assert r.json()["detail"][0]["field"] == "header.Last-Event-ID"
        assert (await client.get("/api/events?after=-1")).status_code == 422

    run(runtime, scenario)


def test_text_a_database_cannot_hold_is_refused(runtime: Runtime) -> None:
    """PostgreSQL's text holds no NUL character: a goal or pause reason with one was a 500."""
    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.post("/api/stacks", json={"name": "x", "goal": "a\x00b"},
                              headers=ADMIN)
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == [{"field": "body.goal",
                                       "message": "must not contain NUL characters"}]
        stack = await create(client, goal="line one\nline two\ttabbed")
        assert stack["goal"] == "line one\nline two\ttabbed"
        r = await client.post(f"/api/stacks/{stack['id']}/pause", json={"reason": "\x00"},
                              headers=ADMIN)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["field"] == "body.reason"
        assert (await client.get(f"/api/stacks/{stack['id']}")
                ).json()["execution_state"] == "running"

    run(runtime, scenario)


def test_what_the_document_allows_is_accepted(runtime: Runtime) -> None:
    """JSON Schema's integers include 20.0; the document states the agent-name and stack-name
    rules, so what it calls valid is valid."""
    async def scenario(client: httpx.AsyncClient) -> None:
        r = await client.post("/api/stacks", headers=ADMIN, json={
            "name": "whole", "interval_s": 20.0, "budget_tokens_per_day": 1000.0})
        assert r.status_code == 201, r.text
        assert (r.json()["interval_s"], r.json()["budget"]["tokens_per_day"]) == (20, 1000)
        r = await client.put(f"/api/stacks/{r.json()['id']}/budget", headers=ADMIN,
                             json={"tokens_per_day": 5.0})
        assert r.status_code == 200, r.text
        for body, field in (({"name": "x", "interval_s": 20.5}, "body.interval_s"),
                            ({"name": "x", "interval_s": "20"}, "body.interval_s"),
                            ({"name": "x", "team": ["plan ner"]}, "body.team")):
            r = await client.post("/api/stacks", headers=ADMIN, json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["detail"][0]["field"] == field

        doc = (await client.get("/openapi.json")).json()
        create_schema: dict[str, Any] = doc["components"]["schemas"]["StackCreate"]
        team = create_schema["properties"]["team"]["anyOf"][0]
        assert team["items"] == {"type": "string", "pattern": "^[a-z][a-z0-9_\\-]{0,99}$"}
        assert create_schema["properties"]["name"]["pattern"] == "^[^\\u0000-\\u001f\\u007f]*$"

    run(runtime, scenario)


def test_every_write_documents_401_and_429_with_retry_after(runtime: Runtime) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        doc = (await client.get("/openapi.json")).json()
        writes = [(path, method, op) for path, item in doc["paths"].items()
                  for method, op in item.items() if method in ("post", "put", "delete")]
        assert len(writes) == 9
        for path, method, op in writes:
            assert op["security"] == [{"AdminToken": []}], (method, path)
            assert {"401", "429"} <= set(op["responses"]), (method, path)
            assert "Retry-After" in op["responses"]["429"]["headers"], (method, path)
        play = doc["paths"]["/api/stacks/{stack_id}/play"]["post"]["responses"]
        assert {"404", "409", "422"} <= set(play)

    run(runtime, scenario)
