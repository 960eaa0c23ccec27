"""`tickwork top --once`: one frame of the live view, read from the database in
TICKWORK_DATABASE_URL, next to whatever process ran the ticks.

The ticks run on the real clock here (the simulated model with no latency): `top` reads "the
last minute" against the wall clock, as it does beside a running `tickwork up`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from sqlalchemy import inspect
from typer.testing import CliRunner, Result

from orchestrator.cli import app
from orchestrator.runtime import Runtime
from schema.clock import SystemClock
from schema.db import Database
from tests.conftest import make_settings, wait_for
from tests.engine_helpers import new_stack

KEEP_ENV = {"TICKWORK_TEST_POSTGRES_URL", "TICKWORK_TEST_REDIS_URL", "TICKWORK_TEST_CHROMIUM",
            "TICKWORK_REQUIRE_SERVICES"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("TICKWORK_") and key not in KEEP_ENV:
            monkeypatch.delenv(key)
    monkeypatch.setenv("COLUMNS", "200")


def top(db_url: str, *args: str) -> Result:
    result = CliRunner().invoke(app, ["top", "--once", *args],
                                env={"TICKWORK_DATABASE_URL": db_url})
    assert "Traceback" not in result.output
    return result


def test_top_once_shows_stacks_throughput_and_providers(db_url: str) -> None:
    clock = SystemClock()
    rt = Runtime.build(make_settings(db_url), clock, env={})
    try:
        new_stack(rt.db, clock, "alpha")  # type: ignore[arg-type]
        new_stack(rt.db, clock, "[bold]beta[/bold]", paused=True)  # type: ignore[arg-type]

        async def run_start_tick() -> None:
            assert await rt.worker.claim_once()
            await wait_for(lambda: rt.worker.finished == 1, what="alpha's tick to finish")

        asyncio.run(run_start_tick())
    finally:
        rt.close()

    result = top(db_url)
    assert result.exit_code == 0, result.output
    out = result.output
    lines = out.splitlines()
    alpha = next(ln for ln in lines if " alpha " in ln)
    assert "running" in alpha and "succeeded" in alpha
    beta = next(ln for ln in lines if "[bold]beta[/bold]" in ln)  # markup shown as text
    assert "paused" in beta
    assert "1 in the last 60 s" in out
    assert "0 queued, 0 running" in out
    sim = next(ln for ln in lines if " sim " in ln)
    assert "4" in sim.split() and "100%" in sim  # the four steps' attempts, all ok
    assert "tickwork stacks pause ID" in out and "tickwork stacks play ID" in out


def test_top_once_with_no_stacks_says_how_to_make_one(db: Database, db_url: str) -> None:
    result = top(db_url)
    assert result.exit_code == 0, result.output
    assert "tickwork stacks create NAME" in result.output
    assert "no LLM attempt in the last 60 s" in result.output


def test_top_shows_only_the_first_stacks_with_a_limit(db: Database, db_url: str) -> None:
    for name in ("one", "two", "three"):
        new_stack(db, SystemClock(), name, paused=True)  # type: ignore[arg-type]
    out = top(db_url, "--limit", "2").output
    assert " one " in out and " two " in out and " three " not in out
    assert "and 1 more" in out


def test_top_is_read_only(tmp_path: Path) -> None:
    """On a database that was never migrated, top says so and creates nothing."""
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = top(url)
    assert result.exit_code == 1
    assert "Error:" in result.stderr
    empty = Database(url)
    try:
        assert inspect(empty.engine).get_table_names() == []
    finally:
        empty.close()
