"""The domain side of recording: who may publish, the segments' ledger, the protocol's
context, and "the recording is final".

:class:`RecordingService` implements :class:`recorder.RecordingLedger`, so the recorder
learns everything it needs from the database (which lets it run in its own process)
and reports every segment back into the same database, with a timeline event each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from recorder import (
    ConsentRecord,
    ObjectInfo,
    ProtocolContext,
    ProtocolDocument,
    ProtocolEvent,
    ProtocolParticipant,
    ProtocolParty,
    ProtocolSignature,
    ProtocolSigner,
    PublishGrant,
    SegmentRecord,
    signature_key,
)
from telemed.consultations.clinical import ClinicalService
from telemed.consultations.events import EventKind
from telemed.consultations.models import (
    Appointment,
    Clinic,
    Consultation,
    Participant,
    Patient,
    Practitioner,
    RecordingSegment,
)
from telemed.consultations.service import in_the_call
from telemed.consultations.state import ConsultationState
from telemed.consultations.store import ConsultationStore
from telemed.identity.tokens import TokenError, TokenService
from telemed.problems import Conflict, Forbidden, NotFound, Unauthorized
from telemed.protocols import PractitionerKeys, ProtocolPdf
from telemed.protocols.wording import protocol_clinical

# Told after the recording of a consultation became final (the card bridge listens).
FinalListener = Callable[[str], Awaitable[None]]
# Tells the participants of a consultation something: (consultation_id, event, payload).
Notifier = Callable[[str, str, dict[str, Any]], Awaitable[None]]

_CONSENT_CHOICES = {
    EventKind.CONSENT_GIVEN.value: "accepted",
    EventKind.CONSENT_DECLINED.value: "declined",
    EventKind.CONSENT_WITHDRAWN.value: "withdrawn",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class RecordingService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tokens: TokenService,
        reconnect_grace_seconds: int,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._tokens = tokens
        self._grace = timedelta(seconds=reconnect_grace_seconds)
        self._clock = clock
        self._store = ConsultationStore()
        self._final_listeners: list[FinalListener] = []
        self._notifiers: list[Notifier] = []
        # Signed protocols (see set_protocol_authoring); unsigned, without a PDF, until set.
        self._signing_keys: PractitionerKeys | None = None
        self._protocol_pdf: ProtocolPdf | None = None
        self._clinical: ClinicalService | None = None

    def set_protocol_authoring(
        self, keys: PractitionerKeys, pdf: ProtocolPdf | None, clinical: ClinicalService
    ) -> None:
        """Protocols are signed with the doctor's key from ``keys``, rendered by ``pdf``,
        and carry the clinical record as ``clinical`` has it at the end."""
        self._signing_keys = keys
        self._protocol_pdf = pdf
        self._clinical = clinical

    def add_final_listener(self, listener: FinalListener) -> None:
        self._final_listeners.append(listener)

    def add_notifier(self, notifier: Notifier) -> None:
        self._notifiers.append(notifier)

    # Who may publish -------------------------------------------------------------------

    async def authorize_publish(
        self, ticket: str | None, consultation_id: str, instance: str | None = None
    ) -> PublishGrant:
        """The participant a WHIP request publishes for, if they may be recorded now.

        Unauthorized (401) for a missing, forged or expired ticket; Forbidden (403) for a
        ticket of another consultation; Conflict (409) while the consultation is not
        being recorded or this participant has not consented; Conflict ``superseded``
        when ``instance`` (the publishing page) is not the participant's current page."""
        try:
            claims = self._tokens.verify_ticket(ticket)
        except TokenError as exc:
            raise Unauthorized(exc.message, code=exc.code.replace("_", "-")) from None
        if claims.consultation_id != consultation_id:
            raise Forbidden("this ticket is for another consultation", code="wrong-consultation")
        async with self._sessions() as session:
            consultation = await session.get(Consultation, consultation_id)
            participant = await session.get(Participant, claims.participant_id)
        if consultation is None or participant is None:
            raise NotFound("no such consultation", code="unknown-consultation")
        if participant.consultation_id != consultation_id:
            raise Forbidden("this ticket is for another consultation", code="wrong-consultation")
        if not consultation.recording:
            raise Conflict(
                "the consultation is not being recorded now (every participant must consent)",
                code="not-recording",
            )
        if participant.recording_consent != "accepted":
            raise Conflict("you have not consented to recording", code="no-consent")
        if not in_the_call(participant, self._clock(), self._grace):
            raise Conflict("you are not in the call", code="not-in-call")
        if instance is not None and participant.instance not in (None, instance):
            raise Conflict("another page of yours has joined the call since", code="superseded")
        return PublishGrant(consultation_id=consultation_id, participant_id=participant.id)

    async def allowed_publishers(
        self, consultation_ids: Collection[str]
    ) -> Mapping[str, frozenset[str]]:
        if not consultation_ids:
            return {}
        async with self._sessions() as session:
            consultations = (
                await session.scalars(
                    select(Consultation).where(Consultation.id.in_(list(consultation_ids)))
                )
            ).all()
            participants = (
                await session.scalars(
                    select(Participant).where(
                        Participant.consultation_id.in_(list(consultation_ids))
                    )
                )
            ).all()
        allowed: dict[str, frozenset[str]] = {}
        now = self._clock()
        for consultation in consultations:
            if ConsultationState(consultation.state).is_over:
                continue
            allowed[consultation.id] = frozenset(
                p.id
                for p in participants
                if consultation.recording
                and p.consultation_id == consultation.id
                and p.recording_consent == "accepted"
                and in_the_call(p, now, self._grace)
            )
        return allowed

    # The segments' ledger --------------------------------------------------------------

    async def next_sequence(self, consultation_id: str, participant_id: str) -> int:
        async with self._sessions() as session:
            highest = await session.scalar(
                select(func.max(RecordingSegment.sequence)).where(
                    RecordingSegment.participant_id == participant_id
                )
            )
        return int(highest or 0) + 1

    async def segment_opened(self, segment: SegmentRecord) -> None:
        async with self._sessions.begin() as session:
            session.add(
                RecordingSegment(
                    id=segment.segment_id,
                    consultation_id=segment.consultation_id,
                    participant_id=segment.participant_id,
                    sequence=segment.sequence,
                    status=segment.status,
                    object_key=segment.object_key,
                    content_type=segment.content_type,
                    codecs=list(segment.codecs),
                    started_at=segment.started_at,
                )
            )
            self._store.record(
                session,
                segment.consultation_id,
                EventKind.SEGMENT_STARTED,
                segment.started_at,
                segment.participant_id,
                data={"segment": segment.segment_id, "sequence": segment.sequence},
            )

    async def segment_closed(self, segment: SegmentRecord) -> None:
        async with self._sessions.begin() as session:
            row = await session.get(RecordingSegment, segment.segment_id)
            if row is None:
                return
            row.status = segment.status
            row.ended_at = segment.ended_at
            row.duration_ms = segment.duration_ms
            row.size_bytes = segment.size_bytes
            row.sha256 = segment.sha256
            row.stats = dict(segment.stats) if segment.stats is not None else None
            self._store.record(
                session,
                segment.consultation_id,
                EventKind.SEGMENT_FINISHED,
                segment.ended_at or self._clock(),
                segment.participant_id,
                data={
                    "segment": segment.segment_id,
                    "status": segment.status,
                    "duration_ms": segment.duration_ms,
                },
            )

    async def segment_recovered(self, object_key: str, info: ObjectInfo, interrupted: bool) -> None:
        now = self._clock()
        async with self._sessions.begin() as session:
            row = await session.scalar(
                select(RecordingSegment).where(RecordingSegment.object_key == object_key)
            )
            if row is None:
                return  # not a segment of ours (the spool is shared with nothing else)
            row.status = "interrupted" if interrupted else "final"
            row.size_bytes = info.size
            row.sha256 = info.sha256
            row.ended_at = row.ended_at or now
            self._store.record(
                session,
                row.consultation_id,
                EventKind.SEGMENT_FINISHED,
                now,
                row.participant_id,
                data={"segment": row.id, "status": row.status, "recovered": True},
            )

    async def segments_abandoned(self, active_keys: Collection[str]) -> None:
        async with self._sessions.begin() as session:
            await session.execute(
                update(RecordingSegment)
                .where(
                    RecordingSegment.status == "recording",
                    RecordingSegment.object_key.not_in(list(active_keys)),
                )
                .values(status="failed", ended_at=self._clock())
            )

    async def recording_stopped(
        self, consultation_id: str, participant_id: str, reason: str
    ) -> None:
        for notify in self._notifiers:
            await notify(
                consultation_id,
                "recording_error",
                {"participant_id": participant_id, "code": reason},
            )

    # The protocol ----------------------------------------------------------------------

    async def consultations_to_finalize(self) -> Sequence[str]:
        async with self._sessions() as session:
            result = await session.scalars(
                select(Consultation.id).where(
                    Consultation.state == ConsultationState.FINISHED.value,
                    Consultation.recording_final_at.is_(None),
                )
            )
            return list(result.all())

    async def protocol_context(self, consultation_id: str) -> ProtocolContext:
        async with self._sessions() as session:
            consultation = await session.get(Consultation, consultation_id)
            if consultation is None:
                raise NotFound("no such consultation", code="unknown-consultation")
            participants = await self._store.participants(session, consultation_id)
            events = await self._store.timeline(session, consultation_id)
            segments = (
                await session.scalars(
                    select(RecordingSegment)
                    .where(RecordingSegment.consultation_id == consultation_id)
                    .order_by(RecordingSegment.started_at, RecordingSegment.id)
                )
            ).all()
            appointment = await session.get(Appointment, consultation.appointment_id)
            clinic = practitioner = patient = None
            if appointment is not None:
                clinic = await session.get(Clinic, appointment.clinic_id)
                practitioner = await session.get(Practitioner, appointment.practitioner_id)
                patient = await session.get(Patient, appointment.patient_id)
        clinical = None
        if self._clinical is not None:
            clinical = protocol_clinical(await self._clinical.record(consultation_id))
        return ProtocolContext(
            consultation_id=consultation.id,
            session_id=consultation.session_id,
            state=consultation.state,
            started_at=consultation.started_at,
            ended_at=consultation.ended_at,
            participants=[ProtocolParticipant(p.id, p.role, p.display_name) for p in participants],
            consents=[
                ConsentRecord(
                    participant_id=e.participant_id or "",
                    choice=_CONSENT_CHOICES[e.kind],  # type: ignore[arg-type]
                    at=e.at,
                    address=(e.data or {}).get("address"),
                )
                for e in events
                if e.kind in _CONSENT_CHOICES
            ],
            segments=[_segment_record(row) for row in segments],
            timeline=[
                ProtocolEvent(e.at, e.kind, e.participant_id, e.text, e.data) for e in events
            ],
            clinic=ProtocolParty(clinic.id, clinic.name) if clinic else None,
            practitioner=(
                ProtocolParty(practitioner.id, practitioner.display_name) if practitioner else None
            ),
            patient=ProtocolParty(patient.id, patient.display_name) if patient else None,
            clinical=clinical,
        )

    async def protocol_signer(self, consultation_id: str) -> ProtocolSigner | None:
        """The consultation's doctor's key (created on first use)."""
        if self._signing_keys is None:
            return None
        async with self._sessions() as session:
            practitioner_id = await session.scalar(
                select(Appointment.practitioner_id)
                .join(Consultation, Consultation.appointment_id == Appointment.id)
                .where(Consultation.id == consultation_id)
            )
        if practitioner_id is None:
            raise NotFound("no such consultation", code="unknown-consultation")
        return await asyncio.to_thread(self._signing_keys.signer_for, practitioner_id)

    async def protocol_documents(
        self, document: Mapping[str, Any], signer: ProtocolSigner | None
    ) -> Sequence[ProtocolDocument]:
        if self._protocol_pdf is None:
            return ()
        data = await asyncio.to_thread(self._protocol_pdf.render, document)
        return (ProtocolDocument("protocol.pdf", "application/pdf", data),)

    async def protocol_stored_already(self, consultation_id: str) -> bool:
        async with self._sessions() as session:
            final_at = await session.scalar(
                select(Consultation.recording_final_at).where(Consultation.id == consultation_id)
            )
        return final_at is not None

    async def protocol_stored(
        self,
        consultation_id: str,
        info: ObjectInfo,
        *,
        signature: ProtocolSignature | None = None,
        documents: Sequence[ObjectInfo] = (),
    ) -> None:
        now = self._clock()
        # The timeline event is where the card finds the signature and the PDF.
        final: dict[str, Any] = {"protocol": info.key, "sha256": info.sha256}
        if signature is not None:
            final["signature"] = {
                "key": signature_key(consultation_id),
                "algorithm": signature.algorithm,
                "key_id": signature.key_id,
                "fingerprint": signature.fingerprint,
            }
        if documents:
            final["documents"] = [
                {"key": d.key, "content_type": d.content_type, "size": d.size, "sha256": d.sha256}
                for d in documents
            ]
        async with self._sessions.begin() as session:
            result = await session.execute(
                update(Consultation)
                .where(
                    Consultation.id == consultation_id,
                    Consultation.recording_final_at.is_(None),
                )
                .values(
                    protocol_key=info.key,
                    protocol_sha256=info.sha256,
                    protocol_size=info.size,
                    recording_final_at=now,
                )
            )
            first = result.rowcount == 1  # type: ignore[attr-defined]
            if first:
                self._store.record(
                    session,
                    consultation_id,
                    EventKind.RECORDING_FINAL,
                    now,
                    data=final,
                )
        if first:
            for listener in self._final_listeners:
                await listener(consultation_id)

    async def segments(self, consultation_id: str) -> list[SegmentRecord]:
        """The consultation's segments, oldest first."""
        async with self._sessions() as session:
            rows = (
                await session.scalars(
                    select(RecordingSegment)
                    .where(RecordingSegment.consultation_id == consultation_id)
                    .order_by(RecordingSegment.started_at, RecordingSegment.id)
                )
            ).all()
        return [_segment_record(row) for row in rows]


def _segment_record(row: RecordingSegment) -> SegmentRecord:
    return SegmentRecord(
        segment_id=row.id,
        consultation_id=row.consultation_id,
        participant_id=row.participant_id,
        sequence=row.sequence,
        object_key=row.object_key,
        content_type=row.content_type,
        codecs=tuple(row.codecs),
        started_at=row.started_at,
        status=row.status,  # type: ignore[arg-type]
        ended_at=row.ended_at,
        duration_ms=row.duration_ms,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        stats=row.stats,
    )
