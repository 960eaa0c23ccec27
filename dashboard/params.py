"""Route parameters whose OpenAPI description says exactly what the route accepts."""

from __future__ import annotations

from pydantic import WithJsonSchema


def optional_int(minimum: int, maximum: int) -> WithJsonSchema:
    """The document's schema of an optional integer parameter: an integer within its bounds
    that may be left out. (Typed `int | None`, it would read "an integer or null", and a query
    parameter or a header cannot carry null.) The parameter's own `ge`/`le` still validate."""
    return WithJsonSchema({"type": "integer", "minimum": minimum, "maximum": maximum})
