"""What a newcomer meets first, tried as they would: out-of-range numbers, bad settings, the
README's own-agent example, the beat interval, a command run in the wrong directory, pause and
play on a stack already so, and what the logs and the banner say.

The short commands run in-process (typer's CliRunner); `tickwork up` runs as a real process.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from orchestrator.cli import configure_logging
from schema.db import Database
from schema.migrate import upgrade
from tests.cli_helpers import Cli, clean_env, cli
from tests.procs import Procs, poll, procs_fixture

__all__ = ["clean_env", "cli"]  # fixtures

HUGE = "99999999999999999999"
README = Path(__file__).resolve().parents[1] / "README.md"
TOKEN = "first-use-token"


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    yield from procs_fixture(tmp_path, {"TICKWORK_ADMIN_TOKEN": TOKEN,
                                        "TICKWORK_SIM_LATENCY_MS": "5,20"})


# -- numbers beyond what the database stores ---------------------------------------------------


@pytest.mark.parametrize("args", [
    ["stacks", "show", HUGE], ["stacks", "pause", HUGE], ["stacks", "play", HUGE],
    ["stacks", "tick", HUGE], ["stacks", "delete", HUGE], ["stacks", "budget", HUGE],
    ["stacks", "team", HUGE, "planner"], ["ticks", "list", HUGE], ["ticks", "show", HUGE],
    ["stacks", "create", "x", "--budget-tokens", HUGE], ["stacks", "create", "x", "--interval",
                                                         HUGE],
    ["stacks", "budget", "1", "--tokens", HUGE],
])
def test_an_id_or_number_too_large_is_a_usage_error(cli: Cli, db: Database,
                                                     args: list[str]) -> None:
    result = cli(*args, code=2)
    assert "Input should be less than or equal to" in result.stderr
    assert "OverflowError" not in result.output


def test_the_api_refuses_numbers_its_columns_cannot_hold(runtime: object) -> None:
    from tests.test_api import ADMIN, create, run

    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client)
        for body, field in [({"tokens_per_day": 9223372036854775808}, "body.tokens_per_day"),
                            ({"tokens_per_day": True}, "body.tokens_per_day"),
                            ({"usd_per_day": 1e300}, "body.usd_per_day")]:
            r = await client.put(f"/api/stacks/{stack['id']}/budget", json=body, headers=ADMIN)
            assert r.status_code == 422, r.text
            assert [d["field"] for d in r.json()["detail"]] == [field]
        r = await client.post("/api/stacks", headers=ADMIN,
                              json={"name": "big", "budget_tokens_per_day": 9223372036854775808})
        assert r.status_code == 422, r.text
        after = (await client.get(f"/api/stacks/{stack['id']}")).json()
        assert after["budget"] == {"tokens_per_day": None, "usd_per_day": None}

    run(runtime, scenario)  # type: ignore[arg-type]


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(("variable", "value", "words"), [
    ("TICKWORK_LLM_PRICES", '{"gpt-4o-mini": [0.15', "not JSON"),
    ("TICKWORK_LLM_PRICES", "[1,2]", "must be a JSON object of model"),
    ("TICKWORK_LLM_PRICES", '{"gpt-4o-mini": [0.15]}', "must be [input, output]"),
    ("TICKWORK_LLM_CHAIN", "bogus", "unknown provider 'bogus'"),
    ("TICKWORK_AGENTS", "not a path", "is not an import path"),
    ("TICKWORK_LEASE_S", "inf", "finite number"),
    ("TICKWORK_DATABASE_URL", "nonsense", "must be sqlite:///PATH"),
    ("TICKWORK_DATABASE_URL", "mysql://db/x", "or postgresql://"),
    ("TICKWORK_REDIS_URL", "nonsense", "must be redis://"),
    ("GROQ_BASE_URL", "api.groq.com", "must be an http:// or https:// URL"),
])
def test_a_bad_setting_is_one_line_and_a_non_zero_exit(clean_env: None, tmp_path: Path,
                                                       variable: str, value: str,
                                                       words: str) -> None:
    for args in (["up", "--port", "0"], ["stacks", "list"]):
        err = Cli()(*args, env={variable: value}, code=1).stderr
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"Error: invalid setting {variable}")
        assert words in lines[0]
    assert list(tmp_path.iterdir()) == []


# -- a database made by accident ------------------------------------------------------------


@pytest.mark.parametrize("args", [["stacks", "list"], ["stacks", "show", "1"],
                                  ["ticks", "list", "1"], ["top", "--once"], ["worker"],
                                  ["beat"], ["dashboard", "--port", "0"]])
def test_a_command_in_an_empty_directory_creates_no_database(clean_env: None, tmp_path: Path,
                                                             args: list[str]) -> None:
    err = Cli()(*args, code=1).stderr
    assert f"no tickwork database at {tmp_path / 'tickwork.db'}" in err
    assert "TICKWORK_DATABASE_URL" in err
    assert list(tmp_path.iterdir()) == []


def test_db_upgrade_creates_the_database(clean_env: None, tmp_path: Path) -> None:
    Cli()("db", "upgrade")
    assert (tmp_path / "tickwork.db").exists()
    assert "no stacks yet" in Cli()("stacks", "list").output


def test_a_database_behind_says_to_upgrade(clean_env: None, tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'tickwork.db'}")
    try:
        upgrade(db, "0002")
    finally:
        db.close()
    err = Cli()("stacks", "list", code=1).stderr
    assert "is at revision 0002" in err and "run `tickwork db upgrade`" in err
    Cli()("db", "upgrade")
    Cli()("stacks", "list")


# -- pause and play say what they found -----------------------------------------------------


def _reason(db: Database) -> str | None:
    with db.read() as conn:
        return conn.execute(text("SELECT pause_reason FROM stacks WHERE id = 1")).scalar_one()


def test_pause_and_play_say_what_state_the_stack_is_in(cli: Cli, db: Database) -> None:
    cli("stacks", "create", "alpha")
    out = cli("stacks", "play", "1").output
    assert "stack 1 'alpha' was already running; nothing changed" in out
    assert "stack 1 'alpha' paused (lunch)" in cli("stacks", "pause", "1", "-r", "lunch").output
    again = cli("stacks", "pause", "1").output
    assert "was already paused (lunch); nothing changed" in again
    assert _reason(db) == "lunch"  # the first reason is kept
    changed = cli("stacks", "pause", "1", "--reason", "dinner").output
    assert "was already paused; its reason is now 'dinner'" in changed
    assert "stack 1 'alpha' is running" in cli("stacks", "play", "1").output


def test_the_api_says_what_a_play_or_pause_found(runtime: object) -> None:
    from tests.test_api import ADMIN, create, run

    async def scenario(client: httpx.AsyncClient) -> None:
        stack = await create(client)
        r = (await client.post(f"/api/stacks/{stack['id']}/play", headers=ADMIN)).json()
        assert (r["changed"], r["message"]) == (
            False, f"stack {stack['id']} 'alpha' was already running; nothing changed")
        await client.post(f"/api/stacks/{stack['id']}/pause", json={"reason": "lunch"},
                          headers=ADMIN)
        r = (await client.post(f"/api/stacks/{stack['id']}/pause", headers=ADMIN)).json()
        assert (r["changed"], r["pause_reason"]) == (False, "lunch")
        assert "already paused (lunch)" in r["message"]

    run(runtime, scenario)  # type: ignore[arg-type]


# -- the README's own agent, and one beat interval for everyone -----------------------------


def _readme_agent() -> str:
    text = README.read_text()
    match = re.search(r"```python\n(# mypkg/agents\.py\n.*?)```", text, re.S)
    assert match, "the README's own-agent example"
    return match.group(1)


def _readme_create_command() -> list[str]:
    line = next(ln for ln in README.read_text().splitlines()
                if "stacks create haiku" in ln and "TICKWORK_AGENTS=" in ln)
    words = line.split()
    assert words[0] == "TICKWORK_AGENTS=mypkg.agents:Poet"
    assert words[1].endswith("tickwork")
    return words[2:]


def _api(p: object, path: str) -> object:
    return httpx.get(f"{p.url}{path}", timeout=5).json()  # type: ignore[attr-defined]


def test_the_readme_agent_example_works_as_written(procs: Procs) -> None:
    (procs.cwd / "mypkg").mkdir()
    (procs.cwd / "mypkg" / "agents.py").write_text(_readme_agent())
    agents = {"TICKWORK_AGENTS": "mypkg.agents:Poet"}
    up = procs.start("up", "--interval", "1", env=agents)
    out = procs.cli(*_readme_create_command(), env=agents).stdout
    assert "created stack 1 'haiku'" in out

    def poem_written() -> object:
        ticks = _api(up, "/api/stacks/1/ticks")
        done = [t for t in ticks if t["status"] == "succeeded"]  # type: ignore[attr-defined]
        return done and _api(up, f"/api/ticks/{done[0]['id']}")

    tick = poll(poem_written, 30, "a tick of the haiku stack to succeed")
    assert [s["agent"] for s in tick["steps"]] == ["planner", "poet"]  # type: ignore[index]
    assert _api(up, "/api/stacks/1/messages")  # the poem


def test_a_team_the_running_workers_do_not_know_is_refused(procs: Procs) -> None:
    (procs.cwd / "mypkg").mkdir()
    (procs.cwd / "mypkg" / "agents.py").write_text(_readme_agent())
    up = procs.start("up", "--interval", "1")  # started without TICKWORK_AGENTS
    err = procs.cli(*_readme_create_command(), env={"TICKWORK_AGENTS": "mypkg.agents:Poet"},
                    code=1).stderr
    assert "unknown agent(s) poet (the running workers know: builder, communicator, " \
           "planner, reviewer)" in err
    assert _api(up, "/api/stacks") == []


def test_the_beat_interval_is_one_fact(procs: Procs) -> None:
    up = procs.start("up", "--interval", "1")
    out = procs.cli("stacks", "create", "x", "--interval", "3").stdout
    assert "every 3 s" in out
    assert "every" in procs.cli("stacks", "list").stdout
    assert _api(up, "/api/stacks/1")["interval_s"] == 3  # type: ignore[index]
    assert _api(up, "/api/system")["tick_interval"] == 1  # type: ignore[index]
    page = httpx.get(f"{up.url}/stacks/1", timeout=5).text
    assert "every 3 s" in page
    assert up.stop() == 0


def test_with_a_ten_second_beat_fifteen_is_refused(cli: Cli, db: Database) -> None:
    err = cli("stacks", "create", "x", "--interval", "15", code=1).stderr
    assert "multiple of the beat interval, which is 10 s: 15 s is not" in err


# -- the logs and the banner ---------------------------------------------------------------


def test_library_request_logs_stay_at_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    names = ("httpx", "httpcore", "openai", "groq")
    saved = [logging.root.level, *(logging.getLogger(n).level for n in names)]
    try:
        monkeypatch.delenv("TICKWORK_LOG_LEVEL", raising=False)
        configure_logging("up")
        for name in names:
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger("tickwork").isEnabledFor(logging.INFO)
        monkeypatch.setenv("TICKWORK_LOG_LEVEL", "DEBUG")
        configure_logging("up")
        assert logging.getLogger("httpx").isEnabledFor(logging.DEBUG)
    finally:
        logging.root.setLevel(saved[0])
        for name, level in zip(names, saved[1:], strict=True):
            logging.getLogger(name).setLevel(level)


def test_providers_on_loopback_are_named_and_requests_are_not_logged(procs: Procs) -> None:
    sim = procs.start("sim-llm", "--latency-ms", "5")
    up = procs.start("up", "--interval", "1", env={
        "GROQ_API_KEY": "sim", "GROQ_BASE_URL": sim.url, "OPENAI_API_KEY": "sim",
        "OPENAI_BASE_URL": f"{sim.url}/v1"})
    banner = up.out()
    assert f"served on loopback (groq at {sim.url}, openai at {sim.url}/v1)" in banner
    assert "not the real provider" in banner
    system = _api(up, "/api/system")
    assert all(p["on_loopback"] for p in system["providers"])  # type: ignore[index]
    assert any("served on loopback" in n for n in system["notes"])  # type: ignore[index]
    procs.cli("stacks", "create", "alpha")
    poll(lambda: _api(up, "/api/stacks/1")["counts"]["succeeded"],  # type: ignore[index]
         30, "a tick through the SDKs to succeed")
    assert up.stop() == 0
    assert "HTTP Request" not in up.err()


def test_a_fleet_role_needs_the_admin_token(clean_env: None) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/test"
    for role in (["worker"], ["beat"], ["dashboard", "--port", "0"], ["up", "--port", "0"]):
        err = Cli()(*role, env={"TICKWORK_DATABASE_URL": url}, code=1).stderr
        assert "TICKWORK_ADMIN_TOKEN is not set" in err
