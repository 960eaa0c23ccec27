"""Who may change state: reading is open, every write needs the admin's credentials.

An `Authenticator` asks its checks in turn; the first that recognises the request names the
principal. A check returns None when the request carries none of its credentials, and raises
`Unauthorized` when it carries them but they are wrong. The bearer token
(`Authorization: Bearer <admin token>`) is checked first; `create_app` appends the signed-in
page's check (`dashboard.session`: a session cookie plus its CSRF header).

Write routes are guarded by their route class (`Authenticator.route_class`), so the check runs
before the request body is even read: an unauthenticated request learns nothing else.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

SIGN_IN_REQUIRED = "sign-in required: send Authorization: Bearer <admin token>"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    via: str  # which check recognised the request: "bearer" or "session"


class Unauthorized(Exception):
    """The request may not change state; answered with 401 and a WWW-Authenticate header."""

    def __init__(self, message: str = SIGN_IN_REQUIRED, *, challenge: str = "Bearer") -> None:
        super().__init__(message)
        self.message = message
        self.challenge = challenge


Check = Callable[[Request], Principal | None]

# For the OpenAPI document only: enforcement is the route class, which runs first.
bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="AdminToken",
    description="Authorization: Bearer <TICKWORK_ADMIN_TOKEN>; needed by every write.",
)


class Authenticator:
    def __init__(self, admin_token: str) -> None:
        if not admin_token:
            raise ValueError("an admin token is required")
        self._token = admin_token.encode()
        self.checks: list[Check] = [self.bearer]

    def bearer(self, request: Request) -> Principal | None:
        header = request.headers.get("authorization")
        if header is None:
            return None
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("malformed Authorization header: expected 'Bearer <admin token>'",
                               challenge='Bearer error="invalid_request"')
        if not secrets.compare_digest(token.encode(), self._token):
            raise Unauthorized("invalid admin token", challenge='Bearer error="invalid_token"')
        return Principal("admin", "bearer")

    def authenticate(self, request: Request) -> Principal:
        for check in self.checks:
            principal = check(request)
            if principal is not None:
                return principal
        raise Unauthorized()

    @property
    def dependency(self) -> Any:
        """Declares the bearer scheme on a router's routes in the OpenAPI document."""
        return Security(bearer_scheme)

    def route_class(self) -> type[APIRoute]:
        """A route class whose handler authenticates before anything else happens."""
        auth = self

        class AdminRoute(APIRoute):
            def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
                handler = super().get_route_handler()

                async def guarded(request: Request) -> Response:
                    request.state.principal = auth.authenticate(request)
                    return await handler(request)

                return guarded

        return AdminRoute
