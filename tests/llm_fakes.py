"""Fakes for the LLM chain's unit tests: a provider's model that follows a script, and a way
to run a call on the fake clock from one sleeper's deadline to the next.

Script steps: "ok"; "500" (server error); "429" or "429:4.5" (rate limited, with retry-after);
"400", "401", "404" (refused); "timeout"; "conn" (connection lost); "hang" (never answers; the
fake waits on the clock until cancelled); "gate" (waits until the test sets `gate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agents.llm.base import (
    Attempt,
    AuthError,
    BadRequest,
    ConnectionFailed,
    LLMRequest,
    LLMResponse,
    ProviderError,
    RateLimited,
    ServerError,
    Timeout,
)
from schema.clock import FakeClock

T = TypeVar("T")


class SteppingClock(FakeClock):
    """A FakeClock that knows its sleepers' deadlines, so a test can jump to the next one."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        super().__init__(start)
        self.pending: list[float] = []
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        deadline = self.now() + max(0.0, seconds)
        self.sleeps.append(seconds)
        self.pending.append(deadline)
        try:
            await super().sleep(seconds)
        finally:
            self.pending.remove(deadline)

    def call_later(self, seconds: float, callback: Callable[[], None]) -> Any:
        deadline = self.now() + max(0.0, seconds)
        self.pending.append(deadline)
        timer = super().call_later(seconds, callback)
        timer.add_done_callback(lambda _: self.pending.remove(deadline))
        return timer


async def settle() -> None:
    """Let every runnable task run until all wait (these fakes do no I/O)."""
    for _ in range(50):
        await asyncio.sleep(0)


async def run_on(clock: SteppingClock, awaitable: Awaitable[T], max_steps: int = 1000) -> T:
    """Await `awaitable`, moving the clock to the next sleeper's deadline whenever everything
    waits on it, so each wait lasts exactly as long as it asked on the fake clock."""
    task = asyncio.ensure_future(awaitable)
    for _ in range(max_steps):
        await settle()
        if task.done():
            return task.result()
        assert clock.pending, "the call waits on something other than the clock"
        clock.set(max(clock.now(), min(clock.pending)))
    task.cancel()
    raise AssertionError("the call did not finish")


def request(text: str = "plan the week", max_tokens: int = 100) -> LLMRequest:
    return LLMRequest(messages=[{"role": "user", "content": text}], schema_name="Answer",
                      output_schema={"type": "object"}, seed="1:1:planner",
                      max_tokens=max_tokens)


def _error(step: str) -> ProviderError:
    code, _, arg = step.partition(":")
    if code == "429":
        return RateLimited("HTTP 429: slow down", retry_after_s=float(arg) if arg else None)
    errors: dict[str, ProviderError] = {
        "500": ServerError("HTTP 500: boom"), "400": BadRequest("HTTP 400: bad"),
        "404": BadRequest("HTTP 404: no such model"), "401": AuthError("key refused"),
        "timeout": Timeout("timed out"), "conn": ConnectionFailed("connection refused"),
    }
    return errors[code]


class ScriptedModel:
    """One provider's model answering by script (then "ok" once the script runs out)."""

    def __init__(self, clock: FakeClock, script: list[str] | None = None, *,
                 provider: str = "groq", model: str = "m", input_tokens: int = 40,
                 output_tokens: int = 10) -> None:
        self.clock = clock
        self.script = list(script or [])
        self.provider, self.model = provider, model
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        self.calls = 0
        self.cancelled = 0
        self.gate = asyncio.Event()

    @property
    def label(self) -> str:
        return f"{self.provider}:{self.model}"

    @property
    def simulated(self) -> bool:
        return False

    def _attempt(self, status: str, started_at: float, error: str | None = None,
                 retry_after_s: float | None = None, ok: bool = False) -> Attempt:
        return Attempt(provider=self.provider, model=self.model, status=status,  # type: ignore[arg-type]
                       latency_ms=(self.clock.now() - started_at) * 1000,
                       started_at=started_at, error=error, retry_after_s=retry_after_s,
                       input_tokens=self.input_tokens if ok else 0,
                       output_tokens=self.output_tokens if ok else 0)

    async def complete(self, request: LLMRequest) -> LLMResponse:
        self.calls += 1
        started_at = self.clock.now()
        step = self.script.pop(0) if self.script else "ok"
        try:
            if step == "hang":
                await self.clock.sleep(10 * 86_400)
            elif step == "gate":
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if step in ("ok", "gate", "hang"):
            return LLMResponse(text='{"answer": "fine"}', provider=self.provider,
                               model=self.model,
                               attempts=[self._attempt("ok", started_at, ok=True)])
        error = _error(step)
        error.attempts = [self._attempt(error.status, started_at, str(error),
                                        error.retry_after_s)]
        raise error


async def statuses(llm: Any, n: int) -> list[str]:
    """The status each of `n` calls in a row ends with (an error's, or the last attempt's)."""
    out: list[str] = []
    for _ in range(n):
        try:
            response = await llm.complete(request())
        except ProviderError as exc:
            out.append(exc.status)
        else:
            out.append(response.attempts[-1].status)
    return out
