"""Tables of e-prescriptions once they leave the consultation: the public verification
identifier of every finalized prescription revision and what became of it (dispensed
by a pharmacy, cancelled by the doctor, replaced by a correction), and the pharmacy a
pharmacist's account works for.

The prescription's content stays in ``clinical_prescriptions`` (revisions are never
changed once final); this table holds only the state a pharmacy acts on, so a dispense
is one compare-and-set on one row.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import Date, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from telemed.db import Base, UTCDateTime

ID = String(36)

# The stored states; "expired" is not stored: it is an active one past its validity.
ACTIVE = "active"
DISPENSED = "dispensed"
CANCELLED = "cancelled"
# Why a prescription was cancelled.
BY_DOCTOR = "doctor"
SUPERSEDED = "superseded"


class PrescriptionDispensing(Base):
    """One finalized prescription revision as a pharmacy sees it."""

    __tablename__ = "prescription_dispensing"

    prescription_id: Mapped[str] = mapped_column(
        ForeignKey("clinical_prescriptions.id"), primary_key=True
    )
    # Random, URL-safe, 192 bits: what the QR code carries; never the internal id.
    verification_id: Mapped[str] = mapped_column(String(64), unique=True)
    series_id: Mapped[str] = mapped_column(String(36), index=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"), index=True)
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    # active | dispensed | cancelled
    status: Mapped[str] = mapped_column(String(16))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The last day it may be dispensed (inclusive), as the clinical API states it.
    valid_until: Mapped[date] = mapped_column(Date())
    dispensed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The pharmacist's account, and their pharmacy's name when the account has one.
    dispensed_by: Mapped[str | None] = mapped_column(ForeignKey("user_accounts.id"))
    pharmacy_name: Mapped[str | None] = mapped_column(String(200))
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The doctor's account; None when a correction replaced the revision.
    cancelled_by: Mapped[str | None] = mapped_column(ForeignKey("user_accounts.id"))
    # doctor | superseded
    cancel_reason: Mapped[str | None] = mapped_column(String(16))


class PharmacistWorkplace(Base):
    """The pharmacy a pharmacist's account dispenses for (named on every dispense)."""

    __tablename__ = "pharmacist_workplaces"

    user_id: Mapped[str] = mapped_column(ForeignKey("user_accounts.id"), primary_key=True)
    pharmacy_name: Mapped[str] = mapped_column(String(200))
