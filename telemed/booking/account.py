"""What a signed-in patient sees of their own: their consultations with the protocols of
the finished ones, and the names behind the ids of their card's audit trail.

Everything here answers for the caller's own patient id only; another patient's
consultation is answered exactly like one that does not exist (404), and the attempt is
audited against the patient it belongs to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from recorder import document_key, protocol_key
from telemed.audit import Action, AuditEvent, AuditLog, Outcome
from telemed.audit.models import AuditEntryRow
from telemed.consultations.models import (
    Appointment,
    Clinic,
    Consultation,
    Participant,
    Patient,
    Practitioner,
)
from telemed.consultations.state import ConsultationState
from telemed.identity.models import UserAccount
from telemed.identity.policy import Role
from telemed.identity.tokens import AccessClaims
from telemed.problems import Forbidden, NotFound

# The files of a protocol a patient may download, and what they are.
PROTOCOL_FILES = {
    "protocol.json": "application/json",
    "protocol.pdf": "application/pdf",
}
# At most this many ids are resolved to names per request.
MAX_ACTORS = 100


@dataclass(frozen=True)
class ProtocolDocument:
    """A stored protocol object the caller may download."""

    consultation_id: str
    name: str
    object_key: str
    content_type: str


@dataclass(frozen=True)
class PatientConsultation:
    id: str
    session_id: str
    state: str
    starts_at: datetime
    ended_at: datetime | None
    practitioner_name: str
    specialty: str | None
    # File names of the protocol, once the consultation is finished and its protocol final.
    documents: tuple[str, ...]

    def as_dict(self, url_of: Callable[[str, str], str]) -> dict[str, Any]:
        """``url_of(consultation_id, file_name)`` names where each protocol file is served."""
        return {
            "id": self.id,
            "session_id": self.session_id,
            "state": self.state,
            "starts_at": self.starts_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "practitioner_name": self.practitioner_name,
            "specialty": self.specialty,
            "documents": [{"name": name, "url": url_of(self.id, name)} for name in self.documents],
        }


@dataclass(frozen=True)
class Actor:
    id: str
    role: str
    display_name: str
    you: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "role": self.role,
            "display_name": self.display_name,
            "you": self.you,
        }


class PatientAccountService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], audit: AuditLog) -> None:
        self._sessions = sessions
        self._audit = audit

    async def profile(self, claims: AccessClaims) -> dict[str, str]:
        """The patient's id, name and clinic (what the account page shows and asks by)."""
        patient_id = _patient_of(claims)
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(Patient.display_name, Clinic.name)
                    .join(Clinic, Clinic.id == Patient.clinic_id)
                    .where(Patient.id == patient_id)
                )
            ).first()
        if row is None:
            raise NotFound("no such patient", code="unknown-patient")
        return {
            "patient_id": patient_id,
            "user_id": claims.user_id,
            "display_name": row[0],
            "clinic_name": row[1],
        }

    async def consultations(self, claims: AccessClaims) -> list[PatientConsultation]:
        """The patient's consultations, newest first."""
        patient_id = _patient_of(claims)
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Consultation, Appointment, Practitioner)
                    .join(Appointment, Appointment.id == Consultation.appointment_id)
                    .join(Practitioner, Practitioner.id == Appointment.practitioner_id)
                    .where(Appointment.patient_id == patient_id)
                    .order_by(Appointment.starts_at.desc(), Consultation.id)
                )
            ).all()
        self._audit.record_later(
            AuditEvent.by(
                claims,
                Action.SEARCH,
                resource_type="consultation",
                resource_id=",".join(row[0].id for row in rows) or None,
                patient_id=patient_id,
            )
        )
        return [
            PatientConsultation(
                id=consultation.id,
                session_id=consultation.session_id,
                state=consultation.state,
                starts_at=appointment.starts_at,
                ended_at=consultation.ended_at,
                practitioner_name=doctor.display_name,
                specialty=doctor.specialty,
                documents=tuple(PROTOCOL_FILES) if _protocol_ready(consultation) else (),
            )
            for consultation, appointment, doctor in rows
        ]

    async def protocol_document(
        self, claims: AccessClaims, consultation_id: str, name: str
    ) -> ProtocolDocument:
        """Where the protocol file ``name`` of the caller's own finished consultation is
        stored. Audited; 404 ``unknown-consultation`` for anyone else's (or none)."""
        owner: str | None = None
        document: ProtocolDocument | None = None
        if name in PROTOCOL_FILES and claims.role == Role.PATIENT.value:
            async with self._sessions() as session:
                row = (
                    await session.execute(
                        select(Consultation, Appointment.patient_id)
                        .join(Appointment, Appointment.id == Consultation.appointment_id)
                        .where(Consultation.id == consultation_id)
                    )
                ).first()
            if row is not None:
                consultation, owner = row[0], row[1]
                if owner == claims.patient_id and _protocol_ready(consultation):
                    key = (
                        consultation.protocol_key or protocol_key(consultation.id)
                        if name == "protocol.json"
                        else document_key(consultation.id, name)
                    )
                    document = ProtocolDocument(consultation.id, name, key, PROTOCOL_FILES[name])
        await self._audit.record(
            AuditEvent.by(
                claims,
                Action.READ,
                Outcome.OK if document else Outcome.DENIED,
                resource_type="protocol",
                resource_id=f"{consultation_id[:64]}/{name[:32]}",
                patient_id=owner,
            )
        )
        if document is None:
            raise NotFound("no such protocol", code="unknown-consultation")
        return document

    async def actors(self, claims: AccessClaims, ids: Sequence[str]) -> list[Actor]:
        """Who the ids of the patient's audit trail are: accounts and consultation
        participants. Only ids that appear as actors in entries about this patient are
        named, so the call reveals no one else's name."""
        patient_id = _patient_of(claims)
        wanted = sorted({actor for actor in ids if actor})[:MAX_ACTORS]
        if not wanted:
            return []
        async with self._sessions() as session:
            seen = set(
                await session.scalars(
                    select(AuditEntryRow.actor)
                    .where(AuditEntryRow.patient_id == patient_id, AuditEntryRow.actor.in_(wanted))
                    .distinct()
                )
            )
            accounts = (
                await session.execute(
                    select(UserAccount.id, UserAccount.role, UserAccount.display_name).where(
                        UserAccount.id.in_(seen)
                    )
                )
            ).all()
            participants = (
                await session.execute(
                    select(Participant.id, Participant.role, Participant.display_name).where(
                        Participant.id.in_(seen)
                    )
                )
            ).all()
        # A participant of the patient's own consultation in the patient's role is them.
        named = {
            **{
                account_id: Actor(account_id, role, name, you=account_id == claims.user_id)
                for account_id, role, name in accounts
            },
            **{
                participant_id: Actor(participant_id, role, name, you=role == Role.PATIENT.value)
                for participant_id, role, name in participants
            },
        }
        return [named[actor] for actor in wanted if actor in named]


def _protocol_ready(consultation: Consultation) -> bool:
    return (
        consultation.state == ConsultationState.FINISHED.value
        and consultation.protocol_key is not None
        and consultation.recording_final_at is not None
    )


def _patient_of(claims: AccessClaims) -> str:
    if claims.role != Role.PATIENT.value or not claims.patient_id:
        raise Forbidden("this is a patient's own account")
    return claims.patient_id
