"""The `tickwork` admin commands, on SQLite and PostgreSQL: what they write and what they say.

Each command runs through typer's CliRunner against the database in TICKWORK_DATABASE_URL,
exactly as a user runs it; the database is then read back to check what changed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import TypeAdapter
from sqlalchemy import func, select, update

from agents.registry import DEFAULT_TEAM
from orchestrator.runtime import Runtime
from schema import read
from schema import tables as t
from schema.db import Database
from schema.migrate import current, head
from schema.models import StackOut, TickDetail, TickSummary
from tests.cli_helpers import Cli, clean_env, cli
from tests.conftest import make_settings, wait_for

__all__ = ["clean_env", "cli"]  # fixtures

def _stack(db: Database, stack_id: int) -> dict[str, Any]:
    with db.read() as conn:
        return dict(conn.execute(select(t.stacks).where(t.stacks.c.id == stack_id))
                    .mappings().one())


def _ticks(db: Database, stack_id: int) -> list[dict[str, Any]]:
    with db.read() as conn:
        return [dict(r) for r in conn.execute(select(t.ticks).where(t.ticks.c.stack_id == stack_id)
                                              .order_by(t.ticks.c.id)).mappings()]


def _stack_count(db: Database) -> int:
    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(t.stacks)).scalar_one())


def _finish_ticks(db: Database) -> None:
    """The queued ticks ran (as a worker would have finished them)."""
    with db.write() as conn:
        conn.execute(update(t.ticks).where(t.ticks.c.status == "queued")
                     .values(status="succeeded", started_at=t.ticks.c.queued_at,
                             finished_at=t.ticks.c.queued_at + 0.5))


def _idle(conn: Any) -> bool:
    return conn.execute(select(func.count()).select_from(t.ticks)
                        .where(t.ticks.c.status.in_(t.ACTIVE))).scalar_one() == 0


def _run_queued_ticks(db_url: str) -> None:
    """Let a real worker run every queued tick to the end (simulated model, no latency)."""
    async def go() -> None:
        rt = Runtime.build(make_settings(db_url), env={})
        try:
            await rt.start(beat=False, worker=True, scheduler=False)
            try:
                await wait_for(lambda: rt.db.query(_idle), 20, "the queued ticks to finish")
            finally:
                await rt.stop()
        finally:
            rt.close()

    asyncio.run(go())


# -- the round trip -----------------------------------------------------------------------


def test_create_list_and_show(cli: Cli, db: Database) -> None:
    out = cli("stacks", "create", "alpha", "--goal", "write a haiku").output
    assert "created stack 1 'alpha'" in out
    row = _stack(db, 1)
    assert (row["name"], row["goal"], row["execution_state"]) == ("alpha", "write a haiku",
                                                                  "running")
    assert [(tk["trigger"], tk["status"]) for tk in _ticks(db, 1)] == [("start", "queued")]

    cli("stacks", "create", "beta", "--paused", "--team", "planner, reviewer", "--interval", "30")
    beta = _stack(db, 2)
    assert beta["execution_state"] == "paused"
    assert (beta["interval_s"], beta["team"]) == (30, '["planner","reviewer"]')
    assert _ticks(db, 2) == []

    listed = cli("stacks", "list").output
    for text in ("alpha", "running", "beta", "paused", "created paused", "30 s"):
        assert text in listed

    shown = cli("stacks", "show", "2").output
    for text in ("stack 2: beta", "paused", "planner → reviewer", "30 s"):
        assert text in shown
    assert "write a haiku" in cli("stacks", "show", "1").output


def test_json_output_is_the_api_shape(cli: Cli, db: Database) -> None:
    created = StackOut.model_validate_json(cli("stacks", "create", "alpha", "--json").stdout)
    assert (created.id, created.name, created.execution_state) == (1, "alpha", "running")
    cli("stacks", "create", "beta", "--paused")

    listed = TypeAdapter(list[StackOut]).validate_json(cli("stacks", "list", "--json").stdout)
    with db.read() as conn:
        api = read.list_stacks(conn, 10, DEFAULT_TEAM)
    assert [s.model_dump(mode="json") for s in listed] == [s.model_dump(mode="json") for s in api]
    assert listed[0].last_tick is not None and listed[0].counts.queued == 1

    shown = TypeAdapter(dict[str, Any]).validate_json(cli("stacks", "show", "1", "--json").stdout)
    assert StackOut.model_validate(shown).model_dump(mode="json") == api[0].model_dump(mode="json")
    assert [tk["trigger"] for tk in shown["ticks"]] == ["start"]
    assert shown["memory"] == shown["messages"] == shown["artifacts"] == []

    ticks = TypeAdapter(list[TickSummary]).validate_json(
        cli("ticks", "list", "1", "--json").stdout)
    assert [(tk.stack_id, tk.status, tk.trigger) for tk in ticks] == [(1, "queued", "start")]


def test_pause_play_and_delete(cli: Cli, db: Database) -> None:
    cli("stacks", "create", "alpha")
    cli("stacks", "create", "beta")

    out = cli("stacks", "pause", "1", "--reason", "out to lunch").output
    assert "paused (out to lunch)" in out
    alpha = _stack(db, 1)
    assert (alpha["execution_state"], alpha["pause_reason"]) == ("paused", "out to lunch")
    assert [tk["status"] for tk in _ticks(db, 1)] == ["cancelled"]  # its queued tick
    assert _stack(db, 2)["execution_state"] == "running"
    assert "out to lunch" in cli("stacks", "list").output

    cli("stacks", "play", "1")
    alpha = _stack(db, 1)
    assert (alpha["execution_state"], alpha["pause_reason"]) == ("running", None)

    assert "2 stack(s) paused" in cli("stacks", "pause", "--all").output
    assert {_stack(db, i)["execution_state"] for i in (1, 2)} == {"paused"}
    assert not any(tk["status"] == "queued" for i in (1, 2) for tk in _ticks(db, i))

    assert "2 stack(s) set running" in cli("stacks", "play", "--all").output
    assert {_stack(db, i)["execution_state"] for i in (1, 2)} == {"running"}

    assert "deleted stack 1 'alpha'" in cli("stacks", "delete", "1").output
    assert _stack(db, 1)["deleted_at"] is not None
    assert _ticks(db, 1)[-1]["status"] == "cancelled"
    listed = cli("stacks", "list").output
    assert "alpha" not in listed and "beta" in listed
    assert "no stack with id 1" in cli("stacks", "show", "1", code=1).stderr
    # the name is free again
    cli("stacks", "create", "alpha")


def test_tick_now_queues_a_manual_tick(cli: Cli, db: Database) -> None:
    cli("stacks", "create", "alpha", "--paused")
    assert "play it first" in cli("stacks", "tick", "1", code=1).stderr
    cli("stacks", "play", "1")
    assert "already has a tick queued or running" in cli("stacks", "tick", "1", code=1).stderr

    _finish_ticks(db)
    out = cli("stacks", "tick", "1").output
    manual = _ticks(db, 1)[-1]
    assert (manual["trigger"], manual["status"]) == ("manual", "queued")
    assert f"queued tick {manual['id']} for stack 1" in out

    _finish_ticks(db)
    tick = TickSummary.model_validate_json(cli("stacks", "tick", "1", "--json").stdout)
    assert (tick.stack_id, tick.trigger, tick.status) == (1, "manual", "queued")


def test_ticks_show_the_trace(cli: Cli, db: Database, db_url: str) -> None:
    cli("stacks", "create", "alpha", "--goal", "ship the launch post")
    _run_queued_ticks(db_url)
    (tick,) = _ticks(db, 1)
    assert tick["status"] == "succeeded"

    listed = cli("ticks", "list", "1").output
    assert str(tick["id"]) in listed and "succeeded" in listed

    shown = cli("ticks", "show", str(tick["id"])).output
    for agent in DEFAULT_TEAM:
        assert agent in shown
    assert "sim (simulated)" in shown
    assert "[simulated]" in shown  # the agents' own words, printed as written
    with db.read() as conn:
        detail = read.get_tick(conn, tick["id"], DEFAULT_TEAM)
        messages = read.messages(conn, 1)
    assert detail is not None
    assert [s.status for s in detail.steps] == ["succeeded"] * 4

    parsed = TickDetail.model_validate_json(cli("ticks", "show", str(tick["id"]), "--json").stdout)
    assert parsed.model_dump(mode="json") == detail.model_dump(mode="json")
    assert [s.agent for s in parsed.steps] == list(DEFAULT_TEAM)
    assert {a.provider for s in parsed.steps for a in s.attempts} == {"sim"}

    stack = cli("stacks", "show", "1").output
    assert "latest messages" in stack and messages[0].body in stack
    assert "memory" in stack and "latest artifacts" in stack


# -- errors: one readable line, the right exit code, no traceback ---------------------------


def test_duplicate_name(cli: Cli, db: Database) -> None:
    cli("stacks", "create", "alpha")
    err = cli("stacks", "create", "alpha", code=1).stderr
    assert "a stack named 'alpha' already exists" in err
    assert _stack_count(db) == 1


@pytest.mark.parametrize("args, message", [
    (["stacks", "show", "42"], "no stack with id 42"),
    (["stacks", "pause", "42"], "no stack with id 42"),
    (["stacks", "play", "42"], "no stack with id 42"),
    (["stacks", "delete", "42"], "no stack with id 42"),
    (["stacks", "tick", "42"], "no stack with id 42"),
    (["ticks", "list", "42"], "no stack with id 42"),
    (["ticks", "show", "42"], "no tick with id 42"),
])
def test_unknown_id(cli: Cli, db: Database, args: list[str], message: str) -> None:
    err = cli(*args, code=1).stderr
    assert f"Error: {message}" in err


def test_interval_must_be_a_multiple_of_the_beat(cli: Cli, db: Database) -> None:
    err = cli("stacks", "create", "alpha", "--interval", "15", code=1).stderr
    assert ("a stack's interval must be a multiple of the beat interval, which is 10 s: 15 s "
            "is not (10 s or 20 s would be)") in err
    assert _stack_count(db) == 0
    # while no beat has recorded its interval, the beat comes from TICKWORK_TICK_INTERVAL
    cli("stacks", "create", "alpha", "--interval", "15", env={"TICKWORK_TICK_INTERVAL": "5"})
    assert _stack(db, 1)["interval_s"] == 15


def test_unknown_agent(cli: Cli, db: Database) -> None:
    err = cli("stacks", "create", "alpha", "--team", "planner,ghost", code=1).stderr
    assert "unknown agent(s) ghost" in err and "known: builder" in err
    assert _stack_count(db) == 0


@pytest.mark.parametrize("args, message", [
    (["stacks", "create", "  "], "NAME: String should have at least 1 character"),
    (["stacks", "create", "x", "--team", "Planner"], "--team: 'Planner' is not an agent name"),
    (["stacks", "create", "x", "--budget-usd", "0"], "--budget-usd: Input should be greater than"),
])
def test_invalid_input_names_the_option(cli: Cli, db: Database, args: list[str],
                                        message: str) -> None:
    assert message in cli(*args, code=1).stderr
    assert _stack_count(db) == 0


@pytest.mark.parametrize("command", ["pause", "play"])
@pytest.mark.parametrize("args", [[], ["1", "--all"]])
def test_play_pause_need_an_id_or_all(cli: Cli, db: Database, command: str,
                                      args: list[str]) -> None:
    cli("stacks", "create", "alpha")
    err = cli("stacks", command, *args, code=2).stderr
    assert "give a stack ID" in err and "--all" in err
    assert _stack(db, 1)["execution_state"] == "running"


def test_id_must_be_a_number(cli: Cli) -> None:
    cli("stacks", "show", "abc", code=2)


def test_invalid_setting_in_the_environment(cli: Cli, db: Database) -> None:
    err = cli("stacks", "create", "alpha", code=1,
              env={"TICKWORK_TICK_INTERVAL": "abc"}).stderr
    assert "invalid setting TICKWORK_TICK_INTERVAL='abc'" in err
    assert "valid integer" in err
    assert _stack_count(db) == 0


def test_unreachable_database(clean_env: None) -> None:
    url = "postgresql://tickwork:hunter2@127.0.0.1:1/nowhere"
    result = Cli()("stacks", "list", code=1, env={"TICKWORK_DATABASE_URL": url})
    assert "cannot reach the database at postgresql://tickwork:***@127.0.0.1:1/nowhere" in (
        result.stderr)
    assert "hunter2" not in result.output


def test_db_upgrade_prints_the_revision(cli: Cli, db_url: str) -> None:
    out = cli("db", "upgrade").output
    assert f"is at revision {head()} (latest)" in out
    database = Database(db_url)
    try:
        assert current(database) == head()
    finally:
        database.close()


def test_full_times_name_their_zone() -> None:
    """The CLI prints local time, and says which zone it is (the dashboard shows the
    browser's, named too)."""
    from datetime import UTC, datetime

    from orchestrator.cli_common import fmt_time

    shown = fmt_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    zone = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).astimezone().strftime("%Z")
    assert shown.endswith(f" {zone}") and zone
