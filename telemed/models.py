"""Every ORM module, imported in one place so Alembic and the app see all tables."""

from __future__ import annotations

from sqlalchemy import MetaData


def register_all() -> None:
    import telemed.audit.models
    import telemed.booking.models
    import telemed.consultations.clinical_models
    import telemed.consultations.models
    import telemed.identity.models
    import telemed.identity.oidc
    import telemed.notifications.models
    import telemed.prescriptions.models
    import telemed.privacy.models  # noqa: F401


def all_metadata() -> list[MetaData]:
    """Every table the migrations must build: the application's and the card's."""
    import emr_bridge.tables
    from telemed.db import Base

    register_all()
    return [Base.metadata, emr_bridge.tables.metadata]
