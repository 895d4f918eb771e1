"""Tables of the consultation domain: who, when, and what happened."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from telemed.db import Base, UTCDateTime

ID = String(36)


class Clinic(Base):
    __tablename__ = "clinics"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Practitioner(Base):
    __tablename__ = "practitioners"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinics.id"), index=True)
    display_name: Mapped[str] = mapped_column(String(200))
    specialty: Mapped[str | None] = mapped_column(String(200))


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinics.id"), index=True)
    display_name: Mapped[str] = mapped_column(String(200))


class Appointment(Base):
    """A doctor's online slot booked for one patient."""

    __tablename__ = "appointments"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    clinic_id: Mapped[str] = mapped_column(ForeignKey("clinics.id"), index=True)
    practitioner_id: Mapped[str] = mapped_column(ForeignKey("practitioners.id"))
    patient_id: Mapped[str] = mapped_column(ForeignKey("patients.id"), index=True)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_appointments_practitioner_starts", "practitioner_id", "starts_at"),)


class Consultation(Base):
    """The video visit of one appointment; ``state`` moves only through ConsultationState."""

    __tablename__ = "consultations"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    appointment_id: Mapped[str] = mapped_column(ForeignKey("appointments.id"), unique=True)
    # The session identifier registered in the patient's card.
    session_id: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    # Bumped by every state change: transitions are compare-and-set on it.
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # True while every participant in the call has consented (and the call is on).
    recording: Mapped[bool] = mapped_column(default=False)
    # The protocol manifest, once the recording is final.
    protocol_key: Mapped[str | None] = mapped_column(String(512))
    protocol_sha256: Mapped[str | None] = mapped_column(String(64))
    protocol_size: Mapped[int | None] = mapped_column(BigInteger)
    recording_final_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # The recorder looks for finished consultations without a protocol every few seconds.
    __table_args__ = (Index("ix_consultations_state_final", "state", "recording_final_at"),)


class Participant(Base):
    """A person's place in one consultation, and their presence in it."""

    __tablename__ = "participants"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    display_name: Mapped[str] = mapped_column(String(200))
    practitioner_id: Mapped[str | None] = mapped_column(ForeignKey("practitioners.id"))
    patient_id: Mapped[str | None] = mapped_column(ForeignKey("patients.id"))
    admitted: Mapped[bool] = mapped_column(default=False)
    online: Mapped[bool] = mapped_column(default=False)
    # The page (one load of the browser tab) currently connected for this participant.
    instance: Mapped[str | None] = mapped_column(String(64))
    waiting_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    disconnected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # "accepted", "declined" or None (not asked or undecided); the journal is the timeline.
    recording_consent: Mapped[str | None] = mapped_column(String(16))
    consent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ConsultationEvent(Base):
    """The timeline: an append-only list of what happened, with times."""

    __tablename__ = "consultation_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"))
    participant_id: Mapped[str | None] = mapped_column(ForeignKey("participants.id"))
    kind: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    text: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_consultation_events_consultation_id", "consultation_id", "id"),)


class RecordingSegment(Base):
    """One continuous recording of one participant's tracks: a WHIP session from its
    first frame to its end. A reconnect opens the next segment of the same participant."""

    __tablename__ = "recording_segments"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    consultation_id: Mapped[str] = mapped_column(ForeignKey("consultations.id"))
    participant_id: Mapped[str] = mapped_column(ForeignKey("participants.id"))
    sequence: Mapped[int] = mapped_column(Integer)
    # recording -> uploading -> final, or interrupted (recovered after a crash), or failed.
    status: Mapped[str] = mapped_column(String(16))
    object_key: Mapped[str] = mapped_column(String(512))
    content_type: Mapped[str] = mapped_column(String(64))
    codecs: Mapped[list[str]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (
        Index("ix_recording_segments_consultation", "consultation_id", "started_at"),
        Index("ix_recording_segments_object_key", "object_key"),
        Index(
            "uq_recording_segments_participant_sequence",
            "participant_id",
            "sequence",
            unique=True,
        ),
    )
