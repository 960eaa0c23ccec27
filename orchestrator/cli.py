"""The `tickwork` command line: the composition root of every process.

    tickwork up | beat | worker | dashboard     run the system, or one of its roles
    tickwork db upgrade                         migrate the database to the latest revision
    tickwork stacks ... / tickwork ticks ...    manage stacks and inspect ticks
    tickwork sim-llm                            serve the simulated OpenAI/Groq API

Settings come from the environment (TICKWORK_*, and `.env`); the admin commands write straight
to the database at TICKWORK_DATABASE_URL. `main()` configures logging once: TICKWORK_LOG_LEVEL,
by default INFO for the long-running roles and WARNING for the short commands.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer
from rich.text import Text

from orchestrator import cli_serve, cli_sim, cli_stacks, cli_ticks, cli_top
from orchestrator.cli_common import console, load_settings, mask_url, open_database
from schema.migrate import current, head

app = typer.Typer(
    name="tickwork",
    help="Run many autonomous LLM agent teams (stacks) on a fixed cadence.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="The database: migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(cli_stacks.app, name="stacks")
app.add_typer(cli_ticks.app, name="ticks")
app.command("sim-llm")(cli_sim.sim_llm)
app.command("top")(cli_top.top)

LONG_RUNNING = frozenset({"up", "beat", "worker", "dashboard"})
LIBRARY_LOGGERS = ("alembic", "apscheduler", "httpx", "httpcore", "openai", "groq", "aiohttp",
                   "urllib3", "uvicorn.access")

Host = Annotated[str, typer.Option("--host", help="Address to listen on.")]
Port = Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free one).")]
MetricsPort = Annotated[int | None, typer.Option(
    "--metrics-port", min=0, max=65535,
    help="Serve this process's Prometheus /metrics on this port (0: any free one), from a "
         "thread of its own; off unless given.")]
MetricsHost = Annotated[str, typer.Option(
    "--metrics-host", help="Address /metrics listens on (with --metrics-port).")]
Interval = Annotated[int | None, typer.Option(
    "--interval", min=1, max=86_400,
    help="The beat, whole seconds (default: TICKWORK_TICK_INTERVAL, else 10). It is recorded "
         "in the database, where every other process and command reads it.")]


@app.command()
def up(host: Host = "127.0.0.1", port: Port = 8000, interval: Interval = None) -> None:
    """Everything in one process: beat, workers and the dashboard."""
    cli_serve.serve(cli_serve.UP, load_settings(tick_interval=interval), host, port)


@app.command()
def beat(interval: Interval = None, metrics_port: MetricsPort = None,
         metrics_host: MetricsHost = "127.0.0.1") -> None:
    """The beat alone: fans out one tick per due stack every interval. With --metrics-port,
    its /metrics: whether it leads, its last slot, and the ticks, skips and stacks the
    database counts."""
    cli_serve.serve(cli_serve.BEAT, load_settings(tick_interval=interval),
                    metrics=cli_serve.metrics_address(metrics_host, metrics_port))


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", "-c", min=1, max=100_000,
        help="Most ticks run at once (overrides TICKWORK_MAX_CONCURRENT_TICKS).")] = None,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = "127.0.0.1",
) -> None:
    """A worker alone: claims queued ticks and runs them (with the reaper). With
    --metrics-port, its /metrics: its ticks' duration and lateness, its LLM requests,
    fallbacks and breakers, its running ticks."""
    cli_serve.serve(cli_serve.WORKER, load_settings(max_concurrent_ticks=concurrency),
                    metrics=cli_serve.metrics_address(metrics_host, metrics_port))


@app.command()
def dashboard(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """The web dashboard and JSON API alone (no beat, no workers)."""
    cli_serve.serve(cli_serve.DASHBOARD, load_settings(), host, port)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database if needed and migrate it to the latest revision (safe to run at any
    time, from any number of processes: they migrate once)."""
    settings = load_settings()
    with open_database(settings, create=True) as db:
        revision = current(db)
    note = " (latest)" if revision == head() else ""
    console.print(Text(f"database {mask_url(settings.database_url)} is at revision "
                       f"{revision}{note}"), soft_wrap=True)


def _command(argv: list[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def configure_logging(command: str | None) -> None:
    default = "INFO" if command in LONG_RUNNING else "WARNING"
    name = os.environ.get("TICKWORK_LOG_LEVEL", default).strip().upper() or default
    level = logging.getLevelNamesMapping().get(name)
    chosen = level if level is not None else logging.getLevelNamesMapping()[default]
    logging.basicConfig(format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.root.setLevel(chosen)
    if level is None:
        logging.getLogger("tickwork").warning(
            "TICKWORK_LOG_LEVEL=%r is not a log level; using %s", name, default)
    # Libraries log every HTTP request and scheduler run at INFO: they stay at WARNING unless
    # TICKWORK_LOG_LEVEL=DEBUG asks for everything.
    quiet = logging.DEBUG if logging.root.level <= logging.DEBUG else logging.WARNING
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(max(quiet, logging.root.level))


def main() -> None:
    configure_logging(_command(sys.argv[1:]))
    try:
        app(prog_name="tickwork")
    except KeyboardInterrupt:
        sys.exit(130)
