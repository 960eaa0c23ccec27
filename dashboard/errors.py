"""Every failure the API answers is JSON with an `error` a person can read; never a traceback.

- a `UserError` from the engine: its status code and message (a 422 also has the `detail`
  every 422 has, naming the body);
- a request that does not validate: 422 with one entry per field at fault;
- malformed JSON, or a body that is not even text: 422 saying where the JSON broke;
- no credentials, or wrong ones: 401 with a WWW-Authenticate challenge;
- an unknown route: 404; a method the route does not have: 405 with every method it has in
  `Allow`;
- anything else: 500 "internal error", and the traceback goes to the log only.

Every route documents the error answers it gives (`responses`), and the API is fuzzed against
those declarations (tests/test_fuzz_api.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dashboard.auth import Unauthorized
from orchestrator.errors import UserError
from schema.models import ErrorOut

log = logging.getLogger("tickwork.dashboard")


class FieldError(BaseModel):
    field: str
    message: str


class ValidationErrorOut(BaseModel):
    error: str
    detail: list[FieldError]


RETRY_AFTER = {"Retry-After": {"description": "seconds until the address may try again",
                               "schema": {"type": "integer", "minimum": 1}}}
# What FastAPI says when a body cannot even be read as text (it would answer 400).
_UNREADABLE_BODY = "There was an error parsing the body"


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route documents in OpenAPI."""
    declared: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        declared[code] = {"model": ValidationErrorOut if code == 422 else ErrorOut}
        if code == 429:
            declared[code].update(description="too many failed sign-ins from this address",
                                  headers=RETRY_AFTER)
    return declared


def _message(err: dict[str, Any]) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "field required"
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg


def _field(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc) or "request"


def validation_body(errors: Sequence[Any]) -> tuple[str, list[FieldError]]:
    detail = [FieldError(field=_field(e.get("loc", ())), message=_message(e)) for e in errors]
    for e in errors:
        if e.get("type") == "json_invalid":
            loc = e.get("loc", ())
            where = f" at character {loc[-1]}" if len(loc) > 1 else ""
            reason = e.get("ctx", {}).get("error", "not JSON")
            return f"malformed JSON in request body: {reason}{where}", [
                FieldError(field="body", message=f"{reason}{where}")]
    return "invalid request", detail


HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
MethodTable = list[tuple[re.Pattern[str], frozenset[str]]]


def method_table(doc: dict[str, Any]) -> MethodTable:
    """Each documented path (as a pattern: an integer parameter matches digits only) with the
    methods documented on it."""
    table: MethodTable = []
    for template, item in doc.get("paths", {}).items():
        ops = {k: v for k, v in item.items() if k in HTTP_METHODS}
        kinds = {p["name"]: p.get("schema", {}).get("type")
                 for op in ops.values() for p in op.get("parameters", []) if p["in"] == "path"}
        parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
        pattern = "".join(
            re.escape(part) if i % 2 == 0
            else ("[0-9]+" if kinds.get(part) == "integer" else "[^/]+")
            for i, part in enumerate(parts))
        table.append((re.compile(pattern), frozenset(m.upper() for m in ops)))
    return table


def allowed_methods(request: Request) -> str | None:
    """Every method the API documents at this path (several routes may share one path: the
    open GET and the guarded POST of /api/stacks), or None for a path it does not document."""
    app = request.app
    table: MethodTable | None = getattr(app.state, "method_table", None)
    if table is None:
        table = app.state.method_table = method_table(app.openapi())
    methods = {m for pattern, ms in table if pattern.fullmatch(request.url.path) for m in ms}
    return ", ".join(sorted(methods)) if methods else None


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None
          ) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the JSON error answers on `app`."""

    @app.exception_handler(UserError)
    async def _user_error(_: Request, exc: UserError) -> JSONResponse:
        body: dict[str, Any] = {"error": str(exc)}
        if exc.status_code == 422:  # a rule the schema cannot state (the beat, the agents)
            body["detail"] = [FieldError(field="body", message=str(exc)).model_dump()]
        return _json(exc.status_code, body)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return _json(401, {"error": exc.message}, {"WWW-Authenticate": exc.challenge})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        allowed = allowed_methods(request)
        if allowed is not None and request.method not in allowed.split(", "):
            # GET /api/stacks/play-all reached GET /api/stacks/{stack_id} with a stack id
            # that is no number; the path is play-all's, which has no GET.
            return _json(405, {"error": f"method {request.method} not allowed on "
                                        f"{request.url.path}"}, {"Allow": allowed})
        error, detail = validation_body(exc.errors())
        return _json(422, {"error": error, "detail": [d.model_dump() for d in detail]})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
            documented = allowed_methods(request)
            if documented is not None:  # else the route's own answer (the pages, sign-in)
                headers["Allow"] = documented
        elif exc.status_code == 400 and exc.detail == _UNREADABLE_BODY:
            reason = ("not UTF-8 text" if isinstance(exc.__cause__, UnicodeDecodeError)
                      else "unreadable")
            return _json(422, {"error": f"malformed JSON in request body: {reason}",
                               "detail": [{"field": "body", "message": reason}]})
        else:
            message = str(exc.detail)
        return _json(exc.status_code, {"error": message}, headers)

    app.add_middleware(CatchAll)


class CatchAll:
    """Turns an unexpected exception into a 500 JSON answer and logs the traceback.

    Registered as middleware (inside Starlette's own error middleware, which would re-raise),
    so the server sees a normal response. A failure after the response started cannot be
    answered any more and is re-raised for the server to close the connection.
    """

    BODY = orjson.dumps({"error": "internal error"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error answering %s %s", scope.get("method"),
                          scope.get("path"))
            if started:
                raise
            await send({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(self.BODY)).encode()),
            ]})
            await send({"type": "http.response.body", "body": self.BODY})
