"""tick counts per stack and day; ticks released without using an attempt

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

COUNTS = ("ticks_succeeded", "ticks_failed", "ticks_timed_out", "ticks_cancelled",
          "ticks_skipped_queued", "ticks_skipped_running")
RUNNING = "previous tick still running"


def upgrade() -> None:
    with op.batch_alter_table("ticks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("released", sa.Integer(), server_default="0",
                                      nullable=False))
    with op.batch_alter_table("stack_usage", schema=None) as batch_op:
        for name in COUNTS:
            batch_op.add_column(sa.Column(name, sa.Integer(), server_default="0",
                                          nullable=False))
    # The ticks already finished, counted into their stack's day (of finishing, or of
    # queueing for a skipped tick).
    bind = op.get_bind()
    when = "COALESCE(finished_at, queued_at) / 86400"
    # CAST truncates on SQLite (the times are positive) and rounds on PostgreSQL.
    day = (f"CAST(FLOOR({when}) AS INTEGER)" if bind.dialect.name == "postgresql"
           else f"CAST({when} AS INTEGER)")
    column = ("CASE status WHEN 'succeeded' THEN 'ticks_succeeded' "
              "WHEN 'failed' THEN 'ticks_failed' WHEN 'timed_out' THEN 'ticks_timed_out' "
              "WHEN 'cancelled' THEN 'ticks_cancelled' "
              f"WHEN 'skipped' THEN CASE WHEN reason = '{RUNNING}' "
              "THEN 'ticks_skipped_running' ELSE 'ticks_skipped_queued' END END")
    rows = bind.execute(sa.text(
        f"SELECT stack_id, {day} AS day, {column} AS col, COUNT(*) FROM ticks "
        "WHERE status IN ('succeeded', 'failed', 'timed_out', 'cancelled', 'skipped') "
        f"GROUP BY stack_id, {day}, {column}")).all()
    for stack_id, d, col, n in rows:
        found = bind.execute(sa.text("SELECT 1 FROM stack_usage WHERE stack_id = :s AND day = :d"),
                             {"s": stack_id, "d": d}).first()
        if found is None:
            bind.execute(sa.text("INSERT INTO stack_usage (stack_id, day) VALUES (:s, :d)"),
                         {"s": stack_id, "d": d})
        bind.execute(sa.text(f"UPDATE stack_usage SET {col} = {col} + :n "
                             "WHERE stack_id = :s AND day = :d"),
                     {"n": n, "s": stack_id, "d": d})


def downgrade() -> None:
    with op.batch_alter_table("stack_usage", schema=None) as batch_op:
        for name in COUNTS:
            batch_op.drop_column(name)
    with op.batch_alter_table("ticks", schema=None) as batch_op:
        batch_op.drop_column("released")
