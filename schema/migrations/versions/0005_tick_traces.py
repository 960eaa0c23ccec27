"""the trace of a tick's latest traced attempt

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ticks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trace_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("trace_span_id", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ticks", schema=None) as batch_op:
        batch_op.drop_column("trace_span_id")
        batch_op.drop_column("trace_id")
