"""Tables of a data subject's rights: consent to processing, requests about their data,
restrictions of their card, and delegations to trusted persons."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from telemed.db import Base, UTCDateTime

ID = String(36)


class ProcessingConsent(Base):
    """One acceptance of one version of the consent text (152-FZ art. 9): append-only,
    so the history of what the person agreed to, when and from where is kept."""

    __tablename__ = "processing_consents"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("user_accounts.id"))
    version: Mapped[str] = mapped_column(String(64))
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))

    # One acceptance per version: accepting it again (or twice at once) adds nothing.
    __table_args__ = (
        Index("ix_processing_consents_user_version", "user_id", "version", unique=True),
    )


class RightsRequest(Base):
    """A request of a data subject about their data: a correction (resolved by the
    clinic's administrator) or an erasure (honoured at once: what may be erased is,
    the card is restricted instead of deleted). ``filed_by`` is whoever filed it: the
    patient, or an administrator on the patient's behalf, who then may not resolve it."""

    __tablename__ = "rights_requests"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinics.id"))
    kind: Mapped[str] = mapped_column(String(16))
    details: Mapped[str | None] = mapped_column(Text)
    # open -> done | rejected (corrections); restricted (erasures).
    status: Mapped[str] = mapped_column(String(16))
    # Shown to the patient: why the request ended as it did (Russian).
    reason: Mapped[str | None] = mapped_column(Text)
    filed_by: Mapped[str] = mapped_column(ID)
    filed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    resolved_by: Mapped[str | None] = mapped_column(ID)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_rights_requests_patient", "patient_id", "filed_at"),
        Index("ix_rights_requests_clinic", "clinic_id", "status", "filed_at"),
    )


class CardRestriction(Base):
    """The patient restricted processing of their card: only they and their treating
    doctors read it. Medical records are kept (retention), so this replaces deletion."""

    __tablename__ = "card_restrictions"

    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinics.id"), index=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("rights_requests.id"))
    restricted_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Delegation(Base):
    """A patient's grant to another account: read these sections of my card until
    ``expires_at``, unless revoked earlier. Never changed but by revocation."""

    __tablename__ = "delegations"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"))
    granted_by: Mapped[str] = mapped_column(ForeignKey("user_accounts.id"))
    delegate_id: Mapped[str] = mapped_column(ForeignKey("user_accounts.id"))
    # Space-separated section names (telemed.privacy.delegation.SECTIONS).
    sections: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_delegations_delegate", "delegate_id", "expires_at"),
        Index("ix_delegations_patient", "patient_id", "created_at"),
    )
