"""The table of doctors' published online slots, each holding at most one booking."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from telemed.db import Base, UTCDateTime

ID = String(36)


class ScheduleSlot(Base):
    """A window a doctor offers for an online consultation.

    The booking lives on the row itself: ``appointment_id`` is NULL while the slot is free.
    A booking is a conditional ``UPDATE … WHERE appointment_id IS NULL``, so of any number
    of concurrent bookings the database lets exactly one through; the unique index on
    ``appointment_id`` keeps one appointment from occupying two slots, the one on
    (practitioner, start) keeps a doctor from publishing the same start twice.
    """

    __tablename__ = "schedule_slots"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinics.id"))
    practitioner_id: Mapped[str] = mapped_column(ForeignKey("practitioners.id"))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The account that published it: the doctor, or an administrator of the clinic.
    published_by: Mapped[str] = mapped_column(String(36))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set together by a booking, cleared together by a cancellation.
    appointment_id: Mapped[str | None] = mapped_column(ForeignKey("appointments.id"))
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id"))
    booked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("uq_schedule_slots_practitioner_starts", "practitioner_id", "starts_at", unique=True),
        Index("uq_schedule_slots_appointment", "appointment_id", unique=True),
        Index("ix_schedule_slots_clinic_starts", "clinic_id", "starts_at"),
        Index("ix_schedule_slots_patient", "patient_id"),
    )
