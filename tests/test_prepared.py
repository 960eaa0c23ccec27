"""Hot-path statements run on the driver's cursor behave as SQLAlchemy's own execution does;
grouped writes share a transaction without one failure touching the others."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, insert, select, update

from orchestrator.store.groupcommit import GroupCommit
from orchestrator.store.prepared import Prepared
from schema import tables as t
from schema.db import Database, touch
from schema.migrate import upgrade

_NEW_STACK = Prepared(insert(t.stacks).returning(t.stacks.c.id, t.stacks.c.interval_s))
_RENAME = Prepared(update(t.stacks).where(t.stacks.c.id == bindparam("sid"))
                   .values(name=bindparam("new"), updated_at=bindparam("now"))
                   .returning(*t.stacks.c))
_BY_STATE = Prepared(select(t.stacks.c.name).where(t.stacks.c.execution_state == "running")
                     .order_by(t.stacks.c.id))


def _stack(name: str, state: str = "running") -> dict[str, object]:
    return {"name": name, "goal": "g", "execution_state": state, "created_at": 1.0,
            "updated_at": 1.0}


def test_inserts_take_only_the_columns_given_and_return_rows(db: Database) -> None:
    with db.write() as conn:
        sid, interval = _NEW_STACK.one(conn, _stack("a")) or (None, None)
        _NEW_STACK.many(conn, [_stack("b"), _stack("c", "paused")])
        assert interval is None  # not given: the column's default, not a bound NULL of ours
        assert _BY_STATE.all(conn, {}) == [("a",), ("b",)]  # the literal 'running' is bound
        rows = _RENAME.dicts(conn, {"sid": sid, "new": "renamed", "now": 2})
        assert [(r["id"], r["name"], r["updated_at"]) for r in rows] == [(sid, "renamed", 2.0)]
        assert _RENAME.rowcount(conn, {"sid": 10_000, "new": "x", "now": 3}) == 0
    with db.read() as conn:  # it ran in the caller's transaction, which committed
        assert conn.execute(select(t.stacks.c.name).where(t.stacks.c.id == sid)).scalar() \
            == "renamed"


def test_expanding_parameters_are_refused(db: Database) -> None:
    stmt = Prepared(select(t.stacks.c.id).where(t.stacks.c.id.in_(bindparam("ids",
                                                                             expanding=True))))
    with db.read() as conn, pytest.raises(ValueError, match="IN lists"):
        stmt.all(conn, {"ids": [1]})


def _group(db: Database, fn: Any) -> GroupCommit[str, int]:
    """Writes grouped on the database's writer threads: `fn(conn, name)` for each."""
    return GroupCommit(lambda names: db.transact_sync(
        lambda conn: [fn(conn, name) for name in names]), db.writer, window_s=0.005)


def test_grouped_writes_each_get_their_result_and_a_failure_stays_alone(
        db: Database) -> None:
    def add(conn: Any, name: str) -> int:
        if name == "broken":
            raise RuntimeError("this write fails")
        return int(_NEW_STACK.scalar(conn, _stack(name)))

    group = _group(db, add)

    async def writes() -> list[object]:
        return await asyncio.gather(
            *(group.write(f"s{i}") for i in range(20)), group.write("broken"),
            *(group.write(f"t{i}") for i in range(5)), return_exceptions=True)

    results = asyncio.run(writes())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and "this write fails" in str(errors[0])
    ids = [r for r in results if isinstance(r, int)]
    assert len(set(ids)) == 25
    with db.read() as conn:  # every other write committed, the broken one wrote nothing
        assert sorted(conn.execute(select(t.stacks.c.id)).scalars()) == sorted(ids)


def test_grouped_writes_share_a_transaction_and_see_the_writes_before_them(
        db: Database) -> None:
    commits: list[frozenset[str]] = []
    db.add_commit_listener(commits.append)

    def add_and_count(conn: Any, name: str) -> int:
        _NEW_STACK.one(conn, _stack(name))
        touch(conn, "stacks")
        return len(_BY_STATE.all(conn, {}))

    group = _group(db, add_and_count)

    async def writes() -> list[int]:
        return await asyncio.gather(*(group.write(f"s{i}") for i in range(10)))

    counts = asyncio.run(writes())
    assert counts == list(range(1, 11))  # in turn, each seeing those before it
    assert 1 <= len(commits) < 10  # ...in fewer transactions than writes


def test_grouped_writes_after_close_fail_instead_of_hanging(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'closed.db'}", group_commit_ms=5)
    upgrade(db)
    group = _group(db, lambda conn, name: 0)
    db.close()

    async def write() -> None:
        await asyncio.wait_for(group.write("late"), timeout=10)

    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(write())


def test_a_group_waits_longer_the_busier_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait for company follows the arrival rate: a quiet process commits at once, one
    taking 400 steps a second waits 100 ms (the window's cap)."""
    from orchestrator.store import groupcommit

    now = [1000.0]
    monkeypatch.setattr(groupcommit.time, "monotonic", lambda: now[0])
    group: GroupCommit[str, int] = GroupCommit(lambda items: [], None, window_s=0.1)  # type: ignore[arg-type]
    group._arrived(now[0])
    assert group.wait_s() < 0.001  # one write in a quiet process
    for _ in range(4000):  # ten seconds of 400 writes a second
        now[0] += 1 / 400
        group._arrived(now[0])
    assert 0.09 <= group.wait_s() <= 0.1
    now[0] += 30  # quiet again
    assert group.wait_s() < 0.001
