"""The clinic's review of recorded consultations: search, one consultation in full, and
an integrity check of its stored protocol on demand.

A reviewer (or a clinic administrator) sees the consultations of their own clinic only:
a consultation of another clinic is answered exactly like one that does not exist (404),
so nobody learns that it does. Every answer that shows a consultation, a recording or a
patient's name is written to the audit log before it leaves, with the patient's id.

Time on the review page runs from the consultation's start (``started_at``, the doctor
opening it): segment and event offsets are milliseconds from there, so both participants'
players sit on one axis and the gaps a reconnect left stay gaps.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from recorder import ObjectNotFoundError, ObjectStore, protocol_key
from recorder.storage import StorageError
from telemed.audit import Action, AuditEvent, AuditLog, Outcome
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
from telemed.identity.policy import Role
from telemed.identity.tokens import AccessClaims
from telemed.privacy.models import CardRestriction
from telemed.problems import BadRequest, Conflict, Forbidden, NotFound
from telemed.protocols.verify import verify_protocol
from telemed.protocols.wording import protocol_clinical
from telemed.review.media import MediaGrant, MediaTokens

__all__ = ["MEDIA_PATH", "ReviewQuery", "ReviewService"]

log = logging.getLogger(__name__)

#: Where a segment is played from: ``{MEDIA_PATH}/{segment id}?token=…``.
MEDIA_PATH = "/api/v1/review/media"
MAX_LIMIT = 100
# Dates in the search form are the clinic's days; Moscow time until clinics get a zone
# (the doctor's console counts "today" the same way).
CLINIC_ZONE = ZoneInfo("Europe/Moscow")
# A segment whose object is stored: something to play and to check.
STORED = ("final", "interrupted")
# What the review timeline shows. Segment bookkeeping is left out: the players show the
# segments themselves. Chat messages appear as moments, never with their text.
TIMELINE_KINDS = frozenset(
    {
        EventKind.STARTED,
        EventKind.JOINED,
        EventKind.ADMITTED,
        EventKind.LEFT,
        EventKind.RECONNECTED,
        EventKind.CHAT_MESSAGE,
        EventKind.CONSENT_GIVEN,
        EventKind.CONSENT_DECLINED,
        EventKind.CONSENT_WITHDRAWN,
        EventKind.RECORDING_STARTED,
        EventKind.RECORDING_STOPPED,
        EventKind.NOTE_FINALIZED,
        EventKind.PRESCRIPTION_FINALIZED,
        EventKind.ENDED,
        EventKind.CANCELLED,
    }
)


@dataclass(frozen=True)
class ReviewQuery:
    """A search of the clinic's consultations; every filter is optional. ``date_from`` and
    ``date_to`` are inclusive days of the clinic's calendar (of the appointment)."""

    doctor_id: str | None = None
    patient_id: str | None = None
    # A piece of the patient's name, matched without regard to case.
    patient_name: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    status: str | None = None
    has_recording: bool | None = None
    limit: int = 20
    offset: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise BadRequest(f"limit: between 1 and {MAX_LIMIT}")
        if self.offset < 0:
            raise BadRequest("offset: 0 or more")
        if self.status is not None and self.status not in {s.value for s in ConsultationState}:
            raise BadRequest(
                "status: one of " + ", ".join(state.value for state in ConsultationState)
            )
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise BadRequest("date_from: must not be after date_to")
        if self.patient_name is not None and len(self.patient_name) > 200:
            raise BadRequest("patient: at most 200 characters")


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _ms(later: datetime, earlier: datetime) -> int:
    return round((later - earlier).total_seconds() * 1000)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, CLINIC_ZONE)


class ReviewService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        clinical: ClinicalService,
        store: ObjectStore,
        media: MediaTokens,
        audit: AuditLog,
    ) -> None:
        self._sessions = sessions
        self._clinical = clinical
        self._store = store
        self._media = media
        self._audit = audit
        # Media tokens whose first use was audited: a player fetches one segment in many
        # range requests, and one entry per link (minutes) says who watched what.
        self._audited_tokens: dict[str, int] = {}

    # Search ------------------------------------------------------------------------

    async def search(self, claims: AccessClaims, query: ReviewQuery) -> dict[str, Any]:
        """A page of the clinic's consultations, newest appointment first, with the total
        that match and the clinic's doctors (for the doctor filter)."""
        async with self._sessions() as session:
            conditions = await self._conditions(session, claims.clinic_id, query)
            base = (
                select(Consultation, Appointment, Practitioner, Patient)
                .join(Appointment, Appointment.id == Consultation.appointment_id)
                .join(Practitioner, Practitioner.id == Appointment.practitioner_id)
                .join(Patient, Patient.id == Appointment.patient_id)
                .where(*conditions)
            )
            total = await session.scalar(
                select(func.count()).select_from(base.with_only_columns(Consultation.id).subquery())
            )
            rows = (
                await session.execute(
                    base.add_columns(_has_recording().label("has_recording"))
                    .order_by(Appointment.starts_at.desc(), Consultation.id)
                    .limit(query.limit)
                    .offset(query.offset)
                )
            ).all()
            doctors = (
                await session.scalars(
                    select(Practitioner)
                    .where(Practitioner.clinic_id == claims.clinic_id)
                    .order_by(Practitioner.display_name)
                )
            ).all()
        items = [
            {
                "id": consultation.id,
                "session_id": consultation.session_id,
                "state": consultation.state,
                "scheduled_at": _iso(appointment.starts_at),
                "started_at": _iso(consultation.started_at),
                "ended_at": _iso(consultation.ended_at),
                "doctor": {"id": doctor.id, "name": doctor.display_name},
                "patient": {"id": patient.id, "name": patient.display_name},
                "has_recording": bool(has_recording),
                "recording_final": consultation.recording_final_at is not None,
            }
            for consultation, appointment, doctor, patient, has_recording in rows
        ]
        await self._audit_search(claims, items)
        return {
            "items": items,
            "total": int(total or 0),
            "limit": query.limit,
            "offset": query.offset,
            "doctors": [{"id": d.id, "name": d.display_name} for d in doctors],
        }

    async def _conditions(
        self, session: AsyncSession, clinic_id: str, query: ReviewQuery
    ) -> list[Any]:
        conditions: list[Any] = [Appointment.clinic_id == clinic_id, ~_restricted()]
        if query.doctor_id:
            conditions.append(Appointment.practitioner_id == query.doctor_id)
        if query.patient_id:
            conditions.append(Appointment.patient_id == query.patient_id)
        if query.patient_name and query.patient_name.strip():
            conditions.append(
                Appointment.patient_id.in_(
                    await self._patients_named(session, clinic_id, query.patient_name)
                )
            )
        if query.date_from:
            conditions.append(Appointment.starts_at >= _day_start(query.date_from))
        if query.date_to:
            conditions.append(Appointment.starts_at < _day_start(query.date_to + timedelta(1)))
        if query.status:
            conditions.append(Consultation.state == query.status)
        if query.has_recording is not None:
            recorded = _has_recording()
            conditions.append(recorded if query.has_recording else ~recorded)
        return conditions

    @staticmethod
    async def _patients_named(session: AsyncSession, clinic_id: str, fragment: str) -> list[str]:
        # Matched here rather than in SQL: SQLite folds only ASCII letters, and names are
        # Cyrillic. One clinic's patient list is small enough to scan.
        wanted = fragment.strip().casefold()
        patients = await session.execute(
            select(Patient.id, Patient.display_name).where(Patient.clinic_id == clinic_id)
        )
        return [pid for pid, name in patients if wanted in name.casefold()]

    async def _audit_search(self, claims: AccessClaims, items: Sequence[Mapping[str, Any]]) -> None:
        # The list itself says who saw a doctor (a medical secret): one entry per patient
        # shown, naming the consultations of theirs on the page.
        by_patient: dict[str, list[str]] = {}
        for item in items:
            by_patient.setdefault(item["patient"]["id"], []).append(item["id"])
        for patient_id, consultation_ids in by_patient.items():
            await self._audit.record(
                self._event(
                    claims,
                    Action.SEARCH,
                    "consultation",
                    ",".join(consultation_ids),
                    patient_id,
                )
            )

    # One consultation ----------------------------------------------------------------

    async def detail(self, claims: AccessClaims, consultation_id: str) -> dict[str, Any]:
        """Everything the review page shows of one consultation (see the module)."""
        async with self._sessions() as session:
            consultation, appointment = await self._own(session, claims, consultation_id)
            clinic = await session.get(Clinic, appointment.clinic_id)
            doctor = await session.get(Practitioner, appointment.practitioner_id)
            patient = await session.get(Patient, appointment.patient_id)
            participants = (
                await session.scalars(
                    select(Participant)
                    .where(Participant.consultation_id == consultation_id)
                    .order_by(Participant.role, Participant.id)
                )
            ).all()
            events = (
                await session.scalars(
                    select(ConsultationEvent)
                    .where(ConsultationEvent.consultation_id == consultation_id)
                    .order_by(ConsultationEvent.id)
                )
            ).all()
            rows = await self._segment_rows(session, consultation_id)
        manifest = await self._manifest(consultation)
        origin = consultation.started_at or consultation.created_at
        segments = _segments(manifest, rows, origin)
        record = await self._clinical.record(consultation_id)
        roles = {p.id: p.role for p in participants}
        timeline = [
            {
                "kind": event.kind,
                "at": _iso(event.at),
                "offset_ms": _ms(event.at, origin),
                "participant_id": event.participant_id,
                "role": roles.get(event.participant_id or ""),
            }
            for event in events
            if event.kind in TIMELINE_KINDS
        ]
        chats = [e for e in events if e.kind == EventKind.CHAT_MESSAGE]
        end = consultation.ended_at or (events[-1].at if events else origin)
        duration = max(
            [_ms(end, origin), *(s["offset_ms"] + (s["duration_ms"] or 0) for s in segments)]
        )
        patient_id = appointment.patient_id
        content = reads_clinical_content(claims)
        media_expires, links = (
            self._links(claims, consultation_id, patient_id, rows) if content else (None, {})
        )
        for segment in segments:
            segment["media_url"] = links.get(segment["id"])
        await self._audit.record(
            self._event(claims, Action.READ, "consultation", consultation_id, patient_id)
        )
        return {
            "consultation": {
                "id": consultation.id,
                "session_id": consultation.session_id,
                "state": consultation.state,
                "scheduled_at": _iso(appointment.starts_at),
                "started_at": _iso(consultation.started_at),
                "ended_at": _iso(consultation.ended_at),
                "origin": _iso(origin),
                "duration_ms": max(duration, 0),
                "recording_final_at": _iso(consultation.recording_final_at),
            },
            "clinic": {"id": clinic.id, "name": clinic.name} if clinic else None,
            "doctor": (
                {"id": doctor.id, "name": doctor.display_name, "specialty": doctor.specialty}
                if doctor
                else None
            ),
            "patient": {"id": patient.id, "name": patient.display_name} if patient else None,
            "participants": [
                {
                    "id": p.id,
                    "role": p.role,
                    "display_name": p.display_name,
                    "segments": [s for s in segments if s["participant_id"] == p.id],
                }
                for p in participants
            ],
            "timeline": timeline,
            "chat": {
                "count": len(chats),
                "first_at": _iso(chats[0].at) if chats else None,
                "last_at": _iso(chats[-1].at) if chats else None,
            },
            "clinical": _clinical(record) if content else WITHHELD_RECORD,
            "protocol": {
                "final": consultation.recording_final_at is not None,
                "sha256": consultation.protocol_sha256,
                "segments_from": "manifest" if manifest is not None else "database",
            },
            "media_expires_at": media_expires,
        }

    async def media_links(self, claims: AccessClaims, consultation_id: str) -> dict[str, Any]:
        """Fresh media links of every stored segment (the page renews them before the old
        ones expire)."""
        if not reads_clinical_content(claims):
            raise Forbidden(
                "a clinic administrator reviews without recordings or the medical record",
                code="clinical-content-withheld",
            )
        async with self._sessions() as session:
            _consultation, appointment = await self._own(session, claims, consultation_id)
            rows = await self._segment_rows(session, consultation_id)
        patient_id = appointment.patient_id
        expires, links = self._links(claims, consultation_id, patient_id, rows)
        await self._audit.record(
            self._event(claims, Action.READ, "recording", consultation_id, patient_id)
        )
        return {"media_expires_at": expires, "segments": links}

    async def integrity(self, claims: AccessClaims, consultation_id: str) -> dict[str, Any]:
        """Check the stored protocol again, now: the signature over the manifest, the
        manifest against the hash the database registered when it was stored, and every
        stored object's size and SHA-256 against the manifest."""
        async with self._sessions() as session:
            consultation, appointment = await self._own(session, claims, consultation_id)
        patient_id = appointment.patient_id
        await self._audit.record(
            self._event(claims, Action.READ, "recording", consultation_id, patient_id)
        )
        if consultation.protocol_key is None:
            raise Conflict("this consultation has no stored protocol (yet)", code="no-protocol")
        report = await verify_protocol(self._store, consultation_id)
        checks = [{"what": c.what, "ok": c.ok, "detail": c.detail} for c in report.checks]
        checks.append(await self._registered_hash(consultation))
        ok = report.ok and all(check["ok"] for check in checks)
        return {
            "status": "ok" if ok else "failed",
            "checked_at": _iso(datetime.now(UTC)),
            "signer_fingerprint": report.signer_fingerprint,
            "checks": checks,
        }

    async def _registered_hash(self, consultation: Consultation) -> dict[str, Any]:
        what = "registered hash"
        try:
            data = await self._store.get(protocol_key(consultation.id))
        except ObjectNotFoundError:
            return {"what": what, "ok": False, "detail": "missing manifest"}
        digest = hashlib.sha256(data).hexdigest()
        if digest != consultation.protocol_sha256:
            return {
                "what": what,
                "ok": False,
                "detail": f"manifest SHA-256 {digest} != {consultation.protocol_sha256} "
                "registered when it was stored",
            }
        return {"what": what, "ok": True, "detail": f"manifest SHA-256 {digest} as registered"}

    # Media -------------------------------------------------------------------------------

    async def media_grant(self, token: str | None, segment_id: str) -> MediaGrant:
        """The grant of a media link (TokenError when refused); its first use is audited."""
        grant = self._media.verify(token, segment_id)
        if grant.token_id not in self._audited_tokens:
            await self._audit.record(
                AuditEvent.by(
                    grant,
                    Action.READ,
                    resource_type="recording",
                    resource_id=grant.segment_id,
                    patient_id=grant.patient_id,
                )
            )
            self._remember(grant)
        return grant

    @property
    def store(self) -> ObjectStore:
        return self._store

    def _remember(self, grant: MediaGrant) -> None:
        now = datetime.now(UTC).timestamp()
        for token_id, expires in list(self._audited_tokens.items()):
            if expires < now:
                del self._audited_tokens[token_id]
        self._audited_tokens[grant.token_id] = grant.expires_at

    def _links(
        self,
        claims: AccessClaims,
        consultation_id: str,
        patient_id: str,
        rows: Iterable[RecordingSegment],
    ) -> tuple[int | None, dict[str, str]]:
        links: dict[str, str] = {}
        expires: int | None = None
        for row in rows:
            if row.status not in STORED or row.sha256 is None:
                continue
            token, expires = self._media.issue(
                user_id=claims.user_id,
                role=claims.role,
                consultation_id=consultation_id,
                segment_id=row.id,
                object_key=row.object_key,
                content_type=row.content_type,
                patient_id=patient_id,
            )
            links[row.id] = f"{MEDIA_PATH}/{row.id}?token={token}"
        return expires, links

    # Helpers -----------------------------------------------------------------------------

    async def _own(
        self, session: AsyncSession, claims: AccessClaims, consultation_id: str
    ) -> tuple[Consultation, Appointment]:
        """The consultation and its appointment if it is of the reviewer's clinic; NotFound
        (audited as refused) otherwise, the same answer as for no such consultation."""
        found = (
            await session.execute(
                select(Consultation, Appointment)
                .join(Appointment, Appointment.id == Consultation.appointment_id)
                .where(Consultation.id == consultation_id)
            )
        ).first()
        restricted = found is not None and (
            await session.get(CardRestriction, found[1].patient_id) is not None
        )
        if found is None or found[1].clinic_id != claims.clinic_id or restricted:
            await self._audit.record(
                AuditEvent.by(
                    claims,
                    Action.READ,
                    Outcome.DENIED,
                    resource_type="consultation",
                    resource_id=consultation_id,
                    # A restricted card's patient sees the refused attempt too.
                    patient_id=found[1].patient_id if restricted and found else None,
                )
            )
            raise NotFound("no such consultation", code="unknown-consultation")
        return found[0], found[1]

    @staticmethod
    async def _segment_rows(
        session: AsyncSession, consultation_id: str
    ) -> Sequence[RecordingSegment]:
        return (
            await session.scalars(
                select(RecordingSegment)
                .where(RecordingSegment.consultation_id == consultation_id)
                .order_by(RecordingSegment.started_at, RecordingSegment.id)
            )
        ).all()

    async def _manifest(self, consultation: Consultation) -> dict[str, Any] | None:
        """The stored manifest once the recording is final; None before, or when it cannot
        be read (the integrity check says why; the page still shows what the database has)."""
        if consultation.protocol_key is None:
            return None
        try:
            data = await self._store.get(consultation.protocol_key)
        except StorageError as exc:
            log.warning("review: manifest of a consultation unreadable: %s", type(exc).__name__)
            return None
        try:
            manifest = json.loads(data)
        except ValueError:
            return None
        return manifest if isinstance(manifest, dict) else None

    @staticmethod
    def _event(
        claims: AccessClaims,
        action: Action,
        resource_type: str,
        resource_id: str,
        patient_id: str | None,
    ) -> AuditEvent:
        return AuditEvent.by(
            claims,
            action,
            resource_type=resource_type,
            resource_id=resource_id,
            patient_id=patient_id,
        )


# What a clinic administrator gets instead of the medical record: they manage the
# clinic (who, when, whether the protocol is intact), they do not read clinical content.
WITHHELD_RECORD: dict[str, Any] = {
    "withheld": True,
    "note": None,
    "diagnoses": [],
    "prescriptions": [],
}


def reads_clinical_content(claims: AccessClaims) -> bool:
    """Reviewers watch recordings and read the record; administrators do not."""
    return claims.role != Role.CLINIC_ADMIN


def _restricted() -> Any:
    """The patient restricted processing of their card (an erasure request honoured as a
    restriction): only they and their treating doctors read it, reviewers do not."""
    return (
        select(CardRestriction.patient_id)
        .where(CardRestriction.patient_id == Appointment.patient_id)
        .exists()
    )


def _has_recording() -> Any:
    """Whether a consultation has at least one stored segment (SQL, correlated)."""
    return exists(
        select(RecordingSegment.id).where(
            and_(
                RecordingSegment.consultation_id == Consultation.id,
                RecordingSegment.status.in_(STORED),
            )
        )
    )


def _segments(
    manifest: Mapping[str, Any] | None, rows: Sequence[RecordingSegment], origin: datetime
) -> list[dict[str, Any]]:
    """The segments with their offsets from the consultation's start: the manifest's when
    the recording is final (what was signed), the database's ledger before that."""
    entries: list[dict[str, Any]]
    if manifest is not None and isinstance(manifest.get("segments"), list):
        entries = [
            {
                "id": str(entry.get("id")),
                "participant_id": entry.get("participant_id"),
                "sequence": entry.get("sequence"),
                "status": entry.get("status"),
                "started_at": _parse_time(entry.get("started_at")),
                "ended_at": _parse_time(entry.get("ended_at")),
                "duration_ms": entry.get("duration_ms"),
                "bytes": entry.get("bytes"),
                "sha256": entry.get("sha256"),
                "content_type": entry.get("content_type"),
                "codecs": entry.get("codecs"),
                "object_key": entry.get("object_key"),
            }
            for entry in manifest["segments"]
            if isinstance(entry, dict)
        ]
    else:
        entries = [
            {
                "id": row.id,
                "participant_id": row.participant_id,
                "sequence": row.sequence,
                "status": row.status,
                "started_at": row.started_at,
                "ended_at": row.ended_at,
                "duration_ms": row.duration_ms,
                "bytes": row.size_bytes,
                "sha256": row.sha256,
                "content_type": row.content_type,
                "codecs": list(row.codecs),
                "object_key": row.object_key,
            }
            for row in rows
        ]
    segments = []
    for entry in entries:
        started, ended = entry.pop("started_at"), entry.pop("ended_at")
        if started is None:
            continue  # a damaged manifest entry: nothing to place on the axis
        duration = entry["duration_ms"]
        if not isinstance(duration, int) and ended is not None:
            # A recovered segment has no measured duration: its wall-clock length it is.
            duration = _ms(ended, started)
        segments.append(
            {
                **entry,
                "duration_ms": duration if isinstance(duration, int) else None,
                "started_at": _iso(started),
                "ended_at": _iso(ended),
                "offset_ms": _ms(started, origin),
            }
        )
    return sorted(segments, key=lambda s: (s["offset_ms"], str(s["participant_id"])))


def _clinical(record: ConsultationClinicalRecord) -> dict[str, Any]:
    note = record.note
    return {
        "note": (
            {
                "complaints": note.complaints,
                "anamnesis": note.anamnesis,
                "findings": note.findings,
                "conclusion": note.conclusion,
                "recommendations": note.recommendations,
                "revision": record.note_revision,
                "finalized_at": _iso(record.finalized_at),
                "author": record.author_display_name,
            }
            if note is not None
            else None
        ),
        "diagnoses": [
            {"code": d.code, "display": d.display, "primary": d.primary, "comment": d.comment}
            for d in record.diagnoses
        ],
        # In the protocol's Russian words (the same text the signed PDF prints).
        "prescriptions": [
            {
                "id": p.id,
                "medication": p.medication,
                "dose": p.dose,
                "duration_days": p.duration_days,
                "quantity": p.quantity,
                "valid_until": p.valid_until,
                "instructions": p.instructions,
            }
            for p in protocol_clinical(record).prescriptions
        ],
    }
