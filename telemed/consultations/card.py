"""The consultation's way into the patient's card: once it is finished (and its
recording final, where there is one) the domain's facts become a
:class:`emr_bridge.ConsultationOutcome`, and the bridge writes it in one transaction.

Writing is idempotent (the bridge keys every resource on the session id), so it runs
again whenever something is added later: a note or a prescription finalized after the
call creates only what is new.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from emr_bridge import BridgeResult, CardBridge
from emr_bridge.mapping import (
    ClinicalNote,
    ConsentAcceptance,
    ConsultationOutcome,
    Diagnosis,
    Party,
    Prescription,
    RecordingConsent,
    Referral,
    StoredFile,
)
from telemed.consultations.clinical import ClinicalService, ConsultationClinicalRecord
from telemed.consultations.events import EventKind
from telemed.consultations.models import (
    Appointment,
    Clinic,
    Consultation,
    ConsultationEvent,
    Participant,
    Patient,
    Practitioner,
    RecordingSegment,
)
from telemed.consultations.state import ConsultationState

log = logging.getLogger(__name__)

# Segments worth a DocumentReference: stored whole, or recovered after a crash.
_STORED_SEGMENTS = ("final", "interrupted")
# Referral urgency in the console → ServiceRequest.priority.
_PRIORITY = {"routine": "routine", "urgent": "urgent"}


@dataclass(frozen=True)
class _Facts:
    consultation: Consultation
    appointment: Appointment
    clinic: Clinic
    patient: Patient
    practitioner: Practitioner
    participants: Sequence[Participant]
    consents: Sequence[ConsultationEvent]
    segments: Sequence[RecordingSegment]
    # The ``recording_final`` event: it names the protocol's PDF and signature.
    final: ConsultationEvent | None = None


class CardPublisher:
    """Builds the outcome of a finished consultation and has the bridge write it.

    ``url_of`` names a stored object by key (the recorder's storage); ``recording_on``
    says whether consultations here get a protocol (then the card waits for it)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        bridge: CardBridge,
        clinical: ClinicalService,
        url_of: Callable[[str], str],
        *,
        recording_on: bool,
        on_written: Callable[[BridgeResult], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._bridge = bridge
        self._clinical = clinical
        self._url_of = url_of
        self._recording_on = recording_on
        self._on_written = on_written
        self._background: set[asyncio.Task[None]] = set()

    async def publish(self, consultation_id: str) -> BridgeResult | None:
        """Write the consultation into its patient's card; None while it is not ready
        (not finished, or its recording not final yet)."""
        outcome = await self.outcome(consultation_id)
        if outcome is None:
            return None
        result = await self._bridge.write(outcome)
        if self._on_written is not None:
            self._on_written(result)
        return result

    def publish_later(self, consultation_id: str) -> None:
        """:meth:`publish` in the background; a failure is logged (a later trigger for
        the same consultation writes everything again)."""
        task = asyncio.create_task(self._publish_logged(consultation_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Wait for writes in flight."""
        await asyncio.gather(*self._background, return_exceptions=True)

    async def outcome(self, consultation_id: str) -> ConsultationOutcome | None:
        facts = await self._facts(consultation_id)
        if facts is None:
            return None
        consultation = facts.consultation
        if ConsultationState(consultation.state) is not ConsultationState.FINISHED:
            return None
        if self._recording_on and consultation.recording_final_at is None:
            return None
        record = await self._clinical.record(consultation_id)
        return ConsultationOutcome(
            session_id=consultation.session_id,
            consultation_id=consultation.id,
            status="finished",
            period_start=consultation.started_at or consultation.created_at,
            period_end=consultation.ended_at,
            clinic=Party(facts.clinic.id, facts.clinic.name),
            patient=Party(facts.patient.id, facts.patient.display_name),
            practitioner=Party(facts.practitioner.id, facts.practitioner.display_name),
            appointment_id=facts.appointment.id,
            recordings=tuple(
                StoredFile(
                    url=self._url_of(s.object_key),
                    content_type=s.content_type,
                    size=s.size_bytes or 0,
                    sha256_hex=s.sha256 or "",
                    title=f"Запись консультации, сегмент {s.sequence}",
                    created_at=s.started_at,
                )
                for s in facts.segments
                if s.status in _STORED_SEGMENTS and s.sha256
            ),
            protocol=self._protocol(consultation),
            protocol_pdf=self._protocol_pdf(facts),
            consent=self._consent(facts),
            note=_note(record, facts.practitioner),
            diagnoses=_diagnoses(record),
            prescriptions=_prescriptions(record),
            referrals=_referrals(record),
        )

    async def _publish_logged(self, consultation_id: str) -> None:
        try:
            await self.publish(consultation_id)
        except Exception:
            log.exception("writing a consultation into the card failed")

    async def _facts(self, consultation_id: str) -> _Facts | None:
        async with self._sessions() as session:
            consultation = await session.get(Consultation, consultation_id)
            if consultation is None:
                return None
            appointment = await session.get(Appointment, consultation.appointment_id)
            if appointment is None:
                return None
            clinic = await session.get(Clinic, appointment.clinic_id)
            patient = await session.get(Patient, appointment.patient_id)
            practitioner = await session.get(Practitioner, appointment.practitioner_id)
            if clinic is None or patient is None or practitioner is None:
                return None
            participants = (
                await session.scalars(
                    select(Participant).where(Participant.consultation_id == consultation_id)
                )
            ).all()
            consents = (
                await session.scalars(
                    select(ConsultationEvent)
                    .where(
                        ConsultationEvent.consultation_id == consultation_id,
                        ConsultationEvent.kind == EventKind.CONSENT_GIVEN.value,
                    )
                    .order_by(ConsultationEvent.id)
                )
            ).all()
            segments = (
                await session.scalars(
                    select(RecordingSegment)
                    .where(RecordingSegment.consultation_id == consultation_id)
                    .order_by(RecordingSegment.started_at, RecordingSegment.id)
                )
            ).all()
            final = await session.scalar(
                select(ConsultationEvent)
                .where(
                    ConsultationEvent.consultation_id == consultation_id,
                    ConsultationEvent.kind == EventKind.RECORDING_FINAL.value,
                )
                .order_by(ConsultationEvent.id.desc())
                .limit(1)
            )
        return _Facts(
            consultation,
            appointment,
            clinic,
            patient,
            practitioner,
            participants,
            consents,
            segments,
            final,
        )

    def _protocol(self, consultation: Consultation) -> StoredFile | None:
        if not (consultation.protocol_key and consultation.protocol_sha256):
            return None
        return StoredFile(
            url=self._url_of(consultation.protocol_key),
            content_type="application/json",
            size=consultation.protocol_size or 0,
            sha256_hex=consultation.protocol_sha256,
            title="Протокол консультации",
            created_at=consultation.recording_final_at,
        )

    def _protocol_pdf(self, facts: _Facts) -> StoredFile | None:
        data = (facts.final.data or {}) if facts.final is not None else {}
        for document in data.get("documents") or ():
            if document.get("content_type") == "application/pdf" and document.get("sha256"):
                return StoredFile(
                    url=self._url_of(document["key"]),
                    content_type="application/pdf",
                    size=int(document.get("size") or 0),
                    sha256_hex=document["sha256"],
                    title="Протокол консультации (PDF)",
                    created_at=facts.consultation.recording_final_at,
                )
        return None

    @staticmethod
    def _consent(facts: _Facts) -> RecordingConsent:
        roles = {p.id: p for p in facts.participants}
        accepted = []
        for event in facts.consents:
            participant = roles.get(event.participant_id or "")
            if participant is None:
                continue
            if participant.role == "patient" and participant.patient_id:
                accepted.append(ConsentAcceptance("patient", participant.patient_id, event.at))
            elif participant.practitioner_id:
                accepted.append(
                    ConsentAcceptance("practitioner", participant.practitioner_id, event.at)
                )
        recorded = any(s.status in _STORED_SEGMENTS for s in facts.segments)
        return RecordingConsent(recording=recorded, accepted=tuple(accepted))


def _note(record: ConsultationClinicalRecord, practitioner: Practitioner) -> ClinicalNote | None:
    if record.note is None:
        return None
    return ClinicalNote(
        complaints=record.note.complaints,
        anamnesis=record.note.anamnesis,
        findings=record.note.findings,
        conclusion=record.note.conclusion,
        recommendations=record.note.recommendations,
        author=Party(practitioner.id, practitioner.display_name),
        finalized_at=record.finalized_at,
    )


def _diagnoses(record: ConsultationClinicalRecord) -> tuple[Diagnosis, ...]:
    return tuple(
        Diagnosis(code=d.code, display=d.display, primary=d.primary, note=d.comment)
        for d in record.diagnoses
    )


def _prescriptions(record: ConsultationClinicalRecord) -> tuple[Prescription, ...]:
    return tuple(
        Prescription(
            key=p.series_id,
            inn=p.inn,
            form=p.form_text or p.form,
            dose_value=p.dose_value,
            dose_unit=p.dose_unit,
            route=p.route_text or p.route,
            duration_days=p.duration_days,
            quantity=p.quantity,
            quantity_unit=p.quantity_unit,
            validity_days=p.valid_days,
            times_per_day=p.times_per_day,
            frequency=p.frequency_text,
            note=p.instructions,
            authored_at=p.finalized_at,
        )
        for p in record.prescriptions
    )


def _referrals(record: ConsultationClinicalRecord) -> tuple[Referral, ...]:
    return tuple(
        Referral(
            key=r.id,
            service=r.target,
            reason=r.reason,
            priority=_PRIORITY.get(r.urgency, "routine"),
        )
        for r in record.referrals
    )
