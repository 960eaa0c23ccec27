"""Wake-ups between real processes travel over Redis: with the poll interval set to minutes,
a tick queued by a command is claimed by a worker process at once, and a dashboard process
streams another process's events at once. Only Redis can have delivered them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.procs import Procs, poll, procs_fixture
from tests.redis_helpers import PrivateRedis, private_redis
from tests.test_fleet import TOKEN, Db, db, failover, pg_database

__all__ = ["db", "pg_database", "private_redis"]  # fixtures

MINUTES = "300"  # the poll interval: nothing here may wait for it


@pytest.fixture
def procs(tmp_path: Any, pg_database: str, private_redis: PrivateRedis) -> Iterator[Procs]:
    yield from procs_fixture(tmp_path, {
        "TICKWORK_DATABASE_URL": pg_database, "TICKWORK_ADMIN_TOKEN": TOKEN,
        "TICKWORK_REDIS_URL": private_redis.url, "TICKWORK_POLL_S": MINUTES,
        "TICKWORK_SIM_LATENCY_MS": "20"})


def _stream(url: str, seen: list[tuple[str, float]], stop: threading.Event) -> None:
    with httpx.Client(timeout=httpx.Timeout(5.0, read=60.0)) as client, \
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
