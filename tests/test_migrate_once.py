"""Migrations run once however many processes start together, and every other role refuses
a database that is empty or behind, saying what to run."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect

from schema.db import Database
from schema.migrate import SchemaMismatch, current, head, require_current, upgrade
from tests.engine_helpers import in_threads


def bounded(url: str) -> str:
    """On PostgreSQL, a lock wait ends after 10 s: a migration that waits on another forever
    fails the test instead of hanging it (the migration lock is held for well under that)."""
    return f"{url}%20-clock_timeout%3D10s" if url.startswith("postgres") else url


def test_two_processes_upgrading_at_once_migrate_once(db_url: str) -> None:
    dbs = [Database(bounded(db_url)), Database(bounded(db_url))]
    try:
        assert current(dbs[0]) is None  # a fresh database
        errors = in_threads(*(lambda d=d: upgrade(d) for d in dbs))
        assert errors == []
        assert current(dbs[0]) == current(dbs[1]) == head()
        require_current(dbs[1], "test")  # every other role accepts it
        assert "ticks" in inspect(dbs[0].engine).get_table_names()
        upgrade(dbs[0])  # and running it again changes nothing
        assert current(dbs[0]) == head()
    finally:
        for d in dbs:
            d.close()


def test_an_empty_database_is_refused(db_url: str) -> None:
    db = Database(db_url)
    try:
        with pytest.raises(SchemaMismatch, match="no tickwork tables yet") as err:
            require_current(db, "the-test-db")
        assert "the-test-db" in str(err.value)
        assert "tickwork db upgrade" in str(err.value)
    finally:
        db.close()


def test_a_database_behind_is_refused_with_what_to_run(db_url: str) -> None:
    db = Database(db_url)
    try:
        upgrade(db, "0002")
        assert current(db) == "0002"
        with pytest.raises(SchemaMismatch, match="run `tickwork db upgrade`") as err:
            require_current(db, "the-test-db")
        assert "0002" in str(err.value) and str(head()) in str(err.value)
        upgrade(db)
        require_current(db, "the-test-db")
    finally:
        db.close()
