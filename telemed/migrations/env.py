"""Alembic environment: migrations run on the connection handed in by telemed.db.upgrade."""

from __future__ import annotations

from alembic import context

from telemed.models import all_metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=all_metadata(),
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
