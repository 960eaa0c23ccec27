"""Where the real services are, and whether a test may skip when one is missing.

Tests that need PostgreSQL, Redis or Chromium run against the real thing. They skip only when
TICKWORK_REQUIRE_SERVICES is unset and the service does not answer; with it set, a missing
service fails the run.
"""

from __future__ import annotations

import os
import shutil
import socket

import pytest

POSTGRES_URL = os.environ.get("TICKWORK_TEST_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TICKWORK_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
CHROMIUM = os.environ.get("TICKWORK_TEST_CHROMIUM", "/usr/bin/chromium")


def required() -> bool:
    return os.environ.get("TICKWORK_REQUIRE_SERVICES", "") not in ("", "0", "false")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def need(service: str) -> None:
    """Skip (or, with TICKWORK_REQUIRE_SERVICES set, fail) unless `service` is there."""
    present = {
        "postgres": lambda: _answers("127.0.0.1", 5432),
        "redis": lambda: _answers("127.0.0.1", 6379),
        "chromium": lambda: shutil.which(CHROMIUM) is not None,
    }[service]()
    if present:
        return
    if required():
        pytest.fail(f"{service} is required (TICKWORK_REQUIRE_SERVICES is set) but missing")
    pytest.skip(f"{service} is not available")
