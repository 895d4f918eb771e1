"""What an insurance claim needs of a clinic's consultations, and nothing more: when, who
was seen by which kind of doctor, and the signed ICD-10 codes. No note, no complaint, no
prescription, no recording."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from telemed.consultations.clinical_models import ClinicalDiagnosis, ClinicalNote
from telemed.consultations.models import Appointment, Consultation, Patient, Practitioner
from telemed.consultations.state import ConsultationState
from telemed.privacy.models import CardRestriction

FINAL = "final"


@dataclass(frozen=True)
class ClaimLine:
    consultation_id: str
    session_id: str
    patient_id: str
    patient_name: str
    specialty: str | None
    started_at: datetime | None
    ended_at: datetime | None
    # The codes of the latest signed note revision, the primary one first.
    diagnosis_codes: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "consultation_id": self.consultation_id,
            "session_id": self.session_id,
            "patient": {"id": self.patient_id, "name": self.patient_name},
            "specialty": self.specialty,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "diagnosis_codes": list(self.diagnosis_codes),
        }


class ClaimsService:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def finished_between(
        self, clinic_id: str, start: datetime, end: datetime, *, limit: int, offset: int
    ) -> list[ClaimLine]:
        """Finished consultations of the clinic that ended in ``[start, end)``, oldest
        first; only those with a signed note are billable, so only they are listed."""
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(Consultation, Patient, Practitioner.specialty)
                    .join(Appointment, Appointment.id == Consultation.appointment_id)
                    .join(Patient, Patient.id == Appointment.patient_id)
                    .join(Practitioner, Practitioner.id == Appointment.practitioner_id)
                    .where(
                        Appointment.clinic_id == clinic_id,
                        Consultation.state == ConsultationState.FINISHED.value,
                        Consultation.ended_at >= start,
                        Consultation.ended_at < end,
                        select(ClinicalNote.id)
                        .where(
                            ClinicalNote.consultation_id == Consultation.id,
                            ClinicalNote.status == FINAL,
                        )
                        .exists(),
                        # A restricted card (erasure honoured as a restriction) is read
                        # only by the patient and their treating doctors.
                        ~select(CardRestriction.patient_id)
                        .where(CardRestriction.patient_id == Patient.id)
                        .exists(),
                    )
                    .order_by(Consultation.ended_at, Consultation.id)
                    .limit(limit)
                    .offset(offset)
                )
            ).all()
            codes = await self._codes(session, [consultation.id for consultation, _, _ in rows])
        return [
            ClaimLine(
                consultation_id=consultation.id,
                session_id=consultation.session_id,
                patient_id=patient.id,
                patient_name=patient.display_name,
                specialty=specialty,
                started_at=consultation.started_at,
                ended_at=consultation.ended_at,
                diagnosis_codes=codes.get(consultation.id, ()),
            )
            for consultation, patient, specialty in rows
        ]

    @staticmethod
    async def _codes(
        session: AsyncSession, consultation_ids: list[str]
    ) -> dict[str, tuple[str, ...]]:
        if not consultation_ids:
            return {}
        notes = (
            await session.execute(
                select(ClinicalNote.consultation_id, ClinicalNote.id, ClinicalNote.revision).where(
                    ClinicalNote.consultation_id.in_(consultation_ids),
                    ClinicalNote.status == FINAL,
                )
            )
        ).all()
        latest: dict[str, tuple[int, str]] = {}
        for consultation_id, note_id, revision in notes:
            if consultation_id not in latest or revision > latest[consultation_id][0]:
                latest[consultation_id] = (revision, note_id)
        by_note = {note_id: consultation_id for consultation_id, (_, note_id) in latest.items()}
        diagnoses = (
            await session.execute(
                select(
                    ClinicalDiagnosis.note_id,
                    ClinicalDiagnosis.code,
                    ClinicalDiagnosis.is_primary,
                    ClinicalDiagnosis.position,
                ).where(ClinicalDiagnosis.note_id.in_(list(by_note)))
            )
        ).all()
        ordered = sorted(diagnoses, key=lambda row: (not row.is_primary, row.position))
        codes: dict[str, list[str]] = {}
        for row in ordered:
            codes.setdefault(by_note[row.note_id], []).append(row.code)
        return {consultation_id: tuple(found) for consultation_id, found in codes.items()}
