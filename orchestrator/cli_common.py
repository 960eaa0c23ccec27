"""What every CLI command shares: the consoles, settings, the database, and error messages.

A command never shows a traceback for something the user can fix: bad input, an unknown id, an
invalid setting in the environment, a database that cannot be reached. Each becomes one red line
on stderr and exit code 1 (typer's own usage errors exit 2).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import typer
from alembic.util.exc import CommandError
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_settings import SettingsError
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)

from agents.registry import DEFAULT_TEAM, AgentRegistry
from orchestrator.config import ProviderEnv, Settings
from orchestrator.errors import UserError
from orchestrator.stacks import Agents
from orchestrator.store import Store, open_store
from schema.clock import SystemClock
from schema.db import Database, sqlite_file
from schema.migrate import SchemaMismatch, require_current, upgrade
from schema.models import TickSummary

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

ENV_PREFIX = "TICKWORK_"
_SECRET_SETTINGS = frozenset({"admin_token", "database_url", "redis_url"})


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one red line on stderr and exit with `code`."""
    err_console.print(Text(f"Error: {message}", style="bold red"), soft_wrap=True)
    raise typer.Exit(code)


def usage_error(ctx: typer.Context, message: str) -> NoReturn:
    """A usage error, shown the way typer shows its own (exit code 2)."""
    ctx.fail(message)


def mask_url(url: str) -> str:
    """The URL with its password hidden, fit to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def first_line(exc: BaseException) -> str:
    """The useful first line of an exception's message (a DBAPI error's own, if it has one)."""
    source: BaseException = exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc
    lines = [ln.strip() for ln in str(source).splitlines() if ln.strip()]
    return lines[0] if lines else type(source).__name__


def _reason(error: Any) -> str:
    msg = str(error.get("msg", ""))
    return msg.removeprefix("Value error, ")


def describe_validation(exc: ValidationError, label: Callable[[str], str] = str) -> str:
    """A ValidationError as one line: `label(field): message; ...`."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error.get("loc", ())) or "input"
        parts.append(f"{label(field)}: {_reason(error)}")
    return "; ".join(parts)


def _setting_errors(exc: ValidationError, prefix: str, given: dict[str, Any]) -> str:
    parts = []
    for error in exc.errors():
        field = str(error.get("loc", ("?",))[0])
        shown = f"{prefix}{field.upper()}"
        secret = field in _SECRET_SETTINGS or field.endswith("_key")
        if not secret and "input" in error and field not in given:
            shown += f"={error['input']!r}"
        parts.append(f"{shown}: {_reason(error)}")
    return "invalid setting " + "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment (and .env), with command-line overrides on top; the
    providers' variables are checked too. Anything invalid is one line and exit code 1."""
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**values)
        ProviderEnv()
    except ValidationError as exc:
        prefix = ENV_PREFIX if exc.title == "Settings" else ""
        fail(_setting_errors(exc, prefix, values))
    except SettingsError as exc:
        fail(f"invalid setting: {exc}")
    return settings


def database_message(url: str, exc: BaseException) -> str:
    if isinstance(exc, OperationalError | InterfaceError):
        return f"cannot reach the database at {mask_url(url)}: {first_line(exc)}"
    if isinstance(exc, ArgumentError):
        return f"cannot use the database URL {mask_url(url)}: {first_line(exc)}"
    if isinstance(exc, CommandError):
        return f"cannot migrate the database at {mask_url(url)}: {first_line(exc)}"
    return f"database error at {mask_url(url)}: {first_line(exc)}"


@contextlib.contextmanager
def user_errors(label: Callable[[str], str] = str) -> Iterator[None]:
    """Turn the errors a user can cause into one line and exit code 1."""
    try:
        yield
    except UserError as exc:
        fail(str(exc))
    except ValidationError as exc:
        fail(describe_validation(exc, label))


@dataclass
class Admin:
    """The settings and the database (through its store) an admin command works on."""

    settings: Settings
    db: Database

    @property
    def store(self) -> Store:
        return open_store(self.db, lease_clock=self.settings.lease_clock)

    @property
    def beat_interval(self) -> int:
        """The configured beat: what stacks are checked and shown against when no beat has
        recorded the interval it runs at (the reads look that up in the database first)."""
        return self.settings.tick_interval

    @property
    def default_team(self) -> Sequence[str]:
        return DEFAULT_TEAM

    @property
    def agents(self) -> Agents:
        """What teams are checked against: the running workers' agents, or, while none runs,
        those this command can load (the built-ins, TICKWORK_AGENTS, entry points)."""
        try:
            registry = AgentRegistry.default(self.settings.agent_paths)
        except Exception as exc:
            fail(f"cannot load the agents (TICKWORK_AGENTS or a tickwork.agents plugin): {exc}")
        return Agents(registry.names(), self.settings.lease_s)

    def now(self) -> float:
        return SystemClock().now()

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        with self.store.write() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        with self.store.read() as conn:
            yield conn


def no_database_message(settings: Settings) -> str | None:
    """Why a SQLite database that is not there will not be made here, or None when it is
    there (or the URL names another kind of database)."""
    path = sqlite_file(settings.database_url)
    if path is None or path.exists():
        return None
    return (f"no tickwork database at {path} (TICKWORK_DATABASE_URL="
            f"{mask_url(settings.database_url)}, relative paths are from the current "
            "directory): run the command where `tickwork up` runs, set TICKWORK_DATABASE_URL "
            "to that database, or create one with `tickwork db upgrade`")


@contextlib.contextmanager
def open_database(settings: Settings, *, create: bool = False) -> Iterator[Database]:
    """A Database on the configured URL. With `create` (only `tickwork up` and `tickwork db
    upgrade`) it is made if missing and migrated to head; otherwise it must exist at the
    latest revision. Database errors become one line."""
    url = settings.database_url
    if not create and (missing := no_database_message(settings)) is not None:
        fail(missing)
    try:
        db = Database(url)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        fail(database_message(url, exc))
    try:
        if create:
            upgrade(db)
        else:
            require_current(db, mask_url(url))
        yield db
    except SchemaMismatch as exc:
        fail(str(exc))
    except (SQLAlchemyError, CommandError) as exc:
        fail(database_message(url, exc))
    finally:
        db.close()


@contextlib.contextmanager
def admin(label: Callable[[str], str] = str) -> Iterator[Admin]:
    """Settings, the database and user-error handling, for one short command."""
    settings = load_settings()
    with open_database(settings) as db, user_errors(label):
        publisher = None
        if settings.redis_url:
            from orchestrator.bus.redis import CommandPublisher
            publisher = CommandPublisher(settings.redis_url, prefix=settings.redis_prefix)
            db.add_commit_listener(publisher.publish)
        try:
            yield Admin(settings, db)
        finally:
            if publisher is not None:
                publisher.close()


# -- output -------------------------------------------------------------------------------


def print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    """The API's JSON shape of `value` on stdout, for scripts."""
    if isinstance(value, BaseModel):
        data = value.model_dump_json(indent=2)
    elif isinstance(value, dict):
        data = TypeAdapter(dict[str, Any]).dump_json(value, indent=2).decode()
    else:
        data = TypeAdapter(list[Any]).dump_json(list(value), indent=2).decode()
    sys.stdout.write(data + "\n")
    sys.stdout.flush()


def fmt_time(dt: datetime | None, *, short: bool = False) -> str:
    """Local time, with its zone; `short` (table cells): just the time of day for today's, no
    seconds for older ones."""
    if dt is None:
        return "—"
    local = dt.astimezone()
    if not short:
        return local.strftime("%Y-%m-%d %H:%M:%S %Z")
    if local.date() == datetime.now().astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%Y-%m-%d %H:%M")


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s"


STATUS_STYLE = {
    "running": "cyan", "queued": "yellow", "succeeded": "green", "ok": "green",
    "failed": "red", "timed_out": "red", "cancelled": "dim", "skipped": "dim",
    "paused": "yellow", "completed": "green",
}


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, "red"))


def ticks_table(ticks: Sequence[TickSummary], title: str | None = None) -> Table:
    table = Table("tick", "trigger", "status", "try", "queued", "late", "took", "reason",
                  title=title, title_justify="left")
    for tk in ticks:
        table.add_row(str(tk.id), tk.trigger, status_text(tk.status), str(tk.attempt),
                      fmt_time(tk.queued_at, short=True), fmt_ms(tk.lateness_ms),
                      fmt_ms(tk.duration_ms), Text(tk.reason or ""))
    return table
