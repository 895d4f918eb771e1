"""Tables of the doctor's clinical input: the note with its diagnoses and referrals, and
e-prescriptions.

Both the note and each prescription are kept as numbered revisions. A revision is a
draft until the doctor finalizes it; a final revision is never updated again. A
correction is a new draft revision of the same note (or the same prescription
``series_id``), so every earlier version stays (order 947n).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from telemed.db import Base, UTCDateTime

ID = String(36)


class DecimalText(TypeDecorator[Decimal]):
    """An exact decimal kept as its text on every backend (SQLite has no DECIMAL type)."""

    impl = String(32)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return format(value.normalize(), "f")

    def process_result_value(self, value: str | None, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        try:
            return Decimal(value)
        except InvalidOperation:
            raise ValueError("a stored decimal is not a number") from None


class ClinicalNote(Base):
    """One revision of a consultation's note. ``version`` counts the saves of a draft
    (optimistic concurrency); ``revision`` numbers the document's versions."""

    __tablename__ = "clinical_notes"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"))
    revision: Mapped[int] = mapped_column(Integer)
    # "draft" or "final".
    status: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    complaints: Mapped[str] = mapped_column(Text, default="")
    anamnesis: Mapped[str] = mapped_column(Text, default="")
    findings: Mapped[str] = mapped_column(Text, default="")
    conclusion: Mapped[str] = mapped_column(Text, default="")
    recommendations: Mapped[str] = mapped_column(Text, default="")
    author_practitioner_id: Mapped[str] = mapped_column(ForeignKey("practitioners.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The final revision this one corrects (None for the first).
    corrects_id: Mapped[str | None] = mapped_column(ForeignKey("clinical_notes.id"))

    __table_args__ = (
        Index(
            "uq_clinical_notes_consultation_revision", "consultation_id", "revision", unique=True
        ),
    )


class ClinicalDiagnosis(Base):
    """An ICD-10 diagnosis of one note revision."""

    __tablename__ = "clinical_diagnoses"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    note_id: Mapped[str] = mapped_column(ForeignKey("clinical_notes.id"))
    code: Mapped[str] = mapped_column(String(8))
    # The WHO title of the code when it was entered.
    display: Mapped[str] = mapped_column(String(300))
    is_primary: Mapped[bool] = mapped_column(Boolean, default=False)
    comment: Mapped[str | None] = mapped_column(String(500))
    position: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("uq_clinical_diagnoses_note_code", "note_id", "code", unique=True),)


class ClinicalReferral(Base):
    """A referral of one note revision: where the patient is sent, and why."""

    __tablename__ = "clinical_referrals"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    note_id: Mapped[str] = mapped_column(ForeignKey("clinical_notes.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    urgency: Mapped[str] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ClinicalPrescription(Base):
    """One revision of an e-prescription; the revisions of one prescription share
    ``series_id``."""

    __tablename__ = "clinical_prescriptions"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"))
    series_id: Mapped[str] = mapped_column(String(36))
    revision: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    # International non-proprietary name (МНН), as the doctor wrote it.
    inn: Mapped[str] = mapped_column(String(200))
    form: Mapped[str] = mapped_column(String(32))
    form_text: Mapped[str | None] = mapped_column(String(200))
    dose_value: Mapped[Decimal] = mapped_column(DecimalText())
    dose_unit: Mapped[str] = mapped_column(String(16))
    route: Mapped[str] = mapped_column(String(32))
    route_text: Mapped[str | None] = mapped_column(String(200))
    times_per_day: Mapped[int | None] = mapped_column(Integer)
    frequency_text: Mapped[str | None] = mapped_column(String(200))
    duration_days: Mapped[int] = mapped_column(Integer)
    quantity: Mapped[int] = mapped_column(Integer)
    quantity_unit: Mapped[str] = mapped_column(String(16))
    valid_days: Mapped[int] = mapped_column(Integer)
    instructions: Mapped[str | None] = mapped_column(String(1000))
    author_practitioner_id: Mapped[str] = mapped_column(ForeignKey("practitioners.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finalized_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_clinical_prescriptions_consultation", "consultation_id", "created_at"),
        Index("uq_clinical_prescriptions_series_revision", "series_id", "revision", unique=True),
    )
