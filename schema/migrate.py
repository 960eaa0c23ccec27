"""Alembic migrations, run programmatically against a `Database`.

Only `tickwork db upgrade` and `tickwork up` migrate (`upgrade`), under a database lock so
that processes starting together migrate once: on PostgreSQL a transaction-scoped advisory
lock, on SQLite the write lock (`BEGIN IMMEDIATE`). Every other role and command calls
`require_current`, which refuses a database that is missing, empty, behind or ahead with a
message that says what to run.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from schema.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x7469636D  # "tickm"


class SchemaMismatch(Exception):
    """The database's schema is not the one this tickwork needs; the message says what to do."""


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the database to `revision`, once however many processes ask at the same time."""
    cfg = _config()
    with db.engine.connect() as conn:
        conn = conn.execution_options(tickwork_write=True)  # SQLite: BEGIN IMMEDIATE
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)


def revision(db: Database, message: str) -> None:
    """Autogenerate a new migration from the difference between tables.py and `db`."""
    cfg = _config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)


def current(db: Database) -> str | None:
    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def require_current(db: Database, where: str) -> None:
    """Raise SchemaMismatch unless the database is at the latest revision. `where` names the
    database in the message (its URL, password hidden)."""
    found, wanted = current(db), head()
    if found == wanted:
        return
    if found is None:
        raise SchemaMismatch(f"the database at {where} has no tickwork tables yet: run "
                             "`tickwork db upgrade` (or start `tickwork up`) first")
    known = {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}
    if found not in known:
        raise SchemaMismatch(f"the database at {where} is at revision {found}, written by a "
                             f"newer tickwork than this one (which knows up to {wanted}): "
                             "upgrade tickwork")
    raise SchemaMismatch(f"the database at {where} is at revision {found}, behind this "
                         f"tickwork's {wanted}: run `tickwork db upgrade`")
