"""Every failure the API answers is JSON with an `error` a person can read; never a traceback.

- a `UserError` from the engine: its status code and message;
- a request that does not validate: 422 with one entry per field at fault;
- malformed JSON: 422 saying where the JSON broke;
- no credentials, or wrong ones: 401 with a WWW-Authenticate challenge;
- an unknown route or method: 404 / 405;
- anything else: 500 "internal error", and the traceback goes to the log only.
"""

from __future__ import annotations

import logging
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


def responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route documents in OpenAPI."""
    return {code: {"model": ValidationErrorOut if code == 422 else ErrorOut} for code in codes}


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


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None
          ) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Register the JSON error answers on `app`."""

    @app.exception_handler(UserError)
    async def _user_error(_: Request, exc: UserError) -> JSONResponse:
        return _json(exc.status_code, {"error": str(exc)})

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, exc: Unauthorized) -> JSONResponse:
        return _json(401, {"error": exc.message}, {"WWW-Authenticate": exc.challenge})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        error, detail = validation_body(exc.errors())
        return _json(422, {"error": error, "detail": [d.model_dump() for d in detail]})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404 and exc.detail == "Not Found":
            message = f"no such route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return _json(exc.status_code, {"error": message}, dict(exc.headers or {}))

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
