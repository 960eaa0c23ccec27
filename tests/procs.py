"""Real tickwork processes for tests: `tickwork up`, `beat`, `worker`, `dashboard` and the
short commands, each a subprocess observed from outside (its output, its exit code, the API).

`Procs` starts them with a clean environment (no TICKWORK_* or provider variables from the
outside unless given), remembers them, and kills whatever is left at the end. Waits poll a
condition under a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")

KEEP_ENV = {"TICKWORK_TEST_POSTGRES_URL", "TICKWORK_TEST_REDIS_URL", "TICKWORK_TEST_CHROMIUM",
            "TICKWORK_REQUIRE_SERVICES"}
HTTP_ROLES = {"up": "/livez", "dashboard": "/livez", "sim-llm": "/_sim/stats"}  # ready when


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(fn: Callable[[], T | None], timeout: float, what: str, every: float = 0.1) -> T:
    """Call `fn` until it returns something true, under a deadline; returns that."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment without tickwork's or the providers' variables (the simulated model
    serves), plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if (not k.startswith("TICKWORK_") or k in KEEP_ENV)
           and not k.startswith(("GROQ_", "OPENAI_"))}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200")
    env.update(extra or {})
    return env


@dataclass
class Proc:
    role: str
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def out(self) -> str:
        return self.stdout.read_text()

    def err(self) -> str:
        return self.stderr.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then wait for the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        self.proc.kill()
        self.proc.wait(10)


@dataclass
class Procs:
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    started: list[Proc] = field(default_factory=list)

    def _env(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        return clean_env({**self.env, **(extra or {})})

    def cli(self, *args: str, env: Mapping[str, str] | None = None, code: int | None = 0,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `tickwork ARGS` to the end; check its exit code (unless `code` is None)."""
        done = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=self.cwd,
                              env=self._env(env), capture_output=True, text=True,
                              timeout=timeout)
        assert "Traceback" not in done.stderr + done.stdout, done.stderr
        if code is not None:
            assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
        return done

    def start(self, role: str, *args: str, env: Mapping[str, str] | None = None,
              ready: bool = True) -> Proc:
        """Start `tickwork ROLE ARGS` in the background; an HTTP role gets a free port and,
        with `ready`, is waited for until it serves /livez."""
        port = free_port() if role in HTTP_ROLES else None
        argv = [sys.executable, "-m", "orchestrator", role, *args]
        if port is not None:
            argv += ["--port", str(port)]
        n = len(self.started)
        stdout, stderr = self.cwd / f"{role}{n}.out", self.cwd / f"{role}{n}.err"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = subprocess.Popen(argv, cwd=self.cwd, env=self._env(env), stdout=out,
                                    stderr=err)
        started = Proc(role, proc, stdout, stderr, port)
        self.started.append(started)
        if ready and port is not None:
            self.wait_serving(started)
        return started

    def wait_serving(self, p: Proc, timeout: float = 30) -> None:
        path = HTTP_ROLES[p.role]

        def live() -> bool:
            if not p.alive():
                raise AssertionError(f"tickwork {p.role} exited with {p.proc.returncode}:\n"
                                     f"{p.out()}\n{p.err()}")
            try:
                return httpx.get(f"{p.url}{path}", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        poll(live, timeout, f"tickwork {p.role} to serve {path}")

    def close(self) -> None:
        for p in self.started:
            if p.alive():
                p.kill()


def procs_fixture(cwd: Path, env: Mapping[str, str] | None = None) -> Iterator[Procs]:
    procs = Procs(cwd, dict(env or {}))
    try:
        yield procs
    finally:
        procs.close()
