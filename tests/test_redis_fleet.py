"""Wake-ups between real processes travel over Redis: with the poll interval set to minutes,
a tick queued by a command is claimed by a worker process at once, and a dashboard process
streams another process's events at once. Only Redis can have delivered them."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.procs import Procs, poll, procs_fixture
from tests.redis_helpers import PrivateRedis, private_redis
from tests.test_fleet import TOKEN, Db, db, failover, pg_database

pytestmark = pytest.mark.timeout(400)

__all__ = ["db", "pg_database", "private_redis"]  # fixtures

MINUTES = "300"  # the poll interval: nothing here may wait for it


@pytest.fixture
def procs(tmp_path: Any, pg_database: str, private_redis: PrivateRedis) -> Iterator[Procs]:
    yield from procs_fixture(tmp_path, {
        "TICKWORK_DATABASE_URL": pg_database, "TICKWORK_ADMIN_TOKEN": TOKEN,
        "TICKWORK_REDIS_URL": private_redis.url, "TICKWORK_POLL_S": MINUTES,
        "TICKWORK_SIM_LATENCY_MS": "20", "TICKWORK_TICK_INTERVAL": "1"})


def _stream(url: str, seen: list[tuple[str, float]], stop: threading.Event) -> None:
    with contextlib.suppress(httpx.HTTPError), \
            httpx.Client(timeout=httpx.Timeout(5.0, read=60.0)) as client, \
            client.stream("GET", f"{url}/api/events") as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                seen.append((line[6:].strip(), time.monotonic()))
            if stop.is_set():
                return


def test_wake_ups_between_processes_arrive_by_redis(procs: Procs, db: Db) -> None:
    procs.cli("db", "upgrade")
    procs.start("worker")
    dashboard = procs.start("dashboard")
    poll(lambda: db.value("SELECT count(*) FROM processes") == 2, 20, "the fleet to register")
    poll(lambda: httpx.get(f"{dashboard.url}/readyz").json()["wakeups"] == "redis", 10,
         "the dashboard to connect to Redis")
    seen: list[tuple[str, float]] = []
    stop = threading.Event()
    reader = threading.Thread(target=_stream, args=(dashboard.url, seen, stop), daemon=True)
    reader.start()
    time.sleep(0.5)  # let the stream open (it starts from the current end)

    created = time.monotonic()
    procs.cli("stacks", "create", "pushed")  # another process: the command
    poll(lambda: db.value("SELECT status FROM ticks") == "succeeded", 20,
         "the worker to run the queued tick")
    claim_s = db.value("SELECT started_at - queued_at FROM ticks")
    assert claim_s < 5, f"claimed {claim_s:.1f} s after it was queued"  # not after minutes
    poll(lambda: any(kind == "tick.finished" for kind, _ in seen), 20,
         "the dashboard's stream to carry the worker's events")
    kinds = [kind for kind, _ in seen]
    assert kinds[:3] == ["stack.updated", "tick.queued", "tick.started"]
    assert seen[0][1] - created < 5  # the command's own events, pushed too
    stop.set()


def test_the_beat_leader_fails_over_in_redis(procs: Procs, db: Db) -> None:
    failover(procs, db)


def _chain_env(sim_url: str, **extra: str) -> dict[str, str]:
    return {"GROQ_API_KEY": "sim", "GROQ_BASE_URL": sim_url, "OPENAI_API_KEY": "sim",
            "OPENAI_BASE_URL": f"{sim_url}/v1", "TICKWORK_TICK_INTERVAL": "1",
            "TICKWORK_POLL_S": "1", **extra}


def test_three_workers_share_groqs_limit(procs: Procs, db: Db) -> None:
    """Against a simulator enforcing Groq's 30 requests a minute: three workers never collect a
    429 from Groq, and Groq still serves at least 90 % of its allowance."""
    window_s = 180.0
    sim = procs.start("sim-llm", "--latency-ms", "20", "--rpm", "groq=30")
    env = _chain_env(sim.url, TICKWORK_GROQ_RPM="30", TICKWORK_GROQ_TPM="1000000")
    procs.cli("db", "upgrade")
    for _ in range(3):
        procs.start("worker", env=env)
    procs.start("beat", env=env)
    for i in range(6):
        procs.cli("stacks", "create", f"s{i}", env=env)
    poll(lambda: db.value("SELECT count(*) FROM llm_attempts WHERE provider = 'groq' "
                          "AND status = 'ok'") > 0, 30, "Groq to serve a first call")
    began = float(db.value("SELECT extract(epoch FROM now())"))
    time.sleep(window_s)  # a fixed window of real traffic is the thing measured
    counts = {r["status"]: r["n"] for r in db.rows(
        "SELECT status, count(*) AS n FROM llm_attempts WHERE provider = 'groq' AND "
        "started_at >= :b AND started_at < :e GROUP BY status", b=began, e=began + window_s)}
    assert counts.get("rate_limited", 0) == 0, counts
    served = counts.get("ok", 0)
    assert served >= 0.9 * 30 * window_s / 60, counts
    assert served <= 30 * window_s / 60 + 30, counts  # never beyond the provider's minute
    stats = httpx.get(f"{sim.url}/_sim/stats", timeout=5).json()
    assert stats["groq"]["rate_limited"] == 0, stats


def test_failures_seen_by_one_worker_open_groqs_breaker_in_every_worker(procs: Procs,
                                                                        db: Db) -> None:
    sim = procs.start("sim-llm", "--latency-ms", "20", "--down", "groq")
    env = _chain_env(sim.url, TICKWORK_BREAKER_THRESHOLD="3",
                     TICKWORK_BREAKER_COOLDOWN_S="300", TICKWORK_LLM_MAX_ATTEMPTS="1")
    procs.cli("db", "upgrade")
    workers = [procs.start("worker", env=env) for _ in range(3)]
    procs.start("beat", env=env)
    for i in range(6):
        procs.cli("stacks", "create", f"s{i}", env=env)

    def skipped_by_every_worker() -> bool:
        found = db.rows("SELECT DISTINCT t.worker_id FROM llm_attempts a JOIN ticks t ON "
                        "t.id = a.tick_id WHERE a.status = 'skipped_open_breaker'")
        return len(found) == len(workers)

    poll(skipped_by_every_worker, 60, "Groq's breaker to be open in every worker")
    calls = db.value("SELECT count(*) FROM llm_attempts WHERE provider = 'groq' "
                     "AND status NOT LIKE 'skipped_%'")
    # One breaker for the fleet: about its threshold of failed calls (plus those already in
    # flight when it opened), not three workers' worth.
    assert calls < 3 * 3, calls


def test_redis_away_for_half_a_minute_loses_nothing(procs: Procs, db: Db,
                                                    private_redis: PrivateRedis) -> None:
    env = {"TICKWORK_TICK_INTERVAL": "1", "TICKWORK_POLL_S": "1"}
    procs.cli("db", "upgrade")
    procs.start("beat", env=env)
    for _ in range(2):
        procs.start("worker", env=env)
    dashboard = procs.start("dashboard", env=env)
    for i in range(4):
        procs.cli("stacks", "create", f"s{i}", env=env)
    ids: list[int] = []
    stop = threading.Event()

    def read() -> None:
        with contextlib.suppress(httpx.HTTPError), \
                httpx.Client(timeout=httpx.Timeout(5.0, read=60.0)) as client, \
                client.stream("GET", f"{dashboard.url}/api/events?after=0") as response:
            for line in response.iter_lines():
                if line.startswith("id:"):
                    ids.append(int(line[3:].strip()))
                if stop.is_set():
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    poll(lambda: db.value("SELECT count(*) FROM ticks WHERE status = 'succeeded'") >= 8, 30,
         "the fleet to tick")
    private_redis.stop()
    poll(lambda: "unavailable" in httpx.get(f"{dashboard.url}/readyz").json()["wakeups"], 15,
         "the dashboard to say Redis is away")
    during = db.value("SELECT count(*) FROM ticks WHERE status = 'succeeded'")
    poll(lambda: db.value("SELECT count(*) FROM ticks WHERE status = 'succeeded'") > during + 8,
         40, "ticks to go on while Redis is away (by polling)")
    time.sleep(max(0.0, 30 - 10))  # the rest of the half minute without Redis
    private_redis.start()
    back = time.monotonic()
    poll(lambda: httpx.get(f"{dashboard.url}/readyz").json()["wakeups"] == "redis", 10,
         "push to come back")
    assert time.monotonic() - back < 5.5
    poll(lambda: db.value("SELECT count(*) FROM ticks WHERE status IN ('queued', 'running') "
                          "AND queued_at < extract(epoch FROM now()) - 5") == 0, 20,
         "no tick left waiting")
    # Nothing lost, nothing twice: every slot of every stack has exactly one row between its
    # first and its last, and every event was streamed once, in order.
    for (sid,) in [(r["id"],) for r in db.rows("SELECT id FROM stacks")]:
        slots = [r["slot"] for r in db.rows(
            "SELECT slot FROM ticks WHERE stack_id = :s AND slot IS NOT NULL ORDER BY slot",
            s=sid)]
        assert slots == list(range(slots[0], slots[-1] + 1)), (sid, slots)
    stop.set()
    got = list(ids)  # the reader goes on until its next line: compare what it had by now
    stored = [r["id"] for r in db.rows("SELECT id FROM events WHERE id <= :l ORDER BY id",
                                       l=got[-1])]
    assert got == stored
