"""The JSON API fuzzed against its own OpenAPI document (schemathesis, in-process over ASGI).

Every documented route and method is called with generated requests, valid and invalid, once
without credentials and once with the admin token, on SQLite and on PostgreSQL: no answer may
be a server error, and every answer's status, headers and body must be the ones the document
declares. Hypothesis runs derandomized (the same examples every run), so a failure replays as
it is; its report gives the request as a curl command.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import shutdown_lifespans
from sqlalchemy import create_engine, text
from starlette.types import ASGIApp, Receive, Scope, Send

from dashboard import throttle
from dashboard.api import create_app
from orchestrator.runtime import Runtime
from schema.clock import FakeClock
from schema.db import normalise_url
from tests.conftest import make_settings
from tests.services import POSTGRES_URL, need

ADMIN = {"Authorization": "Bearer test-token"}
# Per route and method, besides the coverage phase's boundary cases: enough for CI in well
# under a minute; set TICKWORK_FUZZ_EXAMPLES=500 for a longer search.
EXAMPLES = int(os.environ.get("TICKWORK_FUZZ_EXAMPLES", "15"))

CONFIG = SchemathesisConfig.from_dict({
    # Reports show the request as sent but for the credentials (budget_tokens_per_day is no
    # secret, whatever its name).
    "output": {"sanitization": {
        "keys-to-sanitize": ["authorization", "cookie", "set-cookie", "x-csrf-token"],
        "sensitive-markers": ["authoriz", "cookie", "csrf"]}},
    # A team may name, in the document's terms, any agent; which exist is the running
    # workers' business, and a team naming one they do not know is refused with 422.
    "operations": [
        {"include-name": name, "checks": {"positive_data_acceptance": {
            "expected-statuses": ["2xx", "401", "404", "409", "422", "429"]}}}
        for name in ("POST /api/stacks", "PUT /api/stacks/{stack_id}/team")],
})


def _runtime(db_url: str) -> Runtime:
    # A one-second beat: every whole interval is a multiple of it, so the only rule a valid
    # request can still break is naming an agent the workers do not know.
    return Runtime.build(make_settings(db_url, tick_interval=1), FakeClock(1_800_000_000.0),
                         env={})


class CurrentApp:
    """What the schema sends its requests to: the app of the backend under test."""

    def __init__(self) -> None:
        self.app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self.app is not None, "no app under test"
        await self.app(scope, receive, send)


# The document comes from an app of its own, made here; the apps under test are made by the
# `backend` fixture when the tests run.
_doc_dir = Path(tempfile.mkdtemp(prefix="tickwork-openapi-"))
_doc_runtime = _runtime(f"sqlite:///{_doc_dir / 'tickwork.db'}")
DOCUMENT = create_app(_doc_runtime).openapi()
_doc_runtime.close()
shutil.rmtree(_doc_dir, ignore_errors=True)

UNDER_TEST = CurrentApp()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)
schema.app = UNDER_TEST


@pytest.fixture(scope="module")
def _postgres_url() -> Iterator[str]:
    need("postgres")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(POSTGRES_URL))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {name}"))
    try:
        sep = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {name} CASCADE"))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'tickwork.db'}"
    else:
        url = request.getfixturevalue("_postgres_url")
    rt = _runtime(url)
    # The generated requests include wrong tokens: past five the throttle would answer 429 to
    # every write from the test client, hiding what the routes do.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(throttle, "FAILURES", 1_000_000)
        UNDER_TEST.app = create_app(rt)
    try:
        yield request.param
    finally:
        shutdown_lifespans()  # the app's event tailer, started by its first request
        UNDER_TEST.app = None
        rt.close()


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, print_blob=True,
          suppress_health_check=list(HealthCheck))
@pytest.mark.usefixtures("backend")
@pytest.mark.timeout(60 + EXAMPLES)  # an event stream is read for 0.1 s a call
def test_every_answer_is_documented_and_none_is_a_server_error(case: Any) -> None:
    # An event stream never ends: it is read for a moment, its events checked.
    timeout = 0.1 if case.operation.path == "/api/events" else 30
    case.call_and_validate(timeout=timeout)
    case.call_and_validate(headers=ADMIN, timeout=timeout)
