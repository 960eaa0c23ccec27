"""`tickwork sim-llm`: serve the simulated OpenAI/Groq API (agents.llm.simserver) on loopback,
on its own lean HTTP/1.1 server (agents.llm.simhttp) on uvloop, cheap enough to share the box
with the system under load.

The flags set the starting knobs for both providers (`--rpm`/`--tpm` per provider); they can be
changed while it runs with POST /_sim/config. The banner prints the environment lines that
point the SDKs (and so tickwork) at it. SIGINT and SIGTERM stop it cleanly with exit code 0.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.text import Text

from agents.llm import simhttp
from agents.llm.latency import Latency
from agents.llm.simknobs import BOTH, PROVIDERS, SimConfig, describe_errors
from agents.llm.simserver import SimServer
from orchestrator.cli_common import console, err_console, usage_error
from orchestrator.cli_serve import Shutdown, bind, run_loop
from schema.clock import SystemClock

GRACE_S = 2  # open requests (a hung one included) get this long once asked to stop


def _latency(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(Latency.parse(value))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _per_provider(ctx: typer.Context, flag: str, values: list[str]) -> dict[str, int]:
    """["groq=30", "openai=60", "100"] -> {"groq": 30, "openai": 60, "both": 100}."""
    limits: dict[str, int] = {}
    for value in values:
        provider, sep, number = value.rpartition("=")
        provider = provider.strip().lower() if sep else BOTH
        if provider not in (*PROVIDERS, BOTH):
            usage_error(ctx, f"Invalid value for '{flag}': {value!r}: the provider must be "
                        f"groq, openai or both (PROVIDER=N)")
        try:
            limits[provider] = int(number)
        except ValueError:
            usage_error(ctx, f"Invalid value for '{flag}': {value!r} is not PROVIDER=N with a "
                        "whole number N")
    return limits


def _config(ctx: typer.Context, shared: dict[str, Any], down: list[str], rpm: list[str],
            tpm: list[str]) -> SimConfig:
    data: dict[str, Any] = {BOTH: {k: v for k, v in shared.items() if v is not None}}
    data.update({p: {} for p in PROVIDERS})
    for value in down:
        name = value.strip().lower()
        if name not in PROVIDERS:
            usage_error(ctx, f"Invalid value for '--down': {value!r} is not groq or openai")
        data[name]["down"] = True
    for flag, knob, values in (("--rpm", "rpm", rpm), ("--tpm", "tpm", tpm)):
        for section, number in _per_provider(ctx, flag, values).items():
            data[section][knob] = number
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:
        usage_error(ctx, f"Invalid knobs: {describe_errors(exc)}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _base(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def banner(host: str, port: int, config: SimConfig, seed: int) -> None:
    base = _base(host, port)
    console.print(Text.assemble(("tickwork sim-llm", "bold"), "  ", (
        "a SIMULATED model: OpenAI- and Groq-compatible answers, no real provider is called",
        "yellow")), soft_wrap=True)
    console.print(Text.assemble("  openai       ", (f"{base}/v1/chat/completions", "cyan")),
                  soft_wrap=True)
    console.print(Text.assemble("  groq         ", (f"{base}/openai/v1/chat/completions",
                                                    "cyan")), soft_wrap=True)
    console.print(f"  knobs        {base}/_sim/config  (GET, or POST a partial update)   "
                  f"stats {base}/_sim/stats   seed {seed}", soft_wrap=True, markup=False)
    for provider in PROVIDERS:
        knobs = config.knobs(provider)
        parts = [f"latency {knobs.latency} ms"]
        for name in ("error_rate", "rate_limit_rate", "hang_rate"):
            if getattr(knobs, name):
                parts.append(f"{name} {getattr(knobs, name):g}")
        parts += [f"{n} {getattr(knobs, n)}" for n in ("rpm", "tpm") if getattr(knobs, n)]
        if knobs.down:
            parts.append("DOWN (503)")
        console.print(f"  {provider:<12} " + ", ".join(parts), soft_wrap=True, markup=False)
    console.print("Point tickwork (and the SDKs) at it; any non-empty API key works:",
                  soft_wrap=True)
    for line in (f"GROQ_BASE_URL={base}", f"OPENAI_BASE_URL={base}/v1",
                 "GROQ_API_KEY=sim", "OPENAI_API_KEY=sim"):
        console.print(Text(f"  export {line}", style="bold"), soft_wrap=True)
    console.print(Text("  press Ctrl-C to stop", style="dim"), soft_wrap=True)


async def _serve(sim: SimServer, sock: socket.socket) -> None:
    shutdown = Shutdown(asyncio.get_running_loop())
    with shutdown.installed():
        await simhttp.serve(sim, sock, shutdown.requested, grace_s=GRACE_S)


def sim_llm(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback by "
                                      "default: the simulator has no authentication).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="Port (0: any free one).")] = 8100,
    latency_ms: Annotated[str | None, typer.Option(
        "--latency-ms", callback=_latency, metavar="MEDIAN[,P99]",
        help='Answer latency in ms, log-normal between median and p99 (default "200,600").',
    )] = None,
    error_rate: Annotated[float | None, typer.Option(
        "--error-rate", min=0.0, max=1.0, help="Share of requests answered 500.")] = None,
    rate_limit_rate: Annotated[float | None, typer.Option(
        "--rate-limit-rate", min=0.0, max=1.0,
        help="Share of requests answered 429 with retry-after.")] = None,
    retry_after_s: Annotated[float | None, typer.Option(
        "--retry-after-s", min=0.0, max=3600.0,
        help="The retry-after of those 429s, seconds (default 2).")] = None,
    hang_rate: Annotated[float | None, typer.Option(
        "--hang-rate", min=0.0, max=1.0,
        help="Share of requests that never answer (until the client gives up).")] = None,
    hang_s: Annotated[float | None, typer.Option(
        "--hang-s", min=0.001, max=86_400.0,
        help="How long a hung request holds on before a 504 (default 600).")] = None,
    down: Annotated[list[str] | None, typer.Option(
        "--down", metavar="groq|openai", help="Start with this provider down (503 at once); "
        "repeat for both.")] = None,
    rpm: Annotated[list[str] | None, typer.Option(
        "--rpm", metavar="PROVIDER=N", help="Enforce N requests per minute (groq=, openai= "
        "or both=); repeatable.")] = None,
    tpm: Annotated[list[str] | None, typer.Option(
        "--tpm", metavar="PROVIDER=N", help="Enforce N tokens per minute (groq=, openai= or "
        "both=); repeatable.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the answers and the draws.")
                    ] = 0,
) -> None:
    """Serve a simulated OpenAI/Groq-compatible chat API for tests and load tests."""
    config = _config(ctx, {"latency_ms": latency_ms, "error_rate": error_rate,
                           "rate_limit_rate": rate_limit_rate, "retry_after_s": retry_after_s,
                           "hang_rate": hang_rate, "hang_s": hang_s},
                     down or [], rpm or [], tpm or [])
    if not _is_loopback(host):
        err_console.print(Text(f"Warning: listening on {host}, beyond this machine; the "
                               "simulator has no authentication.", style="yellow"),
                          soft_wrap=True)
    sock = bind(host, port)
    try:
        banner(host, sock.getsockname()[1], config, seed)
        run_loop(_serve(SimServer(config, SystemClock(), seed), sock))
    finally:
        sock.close()
