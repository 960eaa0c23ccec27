"""Alembic environment: the connection comes from `schema.migrate`, never from a global."""

from __future__ import annotations

from alembic import context

from schema.tables import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through `tickwork db upgrade` (schema.migrate.upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
