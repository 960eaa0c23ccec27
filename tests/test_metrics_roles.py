"""`tickwork worker --metrics-port P` and `tickwork beat --metrics-port P`: real processes on
PostgreSQL, each serving its own /metrics, scraped as Prometheus scrapes them and read back
with prometheus-client's parser. A worker shows its own ticks and LLM calls (not the
database's fleet-wide counts); a beat shows its leadership, its last slot and the database's
counts (not a worker's figures, which it has none of).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli_helpers import Cli, clean_env
from tests.pg_helpers import pg_database
from tests.procs import Proc, Procs, free_port, poll, procs_fixture
from tests.test_metrics import PROMETHEUS_ACCEPT, Family, parse

__all__ = ["clean_env", "pg_database"]  # fixtures

TOKEN = "metrics-token"


@pytest.fixture
def procs(tmp_path: Path, pg_database: str) -> Iterator[Procs]:
    yield from procs_fixture(tmp_path, {
        "TICKWORK_DATABASE_URL": pg_database, "TICKWORK_ADMIN_TOKEN": TOKEN,
        "TICKWORK_TICK_INTERVAL": "1", "TICKWORK_POLL_S": "0.2",
        "TICKWORK_SIM_LATENCY_MS": "20"})


def scrape(p: Proc, port: int) -> dict[str, Family] | None:
    """The process's /metrics as Prometheus asks for it; None until it answers."""
    if not p.alive():
        raise AssertionError(f"tickwork {p.role} exited:\n{p.out()}\n{p.err()}")
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2,
                      headers={"Accept": PROMETHEUS_ACCEPT})
    except httpx.TransportError:
        return None
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse(r.text)


def test_a_worker_and_a_beat_serve_their_own_metrics(procs: Procs) -> None:
    procs.cli("db", "upgrade")
    wport, bport = free_port(), free_port()
    worker = procs.start("worker", "--metrics-port", str(wport))
    beat = procs.start("beat", "--metrics-port", str(bport))
    w0 = poll(lambda: scrape(worker, wport), 30, "the worker's /metrics")

    def leading() -> dict[str, Family] | None:
        m = scrape(beat, bport)
        return m if m and "tickwork_beat_leader" in m else None

    b0 = poll(leading, 30, "the beat's /metrics, leading")
    assert f"http://127.0.0.1:{wport}/metrics" in worker.out()  # the banner says where

    # Before any tick: the worker's own figures at zero, no fleet-wide counts on a worker.
    assert w0["tickwork_tick_duration_seconds"].value("_count") == 0
    assert w0["tickwork_llm_requests_total"].samples == []
    assert w0["tickwork_info"].samples[0][1]["simulated"] == "true"
    assert "tickwork_queue_depth" not in w0 and "tickwork_ticks_total" not in w0
    # The beat: the database's counts and its own leadership, no worker figures.
    assert b0["tickwork_ticks_total"].value(status="succeeded") == 0
    assert b0["tickwork_beat_leader"].value() == 1
    assert "tickwork_tick_duration_seconds" not in b0
    assert "tickwork_worker_running_ticks" not in b0

    procs.cli("stacks", "create", "alpha")  # its first tick at once, then one a second

    def worker_ran_ticks() -> dict[str, Family] | None:
        m = scrape(worker, wport)
        return m if m and m["tickwork_tick_duration_seconds"].value("_count") >= 3 else None

    w1 = poll(worker_ran_ticks, 30, "the worker to run three ticks")
    finished = w1["tickwork_tick_duration_seconds"].value("_count")
    # Lateness is a beat tick's: every tick but the stack's first (it has no slot).
    assert w1["tickwork_beat_lateness_seconds"].value("_count") >= finished - 1
    assert w1["tickwork_work_lateness_seconds"].value("_count") >= finished - 1
    ok = w1["tickwork_llm_requests_total"].value(provider="sim", outcome="ok")
    assert ok >= 4 * finished  # four agents a tick, each answered by the simulated model
    assert w1["tickwork_llm_requests_total"].value(provider="sim", outcome="timeout") == 0

    def counted() -> dict[str, Family] | None:
        m = scrape(beat, bport)
        return m if m and m["tickwork_ticks_total"].value(status="succeeded") >= 3 else None

    b1 = poll(counted, 30, "the beat's counts to move")
    assert b1["tickwork_stacks"].value(state="running") == 1
    slot_time = b1["tickwork_beat_last_slot_timestamp_seconds"].value()
    assert abs(slot_time - time.time()) < 10  # a slot of these last seconds

    for p in (worker, beat):
        assert p.stop() == 0
        assert "Traceback" not in p.err()


def test_a_metrics_port_in_use_is_one_line(clean_env: None) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for role in ("worker", "beat"):
            err = Cli()(role, "--metrics-port", str(port), code=1).stderr
            assert err.strip().splitlines() == [
                f"Error: port {port} on 127.0.0.1 is already in use (another tickwork?); "
                "choose another with --metrics-port"], err


def test_the_flags_are_in_the_help(clean_env: None) -> None:
    for role in ("worker", "beat"):
        out = Cli()(role, "--help").output
        assert "--metrics-port" in out and "--metrics-host" in out
