"""`tickwork up` end to end: a real process, a real port, the simulated model, a 1 s beat.

Everything is observed from outside, as a user would: the banner on stdout, the JSON API, and
the exit code after SIGTERM. Each wait polls a condition under a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agents.registry import DEFAULT_TEAM
from tests.procs import KEEP_ENV, free_port, poll

TOKEN = "e2e-admin-token"


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    port: int
    stdout: Path
    stderr: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def out(self) -> str:
        return self.stdout.read_text()

    def err(self) -> str:
        return self.stderr.read_text()

    def stop(self, timeout: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(*, token: str | None = TOKEN) -> Up:
        env = {k: v for k, v in os.environ.items()
               if (not k.startswith("TICKWORK_") or k in KEEP_ENV)
               and not k.startswith(("GROQ_", "OPENAI_"))}  # the simulated model serves
        env.update(TICKWORK_DATABASE_URL=f"sqlite:///{tmp_path / 'up.db'}",
                   TICKWORK_SIM_LATENCY_MS="20,60", PYTHONUNBUFFERED="1", COLUMNS="200")
        if token is not None:
            env["TICKWORK_ADMIN_TOKEN"] = token
        port = free_port()
        n = len(started)
        stdout, stderr = tmp_path / f"stdout{n}.txt", tmp_path / f"stderr{n}.txt"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator", "up", "--port", str(port),
                 "--interval", "1"],
                cwd=tmp_path, env=env, stdout=out, stderr=err)
        up = Up(proc, port, stdout, stderr)
        started.append(up)

        def live() -> bool:
            if up.proc.poll() is not None:
                raise AssertionError(f"tickwork up exited with {up.proc.returncode}:\n"
                                     f"{up.out()}\n{up.err()}")
            try:
                return httpx.get(f"{up.url}/livez", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        poll(live, 20, "tickwork up to serve /livez")
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            up.proc.kill()
            up.proc.wait(10)


def _stacks(client: httpx.Client) -> dict[int, dict[str, Any]]:
    resp = client.get("/api/stacks")
    resp.raise_for_status()
    return {s["id"]: s for s in resp.json()}


def _ticks(client: httpx.Client, stack_id: int) -> list[dict[str, Any]]:
    resp = client.get(f"/api/stacks/{stack_id}/ticks", params={"limit": 500})
    resp.raise_for_status()
    return list(resp.json())


def _started(client: httpx.Client, stack_id: int) -> int:
    return sum(1 for tk in _ticks(client, stack_id) if tk["started_at"] is not None)


def test_up_runs_stacks_and_pauses_them(start_up: Callable[..., Up]) -> None:
    up = start_up()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=up.url, timeout=5) as client:
        ids = []
        for name in ("alpha", "beta", "gamma"):
            resp = client.post("/api/stacks", json={"name": name, "goal": f"goal {name}"},
                               headers=auth)
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])

        def ticked(n: int, which: list[int]) -> bool:
            found = _stacks(client)
            return all(found[i]["counts"]["succeeded"] >= n for i in which)

        poll(lambda: ticked(3, ids), 15, "three succeeded ticks per stack")
        for stack_id in ids:
            done = [tk for tk in _ticks(client, stack_id) if tk["status"] == "succeeded"]
            assert len(done) >= 3
            for summary in done[:3]:
                tick = client.get(f"/api/ticks/{summary['id']}").json()
                assert [s["agent"] for s in tick["steps"]] == list(DEFAULT_TEAM)
                assert all(s["status"] == "succeeded" for s in tick["steps"])
                assert all(s["attempts"] and all(a["provider"] == "sim" for a in s["attempts"])
                           for s in tick["steps"])

        paused, others = ids[0], ids[1:]
        resp = client.post(f"/api/stacks/{paused}/pause", json={"reason": "e2e pause"},
                           headers=auth)
        assert resp.status_code == 200, resp.text
        assert (resp.json()["execution_state"], resp.json()["pause_reason"]) == (
            "paused", "e2e pause")
        started_at_pause = _started(client, paused)
        before = {i: _stacks(client)[i]["counts"]["succeeded"] for i in others}

        # the others keep ticking: two more ticks each, i.e. at least two beats go by
        poll(lambda: all(_stacks(client)[i]["counts"]["succeeded"] >= before[i] + 2
                         for i in others), 10, "the running stacks to tick twice more")
        assert _started(client, paused) == started_at_pause
        assert not any(tk["status"] == "queued" for tk in _ticks(client, paused))
        assert _stacks(client)[paused]["execution_state"] == "paused"

        resp = client.post(f"/api/stacks/{paused}/play", headers=auth)
        assert resp.status_code == 200, resp.text
        assert resp.json()["execution_state"] == "running"
        poll(lambda: _started(client, paused) > started_at_pause, 10,
             "the played stack to tick again")

    out = up.out()
    assert f"http://127.0.0.1:{up.port}/" in out
    assert TOKEN not in out  # a configured token is never printed
    assert "from TICKWORK_ADMIN_TOKEN (not shown)" in out
    assert "simulated" in out

    assert up.stop() == 0
    assert "Traceback" not in up.err()


def test_up_generates_a_token_that_authorises_writes(start_up: Callable[..., Up]) -> None:
    up = start_up(token=None)
    match = re.search(r"admin token\s+(\S+)\s+\(generated: set TICKWORK_ADMIN_TOKEN", up.out())
    assert match, up.out()
    token = match.group(1)
    with httpx.Client(base_url=up.url, timeout=5) as client:
        assert client.post("/api/stacks", json={"name": "nope"}).status_code == 401
        wrong = client.post("/api/stacks", json={"name": "nope"},
                            headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401
        resp = client.post("/api/stacks", json={"name": "alpha"},
                           headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 201, resp.text
        assert [s["name"] for s in _stacks(client).values()] == ["alpha"]
    assert up.stop() == 0
    assert "Traceback" not in up.err()


def test_up_reports_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKWORK_")}
        env["TICKWORK_DATABASE_URL"] = f"sqlite:///{tmp_path / 'up.db'}"
        done = subprocess.run([sys.executable, "-m", "orchestrator", "up", "--port", str(port)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in done.stderr
    assert "Traceback" not in done.stderr
