"""Every ORM module, imported in one place so Alembic and the app see all tables."""

from __future__ import annotations


def register_all() -> None:
    import telemed.consultations.models
    import telemed.identity.models  # noqa: F401
