"""A whole tickwork (beat, workers, dashboard) on a free loopback port, in a background thread.

For browser tests and the screenshot script: the runtime runs on the real clock with its own
event loop in its own thread, so a synchronous browser driver can use the main thread.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn
from pydantic import SecretStr

from dashboard.api import create_app
from orchestrator.config import Settings
from orchestrator.runtime import Runtime

TOKEN = "browser-test-token"
START_TIMEOUT_S = 20.0
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


class LiveServer:
    def __init__(self, db_path: Path, *, tick_interval: int = 1,
                 sim_latency_ms: str = "20,60") -> None:
        self.settings = Settings(  # type: ignore[call-arg]
            _env_file=None, database_url=f"sqlite:///{db_path}", tick_interval=tick_interval,
            sim_latency_ms=sim_latency_ms, admin_token=SecretStr(TOKEN), poll_s=0.05)
        self.url = ""
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._server: uvicorn.Server | None = None
        self._thread = threading.Thread(target=self._run, name="tickwork-live", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._started.set()

    async def _main(self) -> None:
        rt = Runtime.build(self.settings, env={})  # no provider keys: the simulated model
        try:
            await rt.start()
            server = uvicorn.Server(uvicorn.Config(
                create_app(rt), host="127.0.0.1", port=0, lifespan="on", log_level="warning",
                timeout_graceful_shutdown=2))
            self._server = server
            serving = asyncio.create_task(server.serve())
            while not server.started and not serving.done():
                await asyncio.sleep(0.01)
            if serving.done():
                serving.result()
            port = server.servers[0].sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            self._started.set()
            await serving
        finally:
            await rt.stop(grace_s=2.0)
            rt.close()

    def __enter__(self) -> LiveServer:
        self._thread.start()
        if not self._started.wait(START_TIMEOUT_S):
            raise TimeoutError("the server did not start in time")
        if self._error is not None:
            raise RuntimeError("the server failed to start") from self._error
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(START_TIMEOUT_S)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def api(self) -> httpx.Client:
        """A bearer-token API client for setting things up."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=10.0)
