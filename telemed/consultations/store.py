"""SQL for the consultation domain. Methods take an open session; the service owns
transactions, so one rule change is one commit."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from telemed.consultations.events import EventKind
from telemed.consultations.models import (
    Appointment,
    Consultation,
    ConsultationEvent,
    Participant,
    Patient,
)
from telemed.consultations.state import ConsultationState, check_transition


def new_id() -> str:
    return str(uuid.uuid4())


class StaleState(Exception):
    """Another request changed the consultation first."""


class ConsultationStore:
    async def consultation(
        self, session: AsyncSession, consultation_id: str
    ) -> Consultation | None:
        return await session.get(Consultation, consultation_id)

    async def participant(self, session: AsyncSession, participant_id: str) -> Participant | None:
        return await session.get(Participant, participant_id)

    async def participants(
        self, session: AsyncSession, consultation_id: str
    ) -> Sequence[Participant]:
        result = await session.scalars(
            select(Participant)
            .where(Participant.consultation_id == consultation_id)
            .order_by(Participant.role, Participant.id)
        )
        return result.all()

    async def waiting(self, session: AsyncSession, consultation_id: str) -> Sequence[Participant]:
        result = await session.scalars(
            select(Participant)
            .where(
                Participant.consultation_id == consultation_id,
                Participant.online.is_(True),
                Participant.admitted.is_(False),
            )
            .order_by(Participant.waiting_since, Participant.id)
        )
        return result.all()

    async def transition(
        self,
        session: AsyncSession,
        consultation: Consultation,
        target: ConsultationState,
        now: datetime,
    ) -> None:
        """Compare-and-set on the version: two nodes cannot both make the same move."""
        check_transition(ConsultationState(consultation.state), target)
        values: dict[str, Any] = {"state": target.value, "version": consultation.version + 1}
        if target is ConsultationState.WAITING:
            values["started_at"] = now
        if target.is_over:
            values["ended_at"] = now
        result = await session.execute(
            update(Consultation)
            .where(Consultation.id == consultation.id, Consultation.version == consultation.version)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise StaleState(consultation.id)
        for name, value in values.items():
            setattr(consultation, name, value)

    def record(
        self,
        session: AsyncSession,
        consultation_id: str,
        kind: EventKind,
        at: datetime,
        participant_id: str | None = None,
        text: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> ConsultationEvent:
        event = ConsultationEvent(
            consultation_id=consultation_id,
            participant_id=participant_id,
            kind=kind.value,
            at=at,
            text=text,
            data=data,
        )
        session.add(event)
        return event

    async def timeline(
        self, session: AsyncSession, consultation_id: str
    ) -> Sequence[ConsultationEvent]:
        result = await session.scalars(
            select(ConsultationEvent)
            .where(ConsultationEvent.consultation_id == consultation_id)
            .order_by(ConsultationEvent.id)
        )
        return result.all()

    async def chat(
        self, session: AsyncSession, consultation_id: str, limit: int = 200
    ) -> Sequence[ConsultationEvent]:
        result = await session.scalars(
            select(ConsultationEvent)
            .where(
                ConsultationEvent.consultation_id == consultation_id,
                ConsultationEvent.kind == EventKind.CHAT_MESSAGE.value,
            )
            .order_by(ConsultationEvent.id.desc())
            .limit(limit)
        )
        return list(reversed(result.all()))

    async def appointments_between(
        self, session: AsyncSession, practitioner_id: str, start: datetime, end: datetime
    ) -> Sequence[tuple[Appointment, Consultation | None, Patient]]:
        result = await session.execute(
            select(Appointment, Consultation, Patient)
            .join(Patient, Patient.id == Appointment.patient_id)
            .outerjoin(Consultation, Consultation.appointment_id == Appointment.id)
            .where(
                Appointment.practitioner_id == practitioner_id,
                Appointment.starts_at < end,
                Appointment.ends_at > start,
            )
            .order_by(Appointment.starts_at)
        )
        return [(row[0], row[1], row[2]) for row in result.all()]
