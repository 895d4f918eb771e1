"""Alembic environment: migrations run on the connection handed in by telemed.db.upgrade."""

from __future__ import annotations

from alembic import context

from telemed.db import Base
from telemed.models import register_all

register_all()
connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
