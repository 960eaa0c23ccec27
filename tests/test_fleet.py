"""Several processes on one PostgreSQL database, as a user runs them: `tickwork db upgrade`,
then two beats, three workers and a dashboard, each a real process, observed only through
the API, the CLI and the database. One worker is killed with SIGKILL in the middle of a tick
and one beat with it; the fleet carries on. A worker stopped with SIGTERM hands its ticks
back without using an attempt.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from orchestrator.store.reasons import REASON_RELEASED
from schema.db import normalise_url
from tests.pg_helpers import pg_database
from tests.procs import Proc, Procs, poll, procs_fixture

__all__ = ["pg_database"]  # a fixture, shared with the other fleet tests

TOKEN = "fleet-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE_S = 3.0
STACKS = 8


@pytest.fixture
def procs(tmp_path: Any, pg_database: str) -> Iterator[Procs]:
    yield from procs_fixture(tmp_path, {
        "TICKWORK_DATABASE_URL": pg_database, "TICKWORK_ADMIN_TOKEN": TOKEN,
        "TICKWORK_TICK_INTERVAL": "1", "TICKWORK_LEASE_S": str(LEASE_S),
        "TICKWORK_REAP_EVERY_S": "0.5", "TICKWORK_POLL_S": "0.2",
        "TICKWORK_SIM_LATENCY_MS": "150,400"})


class Db:
    """Reads the fleet's database from outside."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(normalise_url(url))

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(text(sql), params).mappings()]

    def value(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar_one()


@pytest.fixture
def db(pg_database: str) -> Iterator[Db]:
    found = Db(pg_database)
    yield found
    found.engine.dispose()


def _system(dashboard: Proc) -> dict[str, Any]:
    r = httpx.get(f"{dashboard.url}/api/system", timeout=5)
    r.raise_for_status()
    return dict(r.json())


def _fleet_pids(dashboard: Proc) -> dict[int, str]:
    return {p["pid"]: p["role"] for p in _system(dashboard)["fleet"]}


def _mid_tick(db: Db, workers: list[Proc]) -> tuple[Proc, list[int]]:
    """A worker that holds a running tick with at least one step journaled, and its ticks."""
    ids = db.rows("SELECT id, pid FROM processes WHERE role = 'worker'")
    by_id = {r["id"]: r["pid"] for r in ids}
    for row in db.rows("SELECT t.id, t.worker_id FROM ticks t WHERE t.status = 'running' "
                       "AND EXISTS (SELECT 1 FROM steps s WHERE s.tick_id = t.id)"):
        pid = by_id.get(row["worker_id"])
        victim = next((w for w in workers if w.pid == pid), None)
        if victim is not None:
            held = db.rows("SELECT id FROM ticks WHERE status = 'running' AND worker_id = :w",
                           w=row["worker_id"])
            return victim, [r["id"] for r in held]
    raise LookupError


def test_killing_a_worker_and_a_beat_loses_no_tick(procs: Procs, db: Db) -> None:
    procs.cli("db", "upgrade")
    beats = [procs.start("beat") for _ in range(2)]
    workers = [procs.start("worker") for _ in range(3)]
    dashboard = procs.start("dashboard")
    poll(lambda: sorted(_fleet_pids(dashboard).values()) == ["beat"] * 2 + ["dashboard"]
         + ["worker"] * 3, 20, "the fleet to register")
    for i in range(STACKS):
        r = httpx.post(f"{dashboard.url}/api/stacks", json={"name": f"s{i}"}, headers=AUTH)
        assert r.status_code == 201, r.text
    poll(lambda: db.value("SELECT count(DISTINCT worker_id) FROM ticks "
                          "WHERE status = 'succeeded'") == 3, 30, "every worker to run ticks")

    victim, held = poll(lambda: _try(lambda: _mid_tick(db, workers)), 30,
                        "a worker in the middle of a tick")
    victim.kill()
    beats[0].kill()
    killed_at = db.value("SELECT extract(epoch FROM now())")
    survivors = [w for w in workers if w is not victim]

    # The killed worker's ticks are retried by the others and finish, resuming their journals.
    def retried() -> bool:
        rows = db.rows("SELECT status, attempt FROM ticks WHERE id = ANY(:ids)", ids=held)
        return all(r["status"] == "succeeded" and r["attempt"] >= 2 for r in rows)

    poll(retried, LEASE_S + 20, "the killed worker's ticks to be retried and succeed")
    for tick_id in held:
        steps = db.rows('SELECT "index", attempt FROM steps WHERE tick_id = :t ORDER BY "index"',
                        t=tick_id)
        assert [s["index"] for s in steps] == [0, 1, 2, 3]
        first = [s["attempt"] for s in steps]
        assert first[0] == 1 and first == sorted(first), first  # journaled steps kept, not redone
    # Every stack keeps ticking, on both surviving workers.
    poll(lambda: db.value("SELECT count(DISTINCT stack_id) FROM ticks WHERE status = "
                          "'succeeded' AND finished_at > :k", k=killed_at) == STACKS, 20,
         "every stack to tick after the kills")
    alive = {r["id"] for r in db.rows("SELECT id FROM processes WHERE pid = ANY(:p)",
                                      p=[w.pid for w in survivors])}
    poll(lambda: {r["worker_id"] for r in db.rows(
        "SELECT DISTINCT worker_id FROM ticks WHERE status = 'succeeded' AND finished_at > :k",
        k=killed_at)} >= alive, 20, "both surviving workers to run ticks")
    # The dead are gone from the fleet, whichever dashboard answers.
    poll(lambda: victim.pid not in _fleet_pids(dashboard)
         and beats[0].pid not in _fleet_pids(dashboard), LEASE_S + 10,
         "the killed processes to leave the fleet")
    assert sorted(_fleet_pids(dashboard).values()) == ["beat", "dashboard", "worker", "worker"]

    assert db.value("SELECT count(*) FROM (SELECT stack_id, slot FROM ticks WHERE slot IS NOT "
                    "NULL GROUP BY stack_id, slot HAVING count(*) > 1) d") == 0
    stale = db.value("SELECT count(*) FROM ticks WHERE status = 'running' AND "
                     "lease_expires_at < extract(epoch FROM clock_timestamp()) - :grace",
                     grace=1.0 + 0.5)  # past its lease by more than one beat (and a reap)
    assert stale == 0
    for p in [*survivors, beats[1], dashboard]:
        assert p.stop() == 0
        assert "Traceback" not in p.err()


def _try(fn: Any) -> Any:
    try:
        return fn()
    except LookupError:
        return None


def test_sigterm_hands_running_ticks_back_without_using_an_attempt(procs: Procs,
                                                                     db: Db) -> None:
    slow = {"TICKWORK_SIM_LATENCY_MS": "1200", "TICKWORK_DRAIN_GRACE_S": "0.2"}
    procs.cli("db", "upgrade")
    worker = procs.start("worker", env=slow)
    procs.cli("stacks", "create", "slow")
    poll(lambda: db.value("SELECT count(*) FROM steps") >= 1, 30, "a step to be journaled")
    assert worker.stop() == 0
    (tick,) = db.rows("SELECT status, attempt, released, reason FROM ticks")
    assert tick == {"status": "queued", "attempt": 2, "released": 1, "reason": REASON_RELEASED}
    procs.start("worker", env={"TICKWORK_SIM_LATENCY_MS": "20"})
    poll(lambda: db.value("SELECT status FROM ticks") == "succeeded", 30,
         "another worker to finish the tick")
    steps = db.rows('SELECT attempt FROM steps ORDER BY "index"')
    assert steps[0]["attempt"] == 1 and steps[-1]["attempt"] == 2  # resumed from the journal


def failover(procs: Procs, db: Db) -> None:
    """Two beats, one leads; kill -9 the leader: the other fans out the next slot at most one
    interval late, and no slot is lost."""
    procs.cli("db", "upgrade")
    beats = [procs.start("beat") for _ in range(2)]
    procs.start("worker")
    for name in ("a", "b", "c"):
        procs.cli("stacks", "create", name)
    leader = poll(lambda: next((b for b in beats if "this beat leads now" in b.err()), None),
                  20, "a beat to lead")
    other = next(b for b in beats if b is not leader)
    poll(lambda: db.value("SELECT count(DISTINCT slot) FROM ticks WHERE slot IS NOT NULL")
         >= 3, 20, "three slots fanned out")
    leader.kill()
    killed_slot = int(db.value("SELECT floor(extract(epoch FROM now()))"))
    poll(lambda: "this beat leads now" in other.err(), 10, "the other beat to take over")
    poll(lambda: db.value("SELECT max(slot) FROM ticks") >= killed_slot + 3, 20,
         "three more slots")
    slots = sorted(r["slot"] for r in db.rows(
        "SELECT DISTINCT slot FROM ticks WHERE slot IS NOT NULL"))
    assert slots == list(range(slots[0], slots[-1] + 1)), "a slot was lost"
    late = db.value("SELECT max(queued_at - slot) FROM ticks WHERE slot > :k", k=killed_slot)
    assert late <= 1.0 + 0.5, f"fanned out {late:.2f} s after its slot"  # one 1 s interval
    assert db.value("SELECT count(*) FROM (SELECT stack_id, slot FROM ticks WHERE slot IS "
                    "NOT NULL GROUP BY stack_id, slot HAVING count(*) > 1) d") == 0


def test_the_beat_leader_fails_over_in_the_database(procs: Procs, db: Db) -> None:
    failover(procs, db)
