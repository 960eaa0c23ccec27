"""The outbox on PostgreSQL without a global lock: transactions commit their events in any
order, and a reader still never misses one nor sees one twice, so `Last-Event-ID` resumes
exactly (see orchestrator/store/postgres.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from sqlalchemy import Connection, func, select

from orchestrator.store import open_store, outbox
from orchestrator.store.outbox import emit
from schema import tables as t
from schema.db import Database
from tests.pg_helpers import Held, pg_url

__all__ = ["pg_url"]  # fixture


def _emit(tag: str) -> Any:
    def body(conn: Connection) -> None:
        emit(conn, time.time(), "stack.updated", None, None, {"tag": tag})
    return body


def _tags(rows: list[dict[str, Any]]) -> list[str]:
    import orjson
    return [orjson.loads(r["data"])["tag"] for r in rows]


def test_an_event_is_not_delivered_before_an_older_transaction_ends(pg_url: str) -> None:
    db = Database(pg_url)
    store = open_store(db)
    try:
        older = Held(pg_url, _emit("older"))  # its transaction began first: a smaller id
        assert older.ran.wait(10)
        Held(pg_url, _emit("newer")).finish()  # ...but commits second
        with store.read() as conn:
            committed = conn.execute(select(func.count()).select_from(t.events)).scalar_one()
            assert committed == 1  # "newer" is there to read
            assert outbox.events_after(conn, 0) == []  # but not safe to deliver yet
            assert outbox.last_event_id(conn) == 0
        older.finish()
        with store.read() as conn:
            rows = outbox.events_after(conn, 0)
            assert _tags(rows) == ["older", "newer"]
            assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
            assert outbox.last_event_id(conn) == rows[-1]["id"]
            assert outbox.events_after(conn, rows[0]["id"]) == rows[1:]  # resumes exactly
    finally:
        db.close()


def test_a_rolled_back_transaction_holds_nothing_back(pg_url: str) -> None:
    db = Database(pg_url)
    store = open_store(db)
    try:
        doomed = Held(pg_url, _emit("doomed"))
        assert doomed.ran.wait(10)
        Held(pg_url, _emit("kept")).finish()
        doomed.rollback()
        with store.read() as conn:
            assert _tags(outbox.events_after(conn, 0)) == ["kept"]
    finally:
        db.close()


def test_many_writers_in_several_processes_lose_and_repeat_nothing(pg_url: str) -> None:
    db = Database(pg_url)
    store = open_store(db)
    writers = [subprocess.Popen([sys.executable, "-m", "tests.outbox_writer", pg_url, str(seed),
                                 "40"]) for seed in range(4)]
    seen: list[int] = []
    cursor = 0
    try:
        def read() -> None:
            nonlocal cursor
            with store.read() as conn:
                for row in outbox.events_after(conn, cursor, 100):
                    seen.append(row["id"])
                    cursor = row["id"]

        deadline = time.monotonic() + 60
        while any(w.poll() is None for w in writers):
            assert time.monotonic() < deadline, "the writers did not finish"
            read()
        assert all(w.returncode == 0 for w in writers)
        read()
        with store.read() as conn:
            committed = list(conn.execute(select(t.events.c.id).order_by(t.events.c.id))
                             .scalars())
        assert len(committed) > 100
        assert seen == committed  # every committed event, once, in order
    finally:
        for w in writers:
            if w.poll() is None:
                w.kill()
        db.close()
